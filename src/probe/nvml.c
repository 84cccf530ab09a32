/*
 * nvml.c - the few NVML calls the probe makes, loaded at run time with dlopen.
 *
 * Declarations are our own (no nvml.h at build time): NVML returns an int
 * code (nvmlReturn_t), a device is an opaque pointer, and a process entry
 * starts with { unsigned pid; unsigned long long usedGpuMemory; } at offsets
 * 0 and 8 in every version of the struct; only the size of an entry varies.
 */
#include "nvml.h"

#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The NVML return codes we act on or name. */
enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_NOT_SUPPORTED = 3,
  NVML_ERROR_INSUFFICIENT_SIZE = 7,
  NVML_ERROR_FUNCTION_NOT_FOUND = 13,
  NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
};

/* Entry sizes NVML has used for process lists: v2/v3 struct, the 535.43-535.86
 * v3 struct (with usedGpuCcProtectedMemory), and the unversioned v1 struct. */
#define ENTRY_V2_BYTES  24
#define ENTRY_CC_BYTES  32
#define ENTRY_V1_BYTES  16
#define ENTRY_MAX_BYTES ENTRY_CC_BYTES

/* Filler for a process-list buffer, to see how far NVML wrote. */
#define FILL_BYTE 0xA5

/* First buffer, in entries: enough for one GPU's processes on most machines. */
#define LIST_FIRST_ENTRIES 32
/* Calls of one list before giving up on NVML_ERROR_INSUFFICIENT_SIZE. */
#define LIST_TRIES 6
/* The most entries a list may hold. */
#define LIST_MAX_ENTRIES 65536

static const char *const list_names[MS__NVML_KINDS][MS__NVML_VERSIONS] = {
    {"nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2",
     "nvmlDeviceGetComputeRunningProcesses"},
    {"nvmlDeviceGetGraphicsRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v2",
     "nvmlDeviceGetGraphicsRunningProcesses"},
    {"nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetMPSComputeRunningProcesses_v2",
     "nvmlDeviceGetMPSComputeRunningProcesses"},
};

/* The NVML_ERROR_* name of a code, for messages that must name the value. */
static const char *code_name(int code) {
  static const char *const names[] = {
      "NVML_SUCCESS",
      "NVML_ERROR_UNINITIALIZED",
      "NVML_ERROR_INVALID_ARGUMENT",
      "NVML_ERROR_NOT_SUPPORTED",
      "NVML_ERROR_NO_PERMISSION",
      "NVML_ERROR_ALREADY_INITIALIZED",
      "NVML_ERROR_NOT_FOUND",
      "NVML_ERROR_INSUFFICIENT_SIZE",
      "NVML_ERROR_INSUFFICIENT_POWER",
      "NVML_ERROR_DRIVER_NOT_LOADED",
      "NVML_ERROR_TIMEOUT",
      "NVML_ERROR_IRQ_ISSUE",
      "NVML_ERROR_LIBRARY_NOT_FOUND",
      "NVML_ERROR_FUNCTION_NOT_FOUND",
      "NVML_ERROR_CORRUPTED_INFOROM",
      "NVML_ERROR_GPU_IS_LOST",
      "NVML_ERROR_RESET_REQUIRED",
      "NVML_ERROR_OPERATING_SYSTEM",
      "NVML_ERROR_LIB_RM_VERSION_MISMATCH",
      "NVML_ERROR_IN_USE",
      "NVML_ERROR_MEMORY",
      "NVML_ERROR_NO_DATA",
      "NVML_ERROR_VGPU_ECC_NOT_SUPPORTED",
      "NVML_ERROR_INSUFFICIENT_RESOURCES",
      "NVML_ERROR_FREQ_NOT_SUPPORTED",
      "NVML_ERROR_ARGUMENT_VERSION_MISMATCH",
      "NVML_ERROR_DEPRECATED",
      "NVML_ERROR_NOT_READY",
      "NVML_ERROR_GPU_NOT_FOUND",
      "NVML_ERROR_INVALID_STATE",
  };
  if (code >= 0 && (size_t)code < sizeof names / sizeof names[0])
    return names[code];
  return code == 999 ? "NVML_ERROR_UNKNOWN" : "NVML error";
}

