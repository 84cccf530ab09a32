/*
 * cuda.c - the CUDA backend: device memory on the driver's virtual memory
 * API, backups in pinned host memory.
 *
 * reserve/unreserve are cuMemAddressReserve/cuMemAddressFree. map creates
 * one physical allocation for the whole range (cuMemCreate), maps it
 * (cuMemMap), grants the owning device - and, with MEMSLEEP_CUDA_PEERS=1,
 * every peer that can reach it - read/write access (cuMemSetAccess) and
 * drops its own handle at once: the mapping keeps the memory alive, so
 * cuMemUnmap alone gives it back and nothing else needs remembering.
 *
 * Backups are pinned host buffers (the core keeps them across cycles, see
 * memsleep_keep_backups), filled and drained with asynchronous copies cut
 * in pieces and spread round-robin over MEMSLEEP_CUDA_STREAMS streams of
 * the device's primary context (the one the CUDA runtime and PyTorch use).
 * sync waits for the whole context, so that work the user queued on memory
 * is finished before memsleep unmaps or frees it. Every driver error comes
 * back as a code and a message naming the call; nothing here exits.
 */
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/error.h"
#include "cuda_driver.h"
#include "cuda_pin.h"
#include "memsleep/memsleep.h"

#define MS__CU_DEVICES_MAX     64
#define MS__CU_STREAMS_MAX     16
#define MS__CU_STREAMS_DEFAULT 4
/* Copies are cut in pieces of this size so several streams share them. */
#define MS__CU_PIECE ((size_t)64 << 20)

typedef struct ms__cu_dev {
  atomic_int ready; /* 1 once set up */
  CUdevice dev;
  CUcontext ctx;
  size_t gran;
  int nstreams;
  CUstream streams[MS__CU_STREAMS_MAX];
  atomic_uint next; /* round-robin stream index */
  ms__cu_access_desc_t access[MS__CU_DEVICES_MAX];
  size_t naccess;
  ms__pin_job_t *pin; /* backups being prepared for the running release */
} ms__cu_dev_t;

static ms__cu_dev_t ms__cu_devs[MS__CU_DEVICES_MAX];
static pthread_mutex_t ms__cu_setup = PTHREAD_MUTEX_INITIALIZER;

/* Makes d's primary context current on this thread; ms__cu_leave undoes. */
static int ms__cu_enter(ms__cu_dev_t *d, int device) {
  CUresult r = ms__cu.CtxPushCurrent(d->ctx);
  return r == MS__CU_SUCCESS ? 0 : ms__cu_fail(r, "cuCtxPushCurrent(device %d)", device);
}
static void ms__cu_leave(void) {
  CUcontext old;
  ms__cu.CtxPopCurrent(&old);
}

