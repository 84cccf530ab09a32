/*
 * probe.c - memsleep_probe_*: resident memory of a process tree, per GPU and on the host.
 *
 * Puts proctree (which processes) and nvml (what the driver says each
 * holds) together into the results of include/memsleep/probe.h. A figure
 * is known only when every part of it could be read; otherwise the result
 * says why not, and the caller (the memsleep-probe gate) decides whether
 * "unknown" passes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "memsleep/probe.h"
#include "nvml.h"
#include "proctree.h"

/* Checks the arguments every probe takes. */
static int check_args(pid_t pid, unsigned flags, const void *out, const char *fn) {
  if (out == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "%s(%d): result pointer is NULL", fn, (int)pid);
  if (pid <= 0)
    return ms__fail(MEMSLEEP_EINVAL, "%s(%d): not a process id (must be > 0)", fn, (int)pid);
  if ((flags & ~MEMSLEEP_PROBE_NO_CHILDREN) != 0)
    return ms__fail(MEMSLEEP_EINVAL, "%s(%d): unknown flags 0x%x", fn, (int)pid, flags);
  return 0;
}

/* Marks a result unknown: the reason, and a detail formatted like printf. */
static void set_unknown(int *known, memsleep_probe_reason_t *reason, char *detail,
                        memsleep_probe_reason_t why, const char *fmt, ...) MS__PRINTF(5, 6);
static void set_unknown(int *known, memsleep_probe_reason_t *reason, char *detail,
                        memsleep_probe_reason_t why, const char *fmt, ...) {
  *known = 0;
  *reason = why;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, MEMSLEEP_PROBE_DETAIL_MAX, fmt, ap);
  va_end(ap);
}

/* The tree of pid, or an error code. MEMSLEEP_EUNAVAIL (the tree cannot be
 * seen) is left for the caller to turn into an unknown result. */
static int collect(pid_t pid, unsigned flags, ms__pidlist_t *tree) {
  return ms__proctree_collect(pid, !(flags & MEMSLEEP_PROBE_NO_CHILDREN), MS__TREE_AUTO, tree);
}

int memsleep_probe_tree(pid_t pid, unsigned flags, pid_t *pids, size_t cap, size_t *count) {
  int rc = check_args(pid, flags, count, "memsleep_probe_tree");
  if (rc != 0)
    return rc;
  if (pids == NULL && cap > 0)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_probe_tree(%d): pids is NULL but cap is %zu",
                    (int)pid, cap);
  ms__pidlist_t tree;
  rc = collect(pid, flags, &tree);
  if (rc != 0)
    return rc;
  for (size_t i = 0; i < tree.count && i < cap; i++)
    pids[i] = tree.pids[i];
  *count = tree.count;
  ms__pidlist_free(&tree);
  return 0;
}

/* What one process of the tree holds on one GPU, summed or merged over the lists. */
typedef struct holding_t {
  pid_t pid;
  unsigned long long bytes; /* MS__NVML_NOT_AVAILABLE: listed without a figure */
} holding_t;

/* Finds pid in h[0..*n) or appends it with 0 bytes; NULL when h is full. */
static holding_t *holding_of(holding_t *h, size_t *n, size_t cap, pid_t pid) {
  for (size_t i = 0; i < *n; i++)
    if (h[i].pid == pid)
      return &h[i];
  if (*n == cap)
    return NULL;
  h[*n].pid = pid;
  h[*n].bytes = 0;
  return &h[(*n)++];
}

/*
 * The tree's holdings on one GPU: within one list a process's entries are
 * summed (under MIG a process has one per instance); across the compute,
 * graphics and MPS lists the largest is kept (a process with both kinds of
 * context is listed in both with the same total). h has room for one entry
 * per process of the tree. Returns a reason; *n holdings.
 */