/* Writes "what: NAME (code): text" into detail; returns reason. */
static memsleep_probe_reason_t nvml_fail(const ms__nvml_t *nv, memsleep_probe_reason_t reason,
                                         char *detail, size_t detail_len, int code, const char *fmt,
                                         ...) {
  char what[160];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  const char *text = nv->error_string != NULL ? nv->error_string(code) : NULL;
  snprintf(detail, detail_len, "%s: %s (%d)%s%s", what, code_name(code), code,
           text != NULL ? ": " : "", text != NULL ? text : "");
  return reason;
}

/* dlsym into a function pointer of any type (ISO C has no cast for it). */
static int resolve(void *lib, const char *name, void *fnptr, size_t fnsize) {
  void *sym = dlsym(lib, name);
  if (sym == NULL)
    return 0;
  memcpy(fnptr, &sym, fnsize);
  return 1;
}

#define RESOLVE(lib, name, fn) resolve((lib), (name), &(fn), sizeof(fn))

void ms__nvml_close(ms__nvml_t *nv) {
  if (nv->lib != NULL) {
    if (nv->shutdown != NULL)
      nv->shutdown();
    dlclose(nv->lib);
  }
  memset(nv, 0, sizeof *nv);
}

memsleep_probe_reason_t ms__nvml_open(ms__nvml_t *nv, char *detail, size_t detail_len) {
  memset(nv, 0, sizeof *nv);
  const char *path = getenv(MS__NVML_ENV);
  if (path == NULL || path[0] == '\0')
    path = MS__NVML_DEFAULT;
  nv->path = path;
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    const char *why = dlerror();
    snprintf(detail, detail_len, "dlopen(%s): %s", path, why != NULL ? why : "failed");
    return MEMSLEEP_PROBE_NO_NVML;
  }

  int (*init)(void) = NULL;
  const char *init_name = "nvmlInit_v2";
  if (!RESOLVE(lib, init_name, init)) {
    init_name = "nvmlInit";
    RESOLVE(lib, init_name, init);
  }
  const char *missing = NULL;
  if (init == NULL)
    missing = "nvmlInit_v2";
  else if (!RESOLVE(lib, "nvmlShutdown", nv->shutdown))
    missing = "nvmlShutdown";
  nv->device_count_name = "nvmlDeviceGetCount_v2";
  if (missing == NULL && !RESOLVE(lib, nv->device_count_name, nv->device_count)) {
    nv->device_count_name = "nvmlDeviceGetCount";
    if (!RESOLVE(lib, nv->device_count_name, nv->device_count))
      missing = "nvmlDeviceGetCount_v2";
  }
  nv->device_handle_name = "nvmlDeviceGetHandleByIndex_v2";
  if (missing == NULL && !RESOLVE(lib, nv->device_handle_name, nv->device_handle)) {
    nv->device_handle_name = "nvmlDeviceGetHandleByIndex";
    if (!RESOLVE(lib, nv->device_handle_name, nv->device_handle))
      missing = "nvmlDeviceGetHandleByIndex_v2";
  }
  RESOLVE(lib, "nvmlErrorString", nv->error_string);
  RESOLVE(lib, "nvmlDeviceGetUUID", nv->device_uuid);
  int any_compute = 0;
  for (int k = 0; k < MS__NVML_KINDS; k++)
    for (int v = 0; v < MS__NVML_VERSIONS; v++)
      if (RESOLVE(lib, list_names[k][v], nv->list[k][v]) && k == MS__NVML_COMPUTE)
        any_compute = 1;
  if (missing == NULL && !any_compute)
    missing = list_names[MS__NVML_COMPUTE][0];
  if (missing != NULL) {
    snprintf(detail, detail_len, "%s: no %s in it (not an NVML library, or too old)", path,
             missing);
    dlclose(lib);
    memset(nv, 0, sizeof *nv);
    return MEMSLEEP_PROBE_NO_NVML;
  }

  int code = init();
  if (code != NVML_SUCCESS) {
    nvml_fail(nv, 0, detail, detail_len, code, "%s() from %s", init_name, path);
    dlclose(lib);
    memset(nv, 0, sizeof *nv);
    return MEMSLEEP_PROBE_NO_NVML;
  }
  nv->lib = lib;
  return MEMSLEEP_PROBE_REASON_NONE;
}