static int ms__cu_setup_device(int device, ms__cu_dev_t *d) {
  CUresult r = ms__cu.DeviceGet(&d->dev, device);
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuDeviceGet(%d)", device);
  r = ms__cu.DevicePrimaryCtxRetain(&d->ctx, d->dev);
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuDevicePrimaryCtxRetain(device %d)", device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  ms__cu_alloc_prop_t prop = {0};
  prop.type = MS__CU_ALLOCATION_PINNED;
  prop.location.type = MS__CU_LOCATION_DEVICE;
  prop.location.id = device;
  r = ms__cu.MemGetAllocationGranularity(&d->gran, &prop, MS__CU_GRANULARITY_MINIMUM);
  if (r != MS__CU_SUCCESS || d->gran == 0)
    rc = ms__cu_fail(r, "cuMemGetAllocationGranularity(device %d)", device);
  d->nstreams =
      (int)ms__cu_env_long("MEMSLEEP_CUDA_STREAMS", MS__CU_STREAMS_DEFAULT, 1, MS__CU_STREAMS_MAX);
  for (int i = 0; rc == 0 && i < d->nstreams; i++) {
    r = ms__cu.StreamCreate(&d->streams[i], MS__CU_STREAM_NON_BLOCKING);
    if (r != MS__CU_SUCCESS)
      rc = ms__cu_fail(r, "cuStreamCreate(device %d)", device);
  }
  ms__cu_leave();
  if (rc != 0)
    return rc;

  d->access[0].location.type = MS__CU_LOCATION_DEVICE;
  d->access[0].location.id = device;
  d->access[0].flags = MS__CU_ACCESS_READWRITE;
  d->naccess = 1;
  int count = 0;
  if (ms__cu_env_long("MEMSLEEP_CUDA_PEERS", 0, 0, 1) == 1 &&
      ms__cu.DeviceGetCount(&count) == MS__CU_SUCCESS) {
    for (int p = 0; p < count && p < MS__CU_DEVICES_MAX; p++) {
      CUdevice peer;
      int can = 0;
      if (p == device || ms__cu.DeviceGet(&peer, p) != MS__CU_SUCCESS ||
          ms__cu.DeviceCanAccessPeer(&can, peer, d->dev) != MS__CU_SUCCESS || !can)
        continue;
      d->access[d->naccess] = d->access[0];
      d->access[d->naccess].location.id = p;
      d->naccess++;
    }
  }
  return 0;
}

static int ms__cu_init(int device) {
  if (device >= MS__CU_DEVICES_MAX)
    return ms__fail(MEMSLEEP_EINVAL, "device %d: memsleep supports CUDA ordinals 0..%d", device,
                    MS__CU_DEVICES_MAX - 1);
  ms__cu_dev_t *d = &ms__cu_devs[device];
  if (atomic_load_explicit(&d->ready, memory_order_acquire))
    return 0;
  int rc = ms__cu_load();
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&ms__cu_setup);
  if (!atomic_load(&d->ready)) {
    int count = 0;
    CUresult r = ms__cu.DeviceGetCount(&count);
    if (r != MS__CU_SUCCESS)
      rc = ms__cu_fail(r, "cuDeviceGetCount");
    else if (device >= count)
      rc = ms__fail(MEMSLEEP_EINVAL, "device %d: this process sees %d CUDA device%s", device, count,
                    count == 1 ? "" : "s");
    else
      rc = ms__cu_setup_device(device, d);
    if (rc == 0)
      atomic_store_explicit(&d->ready, 1, memory_order_release);
  }
  pthread_mutex_unlock(&ms__cu_setup);
  return rc;
}

static ms__cu_dev_t *ms__cu_dev(int device) {
  return &ms__cu_devs[device];
}

static int ms__cu_granularity(int device, size_t *out) {
  *out = ms__cu_dev(device)->gran;
  return 0;
}

static int ms__cu_reserve(int device, size_t size, void **va) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUdeviceptr p = 0;
  CUresult r = ms__cu.MemAddressReserve(&p, size, 0, 0, 0);
  ms__cu_leave();
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuMemAddressReserve(%zu bytes, device %d)", size, device);
  *va = (void *)(uintptr_t)p;
  return 0;
}

static int ms__cu_unreserve(int device, void *va, size_t size) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUresult r = ms__cu.MemAddressFree((CUdeviceptr)(uintptr_t)va, size);
  ms__cu_leave();
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuMemAddressFree(%p, %zu bytes, device %d)", va, size, device);
  return 0;
}

/* ENOMEM with what was needed and what the device has free. */
static int ms__cu_no_room(int device, size_t size) {
  size_t free_bytes = 0, total = 0;
  ms__cu.MemGetInfo(&free_bytes, &total);
  return ms__fail(MEMSLEEP_ENOMEM,
                  "cuMemCreate: device %d has no room for %zu bytes (%.2f GiB): %zu bytes "
                  "(%.2f GiB) free of %zu (CUDA_ERROR_OUT_OF_MEMORY; another process may hold "
                  "the memory)",
                  device, size, (double)size / (1 << 30), free_bytes,
                  (double)free_bytes / (1 << 30), total);
}

