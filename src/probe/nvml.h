/*
 * nvml.h - the few NVML calls the probe makes, loaded at run time with dlopen.
 *
 * libmemsleep must load and run where no NVIDIA driver is installed, so it
 * does not link libnvidia-ml: ms__nvml_open() dlopens it ("libnvidia-ml.so.1",
 * or the file named by MEMSLEEP_NVML_LIBRARY, which is how the tests put a
 * fake in its place), resolves the functions by name and initialises NVML.
 * Each probe opens and closes its own handle, so nothing is shared between
 * calls or threads (NVML counts its own initialisations).
 *
 * The process lists come in three versions across drivers
 * (nvmlDevice*RunningProcesses_v3, _v2, unversioned); the newest one the
 * library exports and the driver answers is used. Their entries have
 * changed size without a change of name (24 bytes, 32 on some 535 drivers,
 * 16 for the unversioned call), so ms__nvml_list() works out the size from
 * what the call wrote rather than trusting a header.
 */
#ifndef MEMSLEEP_PROBE_NVML_H
#define MEMSLEEP_PROBE_NVML_H

#include <stddef.h>

#include "memsleep/probe.h"

/* The environment variable naming the NVML library to load instead of the default. */
#define MS__NVML_ENV     "MEMSLEEP_NVML_LIBRARY"
#define MS__NVML_DEFAULT "libnvidia-ml.so.1"

/* Which process list. */
typedef enum ms__nvml_kind_t {
  MS__NVML_COMPUTE = 0,     /* CUDA contexts: required */
  MS__NVML_GRAPHICS = 1,    /* graphics contexts: used when exported */
  MS__NVML_MPS_COMPUTE = 2, /* MPS clients: used when exported */
  MS__NVML_KINDS = 3
} ms__nvml_kind_t;

/* Versions of a process-list call: [0] = _v3, [1] = _v2, [2] = unversioned. */
#define MS__NVML_VERSIONS 3

/* One entry of a process list. */
typedef struct ms__nvml_entry_t {
  unsigned pid;                  /* as NVML sees it (its PID namespace) */
  unsigned long long used_bytes; /* MS__NVML_NOT_AVAILABLE when NVML has no figure */
} ms__nvml_entry_t;

#define MS__NVML_NOT_AVAILABLE 0xFFFFFFFFFFFFFFFFULL

/* An open NVML: the library handle and the functions resolved in it. */
typedef struct ms__nvml_t {
  void *lib;                        /* dlopen handle */
  const char *path;                 /* what was opened (points into the environment or a literal) */
  int (*shutdown)(void);            /* nvmlShutdown */
  const char *(*error_string)(int); /* nvmlErrorString, or NULL */
  int (*device_count)(unsigned *);  /* nvmlDeviceGetCount_v2 or nvmlDeviceGetCount */
  const char *device_count_name;
  int (*device_handle)(unsigned, void **); /* nvmlDeviceGetHandleByIndex_v2 or unversioned */
  const char *device_handle_name;
  int (*device_uuid)(void *, char *, unsigned); /* nvmlDeviceGetUUID, or NULL */
  /* list[kind][version]: NULL where the library does not export it */
  int (*list[MS__NVML_KINDS][MS__NVML_VERSIONS])(void *, unsigned *, void *);
} ms__nvml_t;

/*
 * Loads and initialises NVML into *nv. Returns MEMSLEEP_PROBE_REASON_NONE,
 * or MEMSLEEP_PROBE_NO_NVML with detail saying why (dlopen failed, a
 * required function is missing, nvmlInit failed); *nv is then closed.
 */
memsleep_probe_reason_t ms__nvml_open(ms__nvml_t *nv, char *detail, size_t detail_len);

/* nvmlShutdown and dlclose; safe on a closed or zeroed *nv. */
void ms__nvml_close(ms__nvml_t *nv);

/* Number of GPUs into *count; MEMSLEEP_PROBE_NVML_ERROR with detail if the call fails. */
memsleep_probe_reason_t ms__nvml_device_count(ms__nvml_t *nv, unsigned *count, char *detail,
                                              size_t detail_len);

/* The handle of GPU index into *dev (and its UUID into uuid, "" when NVML gives none). */
memsleep_probe_reason_t ms__nvml_device(ms__nvml_t *nv, unsigned index, void **dev, char *uuid,
                                        size_t uuid_len, char *detail, size_t detail_len);

/*
 * The processes of one kind on device dev (GPU index for messages): a
 * malloc'ed array into *entries (the caller frees it), its length into
 * *count, and the version that answered (3, 2, 1) into *api. A kind the
 * library does not export gives 0 entries and *api = 0. The call is
 * repeated with a larger buffer while NVML answers
 * NVML_ERROR_INSUFFICIENT_SIZE (processes start between calls), a few
 * times. Returns MEMSLEEP_PROBE_REASON_NONE or MEMSLEEP_PROBE_NVML_ERROR
 * with detail.
 */
memsleep_probe_reason_t ms__nvml_list(ms__nvml_t *nv, void *dev, unsigned index,
                                      ms__nvml_kind_t kind, ms__nvml_entry_t **entries,
                                      size_t *count, int *api, char *detail, size_t detail_len);

#endif /* MEMSLEEP_PROBE_NVML_H */