memsleep_probe_reason_t ms__nvml_device_count(ms__nvml_t *nv, unsigned *count, char *detail,
                                              size_t detail_len) {
  *count = 0;
  int code = nv->device_count(count);
  if (code != NVML_SUCCESS)
    return nvml_fail(nv, MEMSLEEP_PROBE_NVML_ERROR, detail, detail_len, code, "%s",
                     nv->device_count_name);
  return MEMSLEEP_PROBE_REASON_NONE;
}

memsleep_probe_reason_t ms__nvml_device(ms__nvml_t *nv, unsigned index, void **dev, char *uuid,
                                        size_t uuid_len, char *detail, size_t detail_len) {
  *dev = NULL;
  uuid[0] = '\0';
  int code = nv->device_handle(index, dev);
  if (code != NVML_SUCCESS)
    return nvml_fail(nv, MEMSLEEP_PROBE_NVML_ERROR, detail, detail_len, code, "%s(%u)",
                     nv->device_handle_name, index);
  if (nv->device_uuid != NULL && nv->device_uuid(*dev, uuid, (unsigned)uuid_len) != NVML_SUCCESS)
    uuid[0] = '\0'; /* a name for the table only: go on without it */
  uuid[uuid_len - 1] = '\0';
  return MEMSLEEP_PROBE_REASON_NONE;
}

/*
 * Size of the entries NVML wrote: n entries were reported into a buffer of
 * cap slots, filled with FILL_BYTE beforehand. The written extent is n times
 * the entry size (the last field of every layout is never all FILL_BYTE: an
 * instance ID of 0xFFFFFFFF or a small one, or the high bytes of a byte
 * count). Where that does not settle it, the size the call is declared with.
 */
static size_t entry_bytes(const unsigned char *buf, size_t cap, size_t n, size_t declared) {
  static const size_t sizes[] = {ENTRY_V2_BYTES, ENTRY_CC_BYTES, ENTRY_V1_BYTES};
  size_t end = cap * ENTRY_MAX_BYTES;
  while (end > 0 && buf[end - 1] == FILL_BYTE)
    end--;
  if (n * declared == end)
    return declared;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    if (n * sizes[i] == end)
      return sizes[i];
  return declared;
}

/* What call_list() returns when it cannot allocate (not an NVML code). */
#define CALL_NO_MEMORY (-1)

/* Calls one version of a list until the buffer is big enough. Returns the NVML code
 * (or CALL_NO_MEMORY); on success *entries (malloc'ed) and *count are set. *wanted
 * is the last count NVML asked for. */