static memsleep_probe_reason_t gpu_holdings(ms__nvml_t *nv, void *dev, unsigned index,
                                            const ms__pidlist_t *tree, holding_t *h, size_t *n,
                                            holding_t *scratch, int *api, char *detail) {
  *n = 0;
  for (int kind = 0; kind < MS__NVML_KINDS; kind++) {
    ms__nvml_entry_t *entries = NULL;
    size_t count = 0;
    int kind_api = 0;
    memsleep_probe_reason_t r = ms__nvml_list(nv, dev, index, (ms__nvml_kind_t)kind, &entries,
                                              &count, &kind_api, detail, MEMSLEEP_PROBE_DETAIL_MAX);
    if (r != MEMSLEEP_PROBE_REASON_NONE)
      return r;
    if (kind == MS__NVML_COMPUTE)
      *api = kind_api;
    size_t m = 0;
    for (size_t i = 0; i < count; i++) {
      pid_t pid = (pid_t)entries[i].pid;
      if (!ms__pidlist_contains(tree, pid))
        continue;
      holding_t *s = holding_of(scratch, &m, tree->count, pid);
      if (s == NULL || s->bytes == MS__NVML_NOT_AVAILABLE)
        continue;
      if (entries[i].used_bytes == MS__NVML_NOT_AVAILABLE)
        s->bytes = MS__NVML_NOT_AVAILABLE;
      else
        s->bytes += entries[i].used_bytes;
    }
    free(entries);
    for (size_t i = 0; i < m; i++) {
      holding_t *t = holding_of(h, n, tree->count, scratch[i].pid);
      if (t == NULL)
        continue;
      if (scratch[i].bytes == MS__NVML_NOT_AVAILABLE || t->bytes == MS__NVML_NOT_AVAILABLE)
        t->bytes = MS__NVML_NOT_AVAILABLE;
      else if (scratch[i].bytes > t->bytes)
        t->bytes = scratch[i].bytes;
    }
  }
  return MEMSLEEP_PROBE_REASON_NONE;
}

/* Adds a per-process row, or notes that rows ran out. */
static void add_row(memsleep_probe_proc_t *rows, size_t *count, int *truncated, pid_t pid, int gpu,
                    size_t bytes) {
  if (*count == MEMSLEEP_PROBE_PROC_MAX) {
    *truncated = 1;
    return;
  }
  rows[*count].pid = pid;
  rows[*count].gpu = gpu;
  rows[*count].resident_bytes = bytes;
  (*count)++;
}

/* Measures every GPU into out, with NVML open and the tree known. */
static int measure_gpus(ms__nvml_t *nv, pid_t root, const ms__pidlist_t *tree,
                        memsleep_probe_gpu_result_t *out) {
  unsigned ngpus = 0;
  memsleep_probe_reason_t r = ms__nvml_device_count(nv, &ngpus, out->detail, sizeof out->detail);
  if (r != MEMSLEEP_PROBE_REASON_NONE) {
    out->known = 0;
    out->reason = r;
    return 0;
  }
  if (ngpus == 0) {
    set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NO_GPU,
                "NVML (%s) reports no GPU", nv->path);
    return 0;
  }
  if (ngpus > MEMSLEEP_PROBE_GPU_MAX)
    ngpus = MEMSLEEP_PROBE_GPU_MAX; /* beyond any machine built so far */

  holding_t *h = malloc(2 * tree->count * sizeof *h);
  if (h == NULL)
    return ms__fail(MEMSLEEP_ENOMEM, "memsleep_probe_gpu(%d): no memory for %zu processes",
                    (int)root, tree->count);
  size_t matched = 0;
  for (unsigned g = 0; g < ngpus; g++) {
    memsleep_probe_gpu_t *gpu = &out->gpus[g];
    gpu->index = g;
    void *dev = NULL;
    r = ms__nvml_device(nv, g, &dev, gpu->uuid, sizeof gpu->uuid, out->detail, sizeof out->detail);
    size_t n = 0;
    if (r == MEMSLEEP_PROBE_REASON_NONE)
      r = gpu_holdings(nv, dev, g, tree, h, &n, h + tree->count, &out->nvml_api, out->detail);
    if (r != MEMSLEEP_PROBE_REASON_NONE) {
      free(h);
      out->known = 0;
      out->reason = r;
      return 0;
    }
    for (size_t i = 0; i < n; i++) {
      if (h[i].bytes == MS__NVML_NOT_AVAILABLE) {
        set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NVML_ERROR,
                    "NVML lists process %d on GPU %u without its memory "
                    "(NVML_VALUE_NOT_AVAILABLE: no permission, or vGPU/MIG without figures)",
                    (int)h[i].pid, g);
        free(h);
        return 0;
      }
      gpu->resident_bytes += (size_t)h[i].bytes;
      gpu->processes++;
      add_row(out->procs, &out->proc_count, &out->procs_truncated, h[i].pid, (int)g,
              (size_t)h[i].bytes);
    }
    matched += n;
    out->gpu_count = g + 1;
    out->total_bytes += gpu->resident_bytes;
    if (out->max_gpu < 0 || gpu->resident_bytes > out->max_bytes) {
      out->max_bytes = gpu->resident_bytes;
      out->max_gpu = (int)g;
    }
  }
  free(h);
  if (matched == 0) {
    set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NOT_VISIBLE,
                "none of the %zu process%s of the tree of %d is in NVML's process lists of %u "
                "GPU%s (no GPU context, or NVML sees another PID namespace)",
                tree->count, tree->count == 1 ? "" : "es", (int)root, ngpus, ngpus == 1 ? "" : "s");
    return 0;
  }
  out->known = 1;
  out->reason = MEMSLEEP_PROBE_REASON_NONE;
  return 0;
}