/* Physical memory is created and mapped in pieces of at most this many
 * bytes (MEMSLEEP_CUDA_MAP_PIECE; 0 = one piece per range). */
static size_t ms__cu_piece(const ms__cu_dev_t *d) {
  static atomic_long piece = -1;
  long v = atomic_load(&piece);
  if (v < 0) {
    v = ms__cu_env_long("MEMSLEEP_CUDA_MAP_PIECE", (long)1 << 30, 0, LONG_MAX);
    atomic_store(&piece, v);
  }
  if (v == 0)
    return SIZE_MAX;
  size_t p = ((size_t)v + d->gran - 1) / d->gran * d->gran;
  return p;
}

/* Creates, maps and opens one piece (context current). */
static int ms__cu_map_piece(ms__cu_dev_t *d, int device, CUdeviceptr p, size_t size) {
  ms__cu_alloc_prop_t prop = {0};
  prop.type = MS__CU_ALLOCATION_PINNED;
  prop.location.type = MS__CU_LOCATION_DEVICE;
  prop.location.id = device;
  CUmemGenericAllocationHandle h = 0;
  CUresult r = ms__cu.MemCreate(&h, size, &prop, 0);
  if (r == MS__CU_ERROR_OUT_OF_MEMORY)
    return ms__cu_no_room(device, size);
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuMemCreate(%zu bytes, device %d)", size, device);
  int rc = 0;
  r = ms__cu.MemMap(p, size, 0, h, 0);
  if (r != MS__CU_SUCCESS) {
    rc = ms__cu_fail(r, "cuMemMap(0x%llx, %zu bytes, device %d)", p, size, device);
  } else {
    r = ms__cu.MemSetAccess(p, size, d->access, d->naccess);
    if (r != MS__CU_SUCCESS) {
      rc = ms__cu_fail(r, "cuMemSetAccess(0x%llx, %zu bytes, device %d)", p, size, device);
      ms__cu.MemUnmap(p, size);
    }
  }
  ms__cu.MemRelease(h); /* the mapping, if any, keeps the memory alive */
  return rc;
}

static int ms__cu_map(int device, void *va, size_t size) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUdeviceptr base = (CUdeviceptr)(uintptr_t)va;
  size_t piece = ms__cu_piece(d), off = 0;
  for (; rc == 0 && off < size; off += piece) {
    size_t n = size - off < piece ? size - off : piece;
    rc = ms__cu_map_piece(d, device, base + off, n);
    if (rc != 0)
      break;
  }
  if (rc != 0) /* give back the pieces mapped so far */
    for (size_t back = 0; back < off; back += piece)
      ms__cu.MemUnmap(base + back, off - back < piece ? off - back : piece);
  ms__cu_leave();
  return rc;
}

static int ms__cu_unmap(int device, void *va, size_t size) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUdeviceptr base = (CUdeviceptr)(uintptr_t)va;
  size_t piece = ms__cu_piece(d);
  for (size_t off = 0; rc == 0 && off < size; off += piece) {
    size_t n = size - off < piece ? size - off : piece;
    CUresult r = ms__cu.MemUnmap(base + off, n);
    if (r != MS__CU_SUCCESS)
      rc = ms__cu_fail(r, "cuMemUnmap(0x%llx, %zu bytes, device %d)", base + off, n, device);
  }
  ms__cu_leave();
  return rc;
}

static CUstream ms__cu_stream(ms__cu_dev_t *d) {
  unsigned i = atomic_fetch_add_explicit(&d->next, 1, memory_order_relaxed);
  return d->streams[i % (unsigned)d->nstreams];
}

static int ms__cu_zero(int device, void *va, size_t size) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUresult r = ms__cu.MemsetD32Async((CUdeviceptr)(uintptr_t)va, 0, size / 4, ms__cu_stream(d));
  ms__cu_leave();
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuMemsetD32Async(%p, %zu bytes, device %d)", va, size, device);
  return 0;
}