static int call_list(int (*fn)(void *, unsigned *, void *), void *dev, size_t declared,
                     ms__nvml_entry_t **entries, size_t *count, unsigned *wanted) {
  size_t cap = LIST_FIRST_ENTRIES;
  int code = NVML_ERROR_INSUFFICIENT_SIZE;
  for (int attempt = 0; attempt < LIST_TRIES; attempt++) {
    unsigned char *buf = malloc(cap * ENTRY_MAX_BYTES);
    *wanted = (unsigned)cap;
    if (buf == NULL)
      return CALL_NO_MEMORY;
    memset(buf, FILL_BYTE, cap * ENTRY_MAX_BYTES);
    unsigned n = (unsigned)cap;
    code = fn(dev, &n, buf);
    if (code == NVML_SUCCESS) {
      if (n > cap)
        n = (unsigned)cap; /* NVML never writes past the count it was given */
      size_t size = entry_bytes(buf, cap, n, declared);
      ms__nvml_entry_t *out = malloc((n > 0 ? n : 1) * sizeof *out);
      if (out == NULL) {
        free(buf);
        return CALL_NO_MEMORY;
      }
      for (size_t i = 0; i < n; i++) {
        memcpy(&out[i].pid, buf + i * size, sizeof out[i].pid);
        memcpy(&out[i].used_bytes, buf + i * size + 8, sizeof out[i].used_bytes);
      }
      free(buf);
      *entries = out;
      *count = n;
      return code;
    }
    free(buf);
    *wanted = n;
    if (code != NVML_ERROR_INSUFFICIENT_SIZE)
      return code;
    /* Processes start between calls: ask for room to spare, at least doubling. */
    size_t next = (size_t)n + (size_t)n / 2 + 8;
    if (next < cap * 2)
      next = cap * 2;
    if (next > LIST_MAX_ENTRIES)
      next = LIST_MAX_ENTRIES;
    if (next <= cap)
      break;
    cap = next;
  }
  return code;
}

memsleep_probe_reason_t ms__nvml_list(ms__nvml_t *nv, void *dev, unsigned index,
                                      ms__nvml_kind_t kind, ms__nvml_entry_t **entries,
                                      size_t *count, int *api, char *detail, size_t detail_len) {
  static const size_t declared[MS__NVML_VERSIONS] = {ENTRY_V2_BYTES, ENTRY_V2_BYTES,
                                                     ENTRY_V1_BYTES};
  *entries = NULL;
  *count = 0;
  *api = 0;
  int code = NVML_SUCCESS;
  int tried = -1;
  unsigned wanted = 0;
  for (int v = 0; v < MS__NVML_VERSIONS; v++) {
    if (nv->list[kind][v] == NULL)
      continue; /* not exported by this library: try the older one */
    tried = v;
    code = call_list(nv->list[kind][v], dev, declared[v], entries, count, &wanted);
    if (code == NVML_SUCCESS) {
      *api = MS__NVML_VERSIONS - v;
      return MEMSLEEP_PROBE_REASON_NONE;
    }
    /* Exported but not served by this driver: the older call may be. */
    if (code != NVML_ERROR_FUNCTION_NOT_FOUND && code != NVML_ERROR_NOT_SUPPORTED &&
        code != NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
      break;
  }
  if (tried < 0)
    return MEMSLEEP_PROBE_REASON_NONE; /* an optional list this library lacks */
  if (code == CALL_NO_MEMORY) {
    snprintf(detail, detail_len, "%s(GPU %u): no memory for %u entries", list_names[kind][tried],
             index, wanted);
    return MEMSLEEP_PROBE_NVML_ERROR;
  }
  if (kind != MS__NVML_COMPUTE &&
      (code == NVML_ERROR_NOT_SUPPORTED || code == NVML_ERROR_FUNCTION_NOT_FOUND))
    return MEMSLEEP_PROBE_REASON_NONE; /* graphics or MPS lists not served here */
  if (code == NVML_ERROR_INSUFFICIENT_SIZE)
    return nvml_fail(nv, MEMSLEEP_PROBE_NVML_ERROR, detail, detail_len, code,
                     "%s(GPU %u): still short of room after %d calls (last asked for %u entries)",
                     list_names[kind][tried], index, LIST_TRIES, wanted);
  return nvml_fail(nv, MEMSLEEP_PROBE_NVML_ERROR, detail, detail_len, code, "%s(GPU %u)",
                   list_names[kind][tried], index);
}
