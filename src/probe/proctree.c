/*
 * proctree.c - a process and its descendants, and their resident memory, from /proc.
 *
 * The tree is walked breadth-first from the root. Children come from
 * /proc/PID/task/TID/children (every thread's file: a child belongs to the
 * thread that forked it) when the kernel provides those files; otherwise one
 * pass over /proc/PID/stat gives every process's parent and the walk uses
 * that table. A process that exits while we read is left out; a PID is
 * never listed twice, so a PID reused during the walk cannot make it loop.
 */
#include "proctree.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "memsleep/memsleep.h"

#define PROC_PATH_MAX 64

/* Reads all of path into a malloc'ed NUL-terminated buffer. 0, or -errno. */
static int read_whole(const char *path, char **text, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  size_t cap = 4096, used = 0;
  char *buf = malloc(cap);
  if (buf == NULL) {
    close(fd);
    return -ENOMEM;
  }
  for (;;) {
    if (used + 1 == cap) {
      char *bigger = realloc(buf, cap * 2);
      if (bigger == NULL) {
        free(buf);
        close(fd);
        return -ENOMEM;
      }
      buf = bigger;
      cap *= 2;
    }
    ssize_t got = read(fd, buf + used, cap - 1 - used);
    if (got < 0) {
      if (errno == EINTR)
        continue;
      int err = -errno;
      free(buf);
      close(fd);
      return err;
    }
    if (got == 0)
      break;
    used += (size_t)got;
  }
  close(fd);
  buf[used] = '\0';
  *text = buf;
  if (len != NULL)
    *len = used;
  return 0;
}

/* Parses a decimal PID at *s, advancing *s past it. 1 if one was there. */
static int parse_pid(const char **s, pid_t *pid) {
  const char *p = *s;
  while (*p == ' ' || *p == '\n' || *p == '\t')
    p++;
  if (!isdigit((unsigned char)*p)) {
    *s = p;
    return 0;
  }
  long v = 0;
  while (isdigit((unsigned char)*p)) {
    if (v < 1L << 30)
      v = v * 10 + (*p - '0');
    p++;
  }
  *s = p;
  *pid = (pid_t)v;
  return v > 0 && v < 1L << 30;
}

int ms__pidlist_contains(const ms__pidlist_t *list, pid_t pid) {
  for (size_t i = 0; i < list->count; i++)
    if (list->pids[i] == pid)
      return 1;
  return 0;
}

void ms__pidlist_free(ms__pidlist_t *list) {
  free(list->pids);
  list->pids = NULL;
  list->count = 0;
  list->cap = 0;
}

/* Appends pid unless already there. 0 or MEMSLEEP_ENOMEM. */
static int pidlist_add(ms__pidlist_t *list, pid_t pid) {
  if (ms__pidlist_contains(list, pid))
    return 0;
  if (list->count == MS__TREE_MAX)
    return ms__fail(MEMSLEEP_ENOMEM, "process tree: more than %d processes", MS__TREE_MAX);
  if (list->count == list->cap) {
    size_t cap = list->cap == 0 ? 16 : list->cap * 2;
    pid_t *bigger = realloc(list->pids, cap * sizeof *bigger);
    if (bigger == NULL)
      return ms__fail(MEMSLEEP_ENOMEM, "process tree: no memory for %zu PIDs", cap);
    list->pids = bigger;
    list->cap = cap;
  }
  list->pids[list->count++] = pid;
  return 0;
}

int ms__proc_exists(pid_t pid) {
  if (kill(pid, 0) == 0 || errno == EPERM)
    return 0;
  return ms__fail(MEMSLEEP_ENOTFOUND, "process %d: no such process", (int)pid);
}

/* Whether the kernel provides /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN). */
static int have_children_files(void) {
  return access("/proc/thread-self/children", R_OK) == 0;
}

/* Appends the children of every thread of pid to list. A process that is
 * gone adds nothing. 0 or MEMSLEEP_ENOMEM. */
static int add_children(pid_t pid, ms__pidlist_t *list) {
  char path[PROC_PATH_MAX];
  snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
  DIR *dir = opendir(path);
  if (dir == NULL)
    return 0; /* exited meanwhile */
  int rc = 0;
  struct dirent *e;
  while (rc == 0 && (e = readdir(dir)) != NULL) {
    const char *name = e->d_name;
    pid_t tid;
    if (!parse_pid(&name, &tid) || *name != '\0')
      continue;
    char file[PROC_PATH_MAX];
    snprintf(file, sizeof file, "/proc/%d/task/%d/children", (int)pid, (int)tid);
    char *text = NULL;
    if (read_whole(file, &text, NULL) != 0)
      continue; /* the thread exited */
    const char *s = text;
    pid_t child;
    while (rc == 0 && parse_pid(&s, &child))
      rc = pidlist_add(list, child);
    free(text);
  }
  closedir(dir);
  return rc;
}

/* One process and its parent, from /proc/PID/stat. */
typedef struct parent_link_t {
  pid_t pid;
  pid_t ppid;
} parent_link_t;

/* The parent of pid from /proc/PID/stat ("pid (comm) state ppid ..."; comm may
 * hold spaces and parentheses, so parse after the last ')'). 1 if read. */
