/*
 * preload.c - libmemsleep_preload.so: cudaMalloc and cudaFree into
 * memsleep regions, for programs that were not written for memsleep.
 *
 * LD_PRELOAD it into any program that uses the CUDA runtime (PyTorch
 * included). cudaMalloc on a thread inside a region (memsleep_region_push,
 * or the whole process with MEMSLEEP_DEFAULT_REGION=tag[:backup|:zero])
 * becomes memsleep_alloc on the current device with the region's tag and
 * flags; outside any region it is the real cudaMalloc, found with
 * dlsym(RTLD_NEXT) (or in the loaded libcudart when the loader order hides
 * it). cudaFree of a memsleep pointer frees it through memsleep, which
 * first waits for the work queued on the device (as cudaFree does), so
 * freeing while kernels may still read the memory is safe; every other
 * pointer goes to the real cudaFree.
 *
 * For PyTorch's pluggable allocator (torch.cuda.memory.CUDAPluggableAllocator,
 * no LD_PRELOAD needed) it also exports memsleep_torch_malloc/_free with the
 * signatures torch expects. The memsleep_* API is reachable through this
 * library too: it depends on libmemsleep.so, so a program that loads both
 * has one memory core.
 *
 * Nothing here includes CUDA headers: cudaError_t is an int, 0 success,
 * 1 cudaErrorInvalidValue, 2 cudaErrorMemoryAllocation.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "memsleep/memsleep.h"

#define MS__EXPORT __attribute__((visibility("default")))

enum { MS__CUDA_SUCCESS = 0, MS__CUDA_INVALID_VALUE = 1, MS__CUDA_NO_MEMORY = 2 };

typedef int (*ms__malloc_fn)(void **ptr, size_t size);
typedef int (*ms__free_fn)(void *ptr);
typedef int (*ms__getdev_fn)(int *device);

static struct {
  pthread_once_t once;
  ms__malloc_fn malloc_;
  ms__free_fn free_;
  ms__getdev_fn get_device;
} ms__real = {PTHREAD_ONCE_INIT, NULL, NULL, NULL};

/* MEMSLEEP_DEFAULT_REGION, parsed once; has_default 0 when unset or bad. */
static struct {
  pthread_once_t once;
  int has_default;
  char tag[MEMSLEEP_TAG_MAX + 1];
  unsigned flags;
} ms__dflt = {PTHREAD_ONCE_INIT, 0, "", 0};

/* dl_iterate_phdr callback: the first loaded object named libcudart. */
static int ms__find_cudart(struct dl_phdr_info *info, size_t size, void *data) {
  (void)size;
  if (info->dlpi_name != NULL && strstr(info->dlpi_name, "libcudart") != NULL) {
    snprintf((char *)data, 4096, "%s", info->dlpi_name);
    return 1;
  }
  return 0;
}

static void *ms__real_sym(const char *name) {
  void *fn = dlsym(RTLD_NEXT, name);
  if (fn != NULL)
    return fn;
  /* Loaded before us or with RTLD_LOCAL (Python extensions): find it. */
  char path[4096] = "";
  if (dl_iterate_phdr(ms__find_cudart, path) == 1) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (lib != NULL)
      fn = dlsym(lib, name);
  }
  return fn;
}

static void ms__real_load(void) {
  ms__real.malloc_ = (ms__malloc_fn)ms__real_sym("cudaMalloc");
  ms__real.free_ = (ms__free_fn)ms__real_sym("cudaFree");
  ms__real.get_device = (ms__getdev_fn)ms__real_sym("cudaGetDevice");
}

static void ms__dflt_load(void) {
  const char *spec = getenv("MEMSLEEP_DEFAULT_REGION");
  if (spec == NULL || *spec == '\0')
    return;
  const char *colon = strchr(spec, ':');
  size_t n = colon != NULL ? (size_t)(colon - spec) : strlen(spec);
  unsigned flags = 0;
  int ok = n >= 1 && n <= MEMSLEEP_TAG_MAX;
  if (ok && colon != NULL) {
    if (strcmp(colon + 1, "backup") == 0)
      flags = MEMSLEEP_BACKUP;
    else if (strcmp(colon + 1, "zero") == 0)
      flags = MEMSLEEP_ZERO;
    else
      ok = 0;
  }
  if (ok) {
    memcpy(ms__dflt.tag, spec, n);
    ms__dflt.tag[n] = '\0';
    /* Validate the name the way the core does, without allocating. */
    for (size_t i = 0; ok && i < n; i++) {
      char c = spec[i];
      ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == '-';
    }
  }
  if (!ok) {
    fprintf(stderr,
            "memsleep: MEMSLEEP_DEFAULT_REGION=\"%s\" is not tag[:backup|:zero] (a tag is 1-63 "
            "of A-Z a-z 0-9 _ . -); ignored, cudaMalloc outside regions is not sleepable\n",
            spec);
    return;
  }
  ms__dflt.flags = flags;
  ms__dflt.has_default = 1;
}

