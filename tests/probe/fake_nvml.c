/*
 * fake_nvml.c - a stand-in for libnvidia-ml.so.1 in the probe's tests.
 *
 * CI machines have no GPU and no NVIDIA driver. The tests point
 * MEMSLEEP_NVML_LIBRARY at this library instead, and it answers the few
 * calls the probe makes from its environment, read at every call:
 *
 *   FAKE_NVML_PROCS="gpu:pid:bytes[:kind],..."  the processes to report;
 *       bytes is a number with an optional K, M or G suffix (powers of
 *       1024), or "na" for NVML_VALUE_NOT_AVAILABLE; kind is c (compute,
 *       the default), g (graphics) or m (MPS compute)
 *   FAKE_NVML_PROCS_FILE=FILE  the same text, read from FILE (a test
 *       rewrites it while the probe polls)
 *   FAKE_NVML_GPUS=N           how many GPUs (default 2)
 *   FAKE_NVML_INIT_RC=CODE     nvmlInit_v2 fails with CODE
 *   FAKE_NVML_V3_RC=CODE       the _v3 lists fail with CODE (13: a library
 *       newer than its driver)
 *   FAKE_NVML_V3_STRIDE=BYTES  entry size the _v3 lists write: 24 (the
 *       default), 32 (drivers 535.43-535.86) or 16
 *   FAKE_NVML_PHANTOMS=N       N more compute processes on GPU 0, with PIDs
 *       no test tree has
 *   FAKE_NVML_GROW=N           each list call reports N more phantoms than
 *       the one before (processes starting between two calls)
 *
 * Built three times: with every list version, without the _v3 symbols
 * (FAKE_NVML_WITHOUT_V3), and without _v3 and _v2 (FAKE_NVML_WITHOUT_V2 as
 * well), because a symbol cannot be un-exported at run time. A test that
 * dlopens the same file shares its state and reads fake_nvml_count().
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAKE_API __attribute__((visibility("default")))

enum {
  NVML_SUCCESS = 0,
  NVML_ERROR_UNINITIALIZED = 1,
  NVML_ERROR_INVALID_ARGUMENT = 2,
  NVML_ERROR_INSUFFICIENT_SIZE = 7
};

#define FAKE_GPUS_MAX    16
#define FAKE_ENTRIES_MAX 4096
#define PHANTOM_PID_BASE 4000000u /* above any pid_max a test machine has */

typedef struct fake_device_t {
  unsigned index;
} fake_device_t;

static fake_device_t devices[FAKE_GPUS_MAX];

/* Calls made, for fake_nvml_count(). */
static unsigned long inits, shutdowns, list_calls[3][3], grow_calls;

typedef struct fake_entry_t {
  unsigned gpu;
  unsigned pid;
  unsigned long long bytes;
  char kind;
} fake_entry_t;

static long env_long(const char *name, long fallback) {
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? strtol(v, NULL, 10) : fallback;
}

static unsigned gpu_count(void) {
  long n = env_long("FAKE_NVML_GPUS", 2);
  return n < 0 ? 0 : n > FAKE_GPUS_MAX ? FAKE_GPUS_MAX : (unsigned)n;
}

/* The process text: FAKE_NVML_PROCS_FILE's contents, else FAKE_NVML_PROCS. */
static char *procs_text(void) {
  const char *file = getenv("FAKE_NVML_PROCS_FILE");
  if (file != NULL && file[0] != '\0') {
    FILE *f = fopen(file, "r");
    if (f == NULL)
      return strdup("");
    char *buf = calloc(1, 65536);
    if (buf != NULL)
      (void)!fread(buf, 1, 65535, f);
    fclose(f);
    return buf;
  }
  const char *v = getenv("FAKE_NVML_PROCS");
  return strdup(v != NULL ? v : "");
}