static int read_ppid(pid_t pid, pid_t *ppid) {
  char path[PROC_PATH_MAX];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  char *text = NULL;
  if (read_whole(path, &text, NULL) != 0)
    return 0;
  const char *close_paren = strrchr(text, ')');
  char state;
  int parent = 0;
  int ok = close_paren != NULL && sscanf(close_paren + 1, " %c %d", &state, &parent) == 2;
  free(text);
  *ppid = (pid_t)parent;
  return ok;
}

/* Every process's parent: one pass over /proc. 0, or MEMSLEEP_EUNAVAIL /
 * MEMSLEEP_ENOMEM. */
static int read_parent_table(parent_link_t **table, size_t *count) {
  DIR *dir = opendir("/proc");
  if (dir == NULL)
    return ms__fail(MEMSLEEP_EUNAVAIL, "opendir(/proc): %s", strerror(errno));
  size_t cap = 512, n = 0;
  parent_link_t *links = malloc(cap * sizeof *links);
  if (links == NULL) {
    closedir(dir);
    return ms__fail(MEMSLEEP_ENOMEM, "process table: no memory for %zu entries", cap);
  }
  struct dirent *e;
  while ((e = readdir(dir)) != NULL) {
    const char *s = e->d_name;
    pid_t pid, ppid;
    if (!parse_pid(&s, &pid) || *s != '\0' || !read_ppid(pid, &ppid))
      continue;
    if (n == cap) {
      parent_link_t *bigger = realloc(links, cap * 2 * sizeof *bigger);
      if (bigger == NULL) {
        free(links);
        closedir(dir);
        return ms__fail(MEMSLEEP_ENOMEM, "process table: no memory for %zu entries", cap * 2);
      }
      links = bigger;
      cap *= 2;
    }
    links[n].pid = pid;
    links[n].ppid = ppid;
    n++;
  }
  closedir(dir);
  *table = links;
  *count = n;
  return 0;
}

int ms__proctree_collect(pid_t root, int children, ms__tree_method_t method, ms__pidlist_t *out) {
  memset(out, 0, sizeof *out);
  int rc = ms__proc_exists(root);
  if (rc != 0)
    return rc;
  char path[PROC_PATH_MAX];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)root);
  if (access(path, R_OK) != 0) {
    int err = errno;
    if (err == ENOENT && ms__proc_exists(root) != 0)
      return MEMSLEEP_ENOTFOUND; /* exited just now */
    return ms__fail(MEMSLEEP_EUNAVAIL,
                    "process %d exists but %s cannot be read (%s): /proc mounted with hidepid, "
                    "or another PID namespace",
                    (int)root, path, strerror(err));
  }
  rc = pidlist_add(out, root);
  if (rc != 0 || !children)
    return rc;

  if (method == MS__TREE_AUTO)
    method = have_children_files() ? MS__TREE_CHILDREN : MS__TREE_SCAN;
  if (method == MS__TREE_CHILDREN) {
    if (!have_children_files()) {
      int err = errno;
      ms__pidlist_free(out);
      return ms__fail(MEMSLEEP_EUNAVAIL,
                      "/proc/thread-self/children: %s (kernel without CONFIG_PROC_CHILDREN)",
                      strerror(err));
    }
    for (size_t i = 0; rc == 0 && i < out->count; i++)
      rc = add_children(out->pids[i], out);
  } else {
    parent_link_t *links = NULL;
    size_t nlinks = 0;
    rc = read_parent_table(&links, &nlinks);
    for (size_t i = 0; rc == 0 && i < out->count; i++)
      for (size_t j = 0; rc == 0 && j < nlinks; j++)
        if (links[j].ppid == out->pids[i])
          rc = pidlist_add(out, links[j].pid);
    free(links);
  }
  if (rc != 0)
    ms__pidlist_free(out);
  return rc;
}

/* The "<key> <n> kB" line of a /proc file, in bytes. 1 if found. */
static int find_kb_line(const char *text, const char *key, size_t *bytes) {
  size_t keylen = strlen(key);
  for (const char *line = text; line != NULL && *line != '\0';) {
    if (strncmp(line, key, keylen) == 0) {
      unsigned long long kb = 0;
      if (sscanf(line + keylen, " %llu", &kb) != 1)
        return 0;
      *bytes = (size_t)kb * 1024;
      return 1;
    }
    line = strchr(line, '\n');
    if (line != NULL)
      line++;
  }
  return 0;
}

int ms__proc_rss_bytes(pid_t pid, size_t *bytes) {
  char path[PROC_PATH_MAX];
  char *text = NULL;
  snprintf(path, sizeof path, "/proc/%d/smaps_rollup", (int)pid);
  int err = read_whole(path, &text, NULL);
  if (err == 0) {
    int found = find_kb_line(text, "Rss:", bytes);
    free(text);
    if (found)
      return 0;
    /* A zombie's rollup is empty; its status says the rest. */
  } else if (err == -ENOENT || err == -ESRCH) {
    if (ms__proc_exists(pid) != 0)
      return MEMSLEEP_ENOTFOUND;
  }
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  err = read_whole(path, &text, NULL);
  if (err != 0) {
    if ((err == -ENOENT || err == -ESRCH) && ms__proc_exists(pid) != 0)
      return MEMSLEEP_ENOTFOUND;
    return ms__fail(err == -ENOMEM ? MEMSLEEP_ENOMEM : MEMSLEEP_EUNAVAIL, "%s: %s", path,
                    strerror(-err));
  }
  if (!find_kb_line(text, "VmRSS:", bytes))
    *bytes = 0; /* a zombie or a kernel thread: no user memory */
  free(text);
  return 0;
}