int memsleep_probe_gpu(pid_t pid, unsigned flags, memsleep_probe_gpu_result_t *out) {
  int rc = check_args(pid, flags, out, "memsleep_probe_gpu");
  if (rc != 0)
    return rc;
  memset(out, 0, sizeof *out);
  out->max_gpu = -1;
  ms__pidlist_t tree;
  rc = collect(pid, flags, &tree);
  if (rc == MEMSLEEP_EUNAVAIL) {
    set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NOT_VISIBLE, "%s",
                memsleep_last_error());
    return 0;
  }
  if (rc != 0)
    return rc;
  out->tree_processes = tree.count;

  ms__nvml_t nv;
  memsleep_probe_reason_t r = ms__nvml_open(&nv, out->detail, sizeof out->detail);
  if (r != MEMSLEEP_PROBE_REASON_NONE) {
    out->known = 0;
    out->reason = r;
  } else {
    rc = measure_gpus(&nv, pid, &tree, out);
    ms__nvml_close(&nv);
  }
  ms__pidlist_free(&tree);
  if (rc == 0 && !out->known)
    out->max_gpu = -1;
  return rc;
}

int memsleep_probe_host(pid_t pid, unsigned flags, memsleep_probe_host_result_t *out) {
  int rc = check_args(pid, flags, out, "memsleep_probe_host");
  if (rc != 0)
    return rc;
  memset(out, 0, sizeof *out);
  ms__pidlist_t tree;
  rc = collect(pid, flags, &tree);
  if (rc == MEMSLEEP_EUNAVAIL) {
    set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NOT_VISIBLE, "%s",
                memsleep_last_error());
    return 0;
  }
  if (rc != 0)
    return rc;
  out->tree_processes = tree.count;
  out->known = 1;
  for (size_t i = 0; i < tree.count; i++) {
    size_t bytes = 0;
    rc = ms__proc_rss_bytes(tree.pids[i], &bytes);
    if (rc == MEMSLEEP_ENOTFOUND && i > 0) {
      rc = 0; /* a descendant exited while we read: it holds nothing now */
      continue;
    }
    if (rc == MEMSLEEP_EUNAVAIL) {
      set_unknown(&out->known, &out->reason, out->detail, MEMSLEEP_PROBE_NOT_VISIBLE, "%s",
                  memsleep_last_error());
      rc = 0;
      break;
    }
    if (rc != 0)
      break;
    out->resident_bytes += bytes;
    add_row(out->procs, &out->proc_count, &out->procs_truncated, tree.pids[i], MEMSLEEP_HOST,
            bytes);
  }
  ms__pidlist_free(&tree);
  if (rc != 0 || !out->known) {
    out->resident_bytes = 0;
    out->proc_count = 0;
    out->procs_truncated = 0;
  }
  if (rc == 0 && out->known)
    out->reason = MEMSLEEP_PROBE_REASON_NONE;
  return rc;
}

const char *memsleep_probe_reason_name(memsleep_probe_reason_t reason) {
  switch (reason) {
  case MEMSLEEP_PROBE_REASON_NONE:
    return "known";
  case MEMSLEEP_PROBE_NO_NVML:
    return "no NVML";
  case MEMSLEEP_PROBE_NO_GPU:
    return "no GPU";
  case MEMSLEEP_PROBE_NOT_VISIBLE:
    return "process not visible";
  case MEMSLEEP_PROBE_NVML_ERROR:
    return "NVML error";
  default:
    return "unknown reason";
  }
}