static int ms__cu_resident(int device, const void *va, size_t size, size_t *out) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  /* A range is mapped as a whole or not at all: ask the driver whether a
   * physical allocation is behind its first byte. */
  CUmemGenericAllocationHandle h = 0;
  CUresult r = ms__cu.MemRetainAllocationHandle(&h, (void *)(uintptr_t)va);
  if (r == MS__CU_SUCCESS)
    ms__cu.MemRelease(h);
  ms__cu_leave();
  *out = r == MS__CU_SUCCESS ? size : 0;
  return 0;
}

/* How backups are pinned: "register" (default) maps anonymous memory,
 * asks for transparent huge pages, faults it in and registers it with the
 * driver - ahead of time on several threads when the core says what a
 * release will need (cuda_pin.c); "alloc" lets cuMemHostAlloc do it all on
 * one thread (1.7-2.7 GB/s measured on an H100 host, far too slow for a
 * first release of many gigabytes). */
static int ms__cu_pin_register(void) {
  static atomic_int mode = -1;
  int m = atomic_load(&mode);
  if (m < 0) {
    const char *env = getenv("MEMSLEEP_CUDA_PIN");
    m = !(env != NULL && strcmp(env, "alloc") == 0);
    atomic_store(&mode, m);
  }
  return m;
}

static void ms__cu_backup_prepare(int device, const size_t *sizes, size_t n) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  ms__pin_stop(d->pin); /* what a previous transition left */
  d->pin = n > 0 && ms__cu_pin_register() ? ms__pin_start(device, d->ctx, sizes, n) : NULL;
}

static int ms__cu_backup_alloc(int device, size_t size, void **host) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  if (ms__cu_pin_register()) {
    void *p = ms__pin_take(d->pin, size);
    if (p != NULL) {
      *host = p;
      return 0;
    }
    p = ms__pin_fault(size);
    if (p == NULL)
      return ms__fail(MEMSLEEP_ENOMEM, "mmap(%zu bytes of host memory for a backup) failed", size);
    int rc = ms__cu_enter(d, device);
    if (rc == 0) {
      CUresult r = ms__cu.MemHostRegister(p, ms__pin_round(size), MS__CU_HOST_PORTABLE);
      ms__cu_leave();
      if (r != MS__CU_SUCCESS)
        rc = ms__cu_fail(r, "cuMemHostRegister(%zu bytes of host memory for a backup)", size);
    }
    if (rc != 0) {
      munmap(p, ms__pin_round(size));
      return rc;
    }
    *host = p;
    return 0;
  }
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUresult r = ms__cu.MemHostAlloc(host, size, MS__CU_HOST_PORTABLE);
  ms__cu_leave();
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuMemHostAlloc(%zu bytes of pinned host memory for a backup)", size);
  return 0;
}

static void ms__cu_backup_free(int device, void *host, size_t size) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  if (ms__cu_enter(d, device) != 0)
    return;
  if (ms__cu_pin_register()) {
    ms__cu.MemHostUnregister(host);
    ms__cu_leave();
    munmap(host, ms__pin_round(size));
    return;
  }
  ms__cu.MemFreeHost(host);
  ms__cu_leave();
}

/* Queues a copy in pieces over the device's streams. */
static int ms__cu_copy(int device, void *dst, const void *src, size_t size, int out) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  for (size_t off = 0; rc == 0 && off < size; off += MS__CU_PIECE) {
    size_t n = size - off < MS__CU_PIECE ? size - off : MS__CU_PIECE;
    CUstream s = ms__cu_stream(d);
    CUresult r =
        out ? ms__cu.MemcpyDtoHAsync((char *)dst + off, (CUdeviceptr)(uintptr_t)src + off, n, s)
            : ms__cu.MemcpyHtoDAsync((CUdeviceptr)(uintptr_t)dst + off, (const char *)src + off, n,
                                     s);
    if (r != MS__CU_SUCCESS)
      rc = ms__cu_fail(r, "%s(%zu bytes at offset %zu, device %d)",
                       out ? "cuMemcpyDtoHAsync" : "cuMemcpyHtoDAsync", n, off, device);
  }
  ms__cu_leave();
  return rc;
}