/* Parses "gpu:pid:bytes[:kind]" items into e; returns how many. */
static size_t parse_procs(fake_entry_t *e, size_t cap) {
  char *text = procs_text();
  if (text == NULL)
    return 0;
  size_t n = 0;
  char *save = NULL;
  for (char *item = strtok_r(text, ", \n", &save); item != NULL && n < cap;
       item = strtok_r(NULL, ", \n", &save)) {
    char *end;
    unsigned long gpu = strtoul(item, &end, 10);
    if (*end != ':')
      continue;
    unsigned long pid = strtoul(end + 1, &end, 10);
    if (*end != ':')
      continue;
    unsigned long long bytes;
    if (strncmp(end + 1, "na", 2) == 0) {
      bytes = 0xFFFFFFFFFFFFFFFFULL;
      end += 3;
    } else {
      bytes = strtoull(end + 1, &end, 10);
      if (*end == 'K')
        bytes <<= 10, end++;
      else if (*end == 'M')
        bytes <<= 20, end++;
      else if (*end == 'G')
        bytes <<= 30, end++;
    }
    char kind = 'c';
    if (*end == ':')
      kind = end[1];
    e[n].gpu = (unsigned)gpu;
    e[n].pid = (unsigned)pid;
    e[n].bytes = bytes;
    e[n].kind = kind;
    n++;
  }
  free(text);
  return n;
}

/* Writes one entry of the given size: pid at 0, bytes at 8, then the
 * instance IDs (0xFFFFFFFF: no MIG) and the protected-memory count. */
static void put_entry(unsigned char *at, size_t size, unsigned pid, unsigned long long bytes) {
  memset(at, 0, size);
  memcpy(at, &pid, sizeof pid);
  memcpy(at + 8, &bytes, sizeof bytes);
  if (size >= 24) {
    unsigned none = 0xFFFFFFFFu;
    memcpy(at + 16, &none, sizeof none);
    memcpy(at + 20, &none, sizeof none);
  }
}

/* Every list function: kind 0 compute, 1 graphics, 2 MPS; version 3, 2 or 1. */
static int list(int kind, int version, void *dev, unsigned *count, void *infos) {
  static const char kinds[] = {'c', 'g', 'm'};
  list_calls[kind][3 - version]++;
  if (inits <= shutdowns)
    return NVML_ERROR_UNINITIALIZED;
  if (dev == NULL || count == NULL)
    return NVML_ERROR_INVALID_ARGUMENT;
  if (version == 3) {
    long rc = env_long("FAKE_NVML_V3_RC", 0);
    if (rc != 0)
      return (int)rc;
  }
  unsigned gpu = ((fake_device_t *)dev)->index;
  size_t stride = version == 1   ? 16
                  : version == 2 ? 24
                                 : (size_t)env_long("FAKE_NVML_V3_STRIDE", 24);

  static fake_entry_t all[FAKE_ENTRIES_MAX];
  size_t nall = parse_procs(all, FAKE_ENTRIES_MAX);
  unsigned long phantoms = 0;
  if (gpu == 0 && kind == 0) {
    phantoms = (unsigned long)env_long("FAKE_NVML_PHANTOMS", 0) +
               (unsigned long)env_long("FAKE_NVML_GROW", 0) * grow_calls;
    grow_calls++;
  }
  size_t n = phantoms;
  for (size_t i = 0; i < nall; i++)
    if (all[i].gpu == gpu && all[i].kind == kinds[kind])
      n++;
  if (*count < n || (n > 0 && infos == NULL)) {
    *count = (unsigned)n;
    return NVML_ERROR_INSUFFICIENT_SIZE;
  }
  unsigned char *out = infos;
  size_t w = 0;
  for (size_t i = 0; i < phantoms; i++, w++)
    put_entry(out + w * stride, stride, PHANTOM_PID_BASE + (unsigned)i, 1ULL << 20);
  for (size_t i = 0; i < nall; i++)
    if (all[i].gpu == gpu && all[i].kind == kinds[kind])
      put_entry(out + w++ * stride, stride, all[i].pid, all[i].bytes);
  *count = (unsigned)n;
  return NVML_SUCCESS;
}

