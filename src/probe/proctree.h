/*
 * proctree.h - a process and its descendants, and their resident memory, from /proc.
 *
 * The probe needs the set of processes an engine is made of (a server and
 * the workers it forked) and, for the host figure, the resident set of
 * each. Both come from /proc: children through /proc/PID/task/TID/children
 * where the kernel has it, otherwise through the ppid of every
 * /proc/PID/stat. Processes come and go while we read; one that vanishes
 * half-way is simply left out.
 */
#ifndef MEMSLEEP_PROBE_PROCTREE_H
#define MEMSLEEP_PROBE_PROCTREE_H

#include <stddef.h>
#include <sys/types.h>

/* A growable list of PIDs; free with ms__pidlist_free(). */
typedef struct ms__pidlist_t {
  pid_t *pids;  /* root first, then descendants breadth-first */
  size_t count; /* entries used */
  size_t cap;   /* entries allocated */
} ms__pidlist_t;

/* How descendants are found. */
typedef enum ms__tree_method_t {
  MS__TREE_AUTO = 0,     /* children files when the kernel has them, else the scan */
  MS__TREE_CHILDREN = 1, /* /proc/PID/task/TID/children */
  MS__TREE_SCAN = 2      /* the ppid of every /proc/PID/stat */
} ms__tree_method_t;

/* The most processes a tree may hold; a bigger one is MEMSLEEP_ENOMEM. */
#define MS__TREE_MAX 65536

/* 0 if pid (> 0) exists, MEMSLEEP_ENOTFOUND if not (message set). */
int ms__proc_exists(pid_t pid);

/*
 * Fills *out (which must be zeroed or freed) with root and, if children is
 * non-zero, all its descendants. Returns 0; MEMSLEEP_ENOTFOUND if root does
 * not exist; MEMSLEEP_EUNAVAIL if it exists but /proc does not show it (or
 * the method asked for is missing); MEMSLEEP_ENOMEM. On error *out is empty.
 */
int ms__proctree_collect(pid_t root, int children, ms__tree_method_t method, ms__pidlist_t *out);

/* Whether pid is in list (linear: trees are small). */
int ms__pidlist_contains(const ms__pidlist_t *list, pid_t pid);

void ms__pidlist_free(ms__pidlist_t *list);

/*
 * Resident bytes of pid: Rss of /proc/PID/smaps_rollup, or VmRSS of
 * /proc/PID/status where the former cannot be read (another user's
 * process). 0 with *bytes set; MEMSLEEP_ENOTFOUND if the process is gone;
 * MEMSLEEP_EUNAVAIL if neither file can be read (message set).
 */
int ms__proc_rss_bytes(pid_t pid, size_t *bytes);

#endif /* MEMSLEEP_PROBE_PROCTREE_H */