static int ms__cu_copy_out(int device, const void *va, void *host, size_t size) {
  return ms__cu_copy(device, host, va, size, 1);
}

static int ms__cu_copy_in(int device, const void *host, void *va, size_t size) {
  return ms__cu_copy(device, va, host, size, 0);
}

static int ms__cu_sync(int device) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  if (rc != 0)
    return rc;
  CUresult r = ms__cu.CtxSynchronize();
  ms__cu_leave();
  if (r != MS__CU_SUCCESS)
    return ms__cu_fail(r, "cuCtxSynchronize(device %d)", device);
  return 0;
}

/* A fence: one event per copy stream of the device. */
typedef struct ms__cu_fence {
  int n;
  CUevent ev[MS__CU_STREAMS_MAX];
} ms__cu_fence_t;

static int ms__cu_fence_wait(int device, void *token) {
  ms__cu_fence_t *f = token;
  ms__cu_dev_t *d = ms__cu_dev(device);
  int rc = ms__cu_enter(d, device);
  int entered = rc == 0;
  for (int i = 0; i < f->n; i++) {
    if (rc == 0) {
      CUresult r = ms__cu.EventSynchronize(f->ev[i]);
      if (r != MS__CU_SUCCESS)
        rc = ms__cu_fail(r, "cuEventSynchronize(device %d)", device);
    }
    ms__cu.EventDestroy(f->ev[i]);
  }
  if (entered)
    ms__cu_leave();
  free(f);
  return rc;
}

static int ms__cu_fence(int device, void **token) {
  ms__cu_dev_t *d = ms__cu_dev(device);
  ms__cu_fence_t *f = calloc(1, sizeof *f);
  if (f == NULL)
    return ms__fail(MEMSLEEP_ENOMEM, "out of host memory for a copy fence");
  int rc = ms__cu_enter(d, device);
  if (rc != 0) {
    free(f);
    return rc;
  }
  for (int i = 0; rc == 0 && i < d->nstreams; i++) {
    CUresult r = ms__cu.EventCreate(&f->ev[i], MS__CU_EVENT_DISABLE_TIMING);
    if (r == MS__CU_SUCCESS) {
      f->n++;
      r = ms__cu.EventRecord(f->ev[i], d->streams[i]);
    }
    if (r != MS__CU_SUCCESS)
      rc = ms__cu_fail(r, "cuEventRecord(device %d)", device);
  }
  ms__cu_leave();
  if (rc != 0) {
    for (int i = 0; i < f->n; i++)
      ms__cu.EventDestroy(f->ev[i]);
    free(f);
    return rc;
  }
  *token = f;
  return 0;
}

const ms__backend_t ms__cuda_backend = {
    .name = "cuda",
    .init = ms__cu_init,
    .granularity = ms__cu_granularity,
    .reserve = ms__cu_reserve,
    .unreserve = ms__cu_unreserve,
    .map = ms__cu_map,
    .unmap = ms__cu_unmap,
    .zero = ms__cu_zero,
    .resident = ms__cu_resident,
    .backup_alloc = ms__cu_backup_alloc,
    .backup_free = ms__cu_backup_free,
    .backup_prepare = ms__cu_backup_prepare,
    .copy_out = ms__cu_copy_out,
    .copy_in = ms__cu_copy_in,
    .sync = ms__cu_sync,
    .fence = ms__cu_fence,
    .fence_wait = ms__cu_fence_wait,
    .move_out = NULL,
    .move_in = NULL,
    .keep_backups = 1,
    .slab_bytes = (size_t)64 << 20,
    .map_zeroes = 0,
};
