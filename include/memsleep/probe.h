/*
 * probe.h - the probe: resident memory of a process tree, per GPU and on the host.
 *
 * After a release, the figure that matters is not what an engine says it
 * holds but what the driver says its processes hold. The probe measures it
 * for a process and (by default) all its descendants:
 *
 *   - GPU: the memory NVML reports for each process of the tree, summed per
 *     GPU. NVML is opened with dlopen ("libnvidia-ml.so.1", or the file named
 *     by the environment variable MEMSLEEP_NVML_LIBRARY), so libmemsleep does
 *     not depend on the NVIDIA driver being installed.
 *   - host: the resident set (Rss) of each process of the tree, from /proc.
 *
 * A figure is either known, or unknown with a reason (no NVML, no GPU, the
 * processes are not visible, NVML failed) and a sentence saying what was
 * tried. A caller gating on the figure decides what "unknown" means for it;
 * the memsleep-probe tool passes the gate by default (fail-open).
 *
 * Functions return 0 when they filled the result (known or not) and a
 * negative MEMSLEEP_E* code only for a bad argument, a process that does not
 * exist, or no memory; memsleep_last_error() then says which. They keep no
 * state between calls and are safe to call from several threads.
 */
#ifndef MEMSLEEP_PROBE_H
#define MEMSLEEP_PROBE_H

#include <stddef.h>
#include <sys/types.h>

#include "memsleep/memsleep.h"

#ifdef __cplusplus
extern "C" {
#endif

/* flags: measure the process alone, not its descendants. */
#define MEMSLEEP_PROBE_NO_CHILDREN 0x1u

#define MEMSLEEP_PROBE_GPU_MAX    64  /* GPUs a result holds */
#define MEMSLEEP_PROBE_PROC_MAX   256 /* per-process rows a result holds */
#define MEMSLEEP_PROBE_DETAIL_MAX 320 /* bytes of a result's detail, with the NUL */
#define MEMSLEEP_PROBE_UUID_MAX   96  /* bytes of a GPU UUID, with the NUL */

/* Why a figure is unknown. */
typedef enum memsleep_probe_reason_t {
  MEMSLEEP_PROBE_REASON_NONE = 0, /* the figure is known */
  MEMSLEEP_PROBE_NO_NVML = 1,     /* NVML cannot be loaded or initialised */
  MEMSLEEP_PROBE_NO_GPU = 2,      /* NVML works but reports no GPU */
  MEMSLEEP_PROBE_NOT_VISIBLE = 3, /* the tree's processes cannot be seen (NVML lists none
                                     of them; /proc hides them) */
  MEMSLEEP_PROBE_NVML_ERROR = 4   /* an NVML query failed or gave no figure */
} memsleep_probe_reason_t;

/* One GPU of a GPU result. */
typedef struct memsleep_probe_gpu_t {
  unsigned index;                     /* NVML's index (nvidia-smi's, not CUDA's) */
  char uuid[MEMSLEEP_PROBE_UUID_MAX]; /* "GPU-..." or "" when NVML gives none */
  size_t resident_bytes;              /* memory of the tree's processes on this GPU */
  size_t processes;                   /* processes of the tree holding memory here */
} memsleep_probe_gpu_t;

/* One process of the tree holding memory (on one GPU, or on the host). */
typedef struct memsleep_probe_proc_t {
  pid_t pid;
  int gpu;               /* NVML index of the GPU, or MEMSLEEP_HOST */
  size_t resident_bytes; /* what the process holds there */
} memsleep_probe_proc_t;

/* GPU memory of a process tree. */
typedef struct memsleep_probe_gpu_result_t {
  int known;                              /* 1: the figures below hold; 0: see reason */
  memsleep_probe_reason_t reason;         /* MEMSLEEP_PROBE_REASON_NONE when known */
  char detail[MEMSLEEP_PROBE_DETAIL_MAX]; /* when unknown: what failed, naming values */
  size_t tree_processes;                  /* processes in the tree (the root counts) */
  int nvml_api;     /* process-list version NVML answered: 3, 2, 1 (0: none) */
  size_t gpu_count; /* GPUs NVML reports (rows of gpus[], at most GPU_MAX) */
  memsleep_probe_gpu_t gpus[MEMSLEEP_PROBE_GPU_MAX];
  size_t max_bytes;    /* largest resident_bytes over the GPUs: what a gate compares */
  int max_gpu;         /* index of that GPU (-1 when no GPU) */
  size_t total_bytes;  /* sum over the GPUs */
  size_t proc_count;   /* rows of procs[] */
  int procs_truncated; /* 1 when more rows existed than PROC_MAX (sums still count them) */
  memsleep_probe_proc_t procs[MEMSLEEP_PROBE_PROC_MAX];
} memsleep_probe_gpu_result_t;

/* Host resident memory of a process tree. */
typedef struct memsleep_probe_host_result_t {
  int known;                              /* 1: the figures below hold; 0: see reason */
  memsleep_probe_reason_t reason;         /* MEMSLEEP_PROBE_REASON_NONE when known */
  char detail[MEMSLEEP_PROBE_DETAIL_MAX]; /* when unknown: what failed, naming values */
  size_t tree_processes;                  /* processes in the tree (the root counts) */
  size_t resident_bytes; /* sum of the processes' Rss (shared pages count in each) */
  size_t proc_count;     /* rows of procs[] */
  int procs_truncated;   /* 1 when more rows existed than PROC_MAX (the sum counts them) */
  memsleep_probe_proc_t procs[MEMSLEEP_PROBE_PROC_MAX];
} memsleep_probe_host_result_t;

/*
 * Lists pid and (unless flags has MEMSLEEP_PROBE_NO_CHILDREN) its
 * descendants, root first: copies at most cap of them into pids (may be NULL
 * when cap is 0) and sets *count to how many there are.
 * MEMSLEEP_EINVAL: pid <= 0 or bad flags; MEMSLEEP_ENOTFOUND: no such
 * process; MEMSLEEP_EUNAVAIL: it exists but /proc does not show it.
 */
MEMSLEEP_API int memsleep_probe_tree(pid_t pid, unsigned flags, pid_t *pids, size_t cap,
                                     size_t *count);

/*
 * Measures the GPU memory of pid's tree through NVML into *out. Returns 0
 * whether or not the figure is known (out->known says), MEMSLEEP_EINVAL or
 * MEMSLEEP_ENOTFOUND as memsleep_probe_tree(), MEMSLEEP_ENOMEM.
 */
MEMSLEEP_API int memsleep_probe_gpu(pid_t pid, unsigned flags, memsleep_probe_gpu_result_t *out);

/* Measures the host resident memory of pid's tree into *out; returns as
 * memsleep_probe_gpu(). */
MEMSLEEP_API int memsleep_probe_host(pid_t pid, unsigned flags, memsleep_probe_host_result_t *out);

/* A short name for a reason ("no NVML", ...). */
MEMSLEEP_API const char *memsleep_probe_reason_name(memsleep_probe_reason_t reason);

#ifdef __cplusplus
}
#endif

#endif /* MEMSLEEP_PROBE_H */