FAKE_API int nvmlInit_v2(void) {
  long rc = env_long("FAKE_NVML_INIT_RC", 0);
  if (rc != 0)
    return (int)rc;
  inits++;
  return NVML_SUCCESS;
}

FAKE_API int nvmlShutdown(void) {
  if (inits <= shutdowns)
    return NVML_ERROR_UNINITIALIZED;
  shutdowns++;
  return NVML_SUCCESS;
}

FAKE_API const char *nvmlErrorString(int code) {
  switch (code) {
  case NVML_SUCCESS:
    return "Success";
  case NVML_ERROR_UNINITIALIZED:
    return "Uninitialized";
  case NVML_ERROR_INSUFFICIENT_SIZE:
    return "Insufficient Size";
  default:
    return "Fake error";
  }
}

FAKE_API int nvmlDeviceGetCount_v2(unsigned *count) {
  if (inits <= shutdowns)
    return NVML_ERROR_UNINITIALIZED;
  *count = gpu_count();
  return NVML_SUCCESS;
}

FAKE_API int nvmlDeviceGetHandleByIndex_v2(unsigned index, void **dev) {
  if (inits <= shutdowns)
    return NVML_ERROR_UNINITIALIZED;
  if (index >= gpu_count())
    return NVML_ERROR_INVALID_ARGUMENT;
  devices[index].index = index;
  *dev = &devices[index];
  return NVML_SUCCESS;
}

FAKE_API int nvmlDeviceGetUUID(void *dev, char *uuid, unsigned length) {
  if (inits <= shutdowns)
    return NVML_ERROR_UNINITIALIZED;
  snprintf(uuid, length, "GPU-fake-%u", ((fake_device_t *)dev)->index);
  return NVML_SUCCESS;
}

#define LISTS(Name, kind)                                                                          \
  FAKE_API int nvmlDeviceGet##Name##RunningProcesses(void *d, unsigned *c, void *i) {              \
    return list(kind, 1, d, c, i);                                                                 \
  }
#define LISTS_V2(Name, kind)                                                                       \
  FAKE_API int nvmlDeviceGet##Name##RunningProcesses_v2(void *d, unsigned *c, void *i) {           \
    return list(kind, 2, d, c, i);                                                                 \
  }
#define LISTS_V3(Name, kind)                                                                       \
  FAKE_API int nvmlDeviceGet##Name##RunningProcesses_v3(void *d, unsigned *c, void *i) {           \
    return list(kind, 3, d, c, i);                                                                 \
  }

LISTS(Compute, 0)
LISTS(Graphics, 1)
LISTS(MPSCompute, 2)
#ifndef FAKE_NVML_WITHOUT_V2
LISTS_V2(Compute, 0)
LISTS_V2(Graphics, 1)
LISTS_V2(MPSCompute, 2)
#endif
#ifndef FAKE_NVML_WITHOUT_V3
LISTS_V3(Compute, 0)
LISTS_V3(Graphics, 1)
LISTS_V3(MPSCompute, 2)
#endif

/* Counters for tests: "init", "shutdown", "compute_v3", "compute_v2",
 * "compute_v1", "graphics_v3", ..., "mps_v1". */
FAKE_API unsigned long fake_nvml_count(const char *what) {
  static const char *const kinds[] = {"compute", "graphics", "mps"};
  if (strcmp(what, "init") == 0)
    return inits;
  if (strcmp(what, "shutdown") == 0)
    return shutdowns;
  for (int k = 0; k < 3; k++)
    for (int v = 0; v < 3; v++) {
      char name[32];
      snprintf(name, sizeof name, "%s_v%d", kinds[k], 3 - v);
      if (strcmp(what, name) == 0)
        return list_calls[k][v];
    }
  return 0;
}

/* Zeroes the counters. */
FAKE_API void fake_nvml_reset(void) {
  inits = shutdowns = grow_calls = 0;
  memset(list_calls, 0, sizeof list_calls);
}
