/*
 * device.c - the engine's device placement: parsing and naming devices,
 * checking that a CUDA device can be used, and the host-to-device copies
 * and zeroing the loader and the KV cache need.
 *
 * Built in every configuration; the CUDA runtime calls exist only when the
 * build has the CUDA engine (MEMSLEEP_CUDA_ENGINE), so a build without the
 * toolkit still links and refuses CUDA ordinals with a clear message.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "engine/compute.h"
#include "engine/device.h"
#include "memsleep/memsleep.h"

#ifdef MEMSLEEP_CUDA_ENGINE
#include <cuda_runtime_api.h>
#endif

#define DEVICE_MAX 1024

int ms__device_parse(const char *text, int *device) {
  if (!text || !device)
    return ms__fail(MEMSLEEP_EINVAL, "device: NULL argument");
  if (strcmp(text, "cpu") == 0) {
    *device = MEMSLEEP_HOST;
    return 0;
  }
  if (strncmp(text, "cuda:", 5) == 0 && text[5] >= '0' && text[5] <= '9') {
    char *end = NULL;
    long n = strtol(text + 5, &end, 10);
    if (*end == '\0' && n >= 0 && n < DEVICE_MAX) {
      *device = (int)n;
      return 0;
    }
  }
  return ms__fail(MEMSLEEP_EINVAL, "device \"%s\": expected \"cpu\" or \"cuda:N\" (N from 0)",
                  text);
}

const char *ms__device_name(int device, char *buf, size_t cap) {
  if (device == MEMSLEEP_HOST)
    snprintf(buf, cap, "cpu");
  else
    snprintf(buf, cap, "cuda:%d", device);
  return buf;
}

const ms__compute_ops_t *ms__compute_for(int device) {
  if (device == MEMSLEEP_HOST)
    return &ms__compute_cpu;
#ifdef MEMSLEEP_CUDA_ENGINE
  return &ms__compute_cuda;
#else
  return NULL;
#endif
}

#ifdef MEMSLEEP_CUDA_ENGINE

int ms__device_check(int device) {
  if (device == MEMSLEEP_HOST)
    return 0;
  if (device < 0)
    return ms__fail(MEMSLEEP_EINVAL, "device %d: not a CUDA ordinal", device);
  int driver = 0, runtime = 0;
  cudaRuntimeGetVersion(&runtime);
  if (cudaDriverGetVersion(&driver) != cudaSuccess || driver == 0)
    return ms__fail(MEMSLEEP_EUNAVAIL,
                    "device cuda:%d: no CUDA driver is installed (libcuda.so.1 cannot be loaded)",
                    device);
  if (driver < runtime)
    return ms__fail(MEMSLEEP_EUNAVAIL,
                    "device cuda:%d: the CUDA driver (version %d) is older than the CUDA runtime "
                    "memsleep was built with (%d)",
                    device, driver, runtime);
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ms__fail(MEMSLEEP_EUNAVAIL, "device cuda:%d: no usable CUDA device (%s: %s)", device,
                    cudaGetErrorName(e), cudaGetErrorString(e));
  }
  if (device >= count)
    return ms__fail(MEMSLEEP_EINVAL, "device cuda:%d: this process sees %d CUDA device%s", device,
                    count, count == 1 ? "" : "s");
  e = cudaSetDevice(device);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ms__fail(MEMSLEEP_EUNAVAIL, "device cuda:%d: cudaSetDevice: %s", device,
                    cudaGetErrorString(e));
  }
  return 0;
}

int ms__device_upload(int device, void *dst, const void *src, size_t bytes) {
  if (device == MEMSLEEP_HOST) {
    memmove(dst, src, bytes);
    return 0;
  }
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess)
    e = cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ms__fail(MEMSLEEP_EBACKEND, "cudaMemcpy(%zu bytes to cuda:%d): %s", bytes, device,
                    cudaGetErrorString(e));
  }
  return 0;
}

int ms__device_zero(int device, void *dst, size_t bytes) {
  if (device == MEMSLEEP_HOST) {
    memset(dst, 0, bytes);
    return 0;
  }
  cudaError_t e = cudaSetDevice(device);
  if (e == cudaSuccess)
    e = cudaMemset(dst, 0, bytes);
  if (e == cudaSuccess)
    e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    cudaGetLastError();
    return ms__fail(MEMSLEEP_EBACKEND, "cudaMemset(%zu bytes on cuda:%d): %s", bytes, device,
                    cudaGetErrorString(e));
  }
  return 0;
}

#else /* no CUDA engine in this build */

static int no_cuda(int device) {
  return ms__fail(MEMSLEEP_EUNAVAIL,
                  "device cuda:%d: this build has no CUDA engine (memsleep was built without the "
                  "CUDA toolkit; rebuild with it and -DMEMSLEEP_CUDA_ENGINE=ON)",
                  device);
}

int ms__device_check(int device) {
  if (device == MEMSLEEP_HOST)
    return 0;
  if (device < 0)
    return ms__fail(MEMSLEEP_EINVAL, "device %d: not a CUDA ordinal", device);
  return no_cuda(device);
}

int ms__device_upload(int device, void *dst, const void *src, size_t bytes) {
  if (device != MEMSLEEP_HOST)
    return no_cuda(device);
  memmove(dst, src, bytes);
  return 0;
}

int ms__device_zero(int device, void *dst, size_t bytes) {
  if (device != MEMSLEEP_HOST)
    return no_cuda(device);
  memset(dst, 0, bytes);
  return 0;
}

#endif