/* The region an allocation on this thread goes to; 0 if none. */
static int ms__region(char *tag, unsigned *flags) {
  if (memsleep_region_current(tag, flags) == 1)
    return 1;
  pthread_once(&ms__dflt.once, ms__dflt_load);
  if (!ms__dflt.has_default)
    return 0;
  memcpy(tag, ms__dflt.tag, sizeof ms__dflt.tag);
  *flags = ms__dflt.flags;
  return 1;
}

static int ms__cuda_code(int rc) {
  return rc == MEMSLEEP_ENOMEM ? MS__CUDA_NO_MEMORY : MS__CUDA_INVALID_VALUE;
}

/* A failed memsleep allocation that the caller will only see as a CUDA
 * error code: say why on stderr (out of memory is left to the caller). */
static void ms__report(const char *call, size_t size, const char *tag, int rc) {
  if (rc != MEMSLEEP_ENOMEM)
    fprintf(stderr, "memsleep: %s(%zu bytes) in region \"%s\": %s\n", call, size, tag,
            memsleep_last_error());
}

MS__EXPORT int cudaMalloc(void **ptr, size_t size) {
  char tag[MEMSLEEP_TAG_MAX + 1];
  unsigned flags = 0;
  pthread_once(&ms__real.once, ms__real_load);
  if (ptr == NULL || size == 0 || !ms__region(tag, &flags)) {
    if (ms__real.malloc_ == NULL) {
      fprintf(stderr, "memsleep: cudaMalloc outside a region, and the real cudaMalloc "
                      "(libcudart) cannot be found\n");
      return MS__CUDA_INVALID_VALUE;
    }
    return ms__real.malloc_(ptr, size);
  }
  int device = 0;
  if (ms__real.get_device != NULL && ms__real.get_device(&device) != 0)
    return MS__CUDA_INVALID_VALUE;
  int rc = memsleep_alloc(ptr, size, device, tag, flags);
  if (rc != 0) {
    ms__report("cudaMalloc", size, tag, rc);
    return ms__cuda_code(rc);
  }
  return MS__CUDA_SUCCESS;
}

MS__EXPORT int cudaFree(void *ptr) {
  if (ptr != NULL && memsleep_owns(ptr)) {
    int rc = memsleep_free(ptr);
    if (rc != 0)
      fprintf(stderr, "memsleep: cudaFree(%p): %s\n", ptr, memsleep_last_error());
    return rc == 0 ? MS__CUDA_SUCCESS : MS__CUDA_INVALID_VALUE;
  }
  pthread_once(&ms__real.once, ms__real_load);
  if (ms__real.free_ == NULL)
    return MS__CUDA_INVALID_VALUE;
  return ms__real.free_(ptr);
}

MS__EXPORT void *memsleep_torch_malloc(ssize_t size, int device, void *stream) {
  (void)stream;
  char tag[MEMSLEEP_TAG_MAX + 1];
  unsigned flags = 0;
  if (size <= 0)
    return NULL;
  if (!ms__region(tag, &flags)) {
    fprintf(stderr,
            "memsleep: memsleep_torch_malloc(%zd bytes) outside any region: use the "
            "allocator only inside memsleep regions\n",
            size);
    return NULL;
  }
  void *p = NULL;
  int rc = memsleep_alloc(&p, (size_t)size, device, tag, flags);
  if (rc != 0) {
    ms__report("memsleep_torch_malloc", (size_t)size, tag, rc);
    return NULL;
  }
  return p;
}

MS__EXPORT void memsleep_torch_free(void *ptr, ssize_t size, int device, void *stream) {
  (void)size;
  (void)device;
  (void)stream;
  if (ptr != NULL && memsleep_free(ptr) != 0)
    fprintf(stderr, "memsleep: memsleep_torch_free(%p): %s\n", ptr, memsleep_last_error());
}
