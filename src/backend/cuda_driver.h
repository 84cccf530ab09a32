/*
 * cuda_driver.h - the few CUDA driver API types and functions the CUDA
 * backend uses, loaded at run time.
 *
 * libmemsleep must build where there is no CUDA toolkit and load where
 * there is no driver, so it does not include cuda.h or link libcuda: the
 * types below repeat the driver's ABI (cuda.h of CUDA 12 and 13), and the
 * functions are looked up with cuGetProcAddress in libcuda.so.1 (or the file
 * MEMSLEEP_LIBCUDA names) the first time a CUDA ordinal is used.
 */
#ifndef MEMSLEEP_BACKEND_CUDA_DRIVER_H
#define MEMSLEEP_BACKEND_CUDA_DRIVER_H

#include <stddef.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUstream_st *CUstream;
typedef struct CUevent_st *CUevent;
typedef unsigned long long CUdeviceptr;
typedef unsigned long long CUmemGenericAllocationHandle;

typedef struct ms__cu_location {
  int type; /* MS__CU_LOCATION_DEVICE */
  int id;   /* device ordinal */
} ms__cu_location_t;

typedef struct ms__cu_alloc_prop {
  int type; /* MS__CU_ALLOCATION_PINNED */
  int requested_handle_types;
  ms__cu_location_t location;
  void *win32_handle_meta_data;
  struct {
    unsigned char compression_type;
    unsigned char gpu_direct_rdma_capable;
    unsigned short usage;
    unsigned char reserved[4];
  } alloc_flags;
} ms__cu_alloc_prop_t;

typedef struct ms__cu_access_desc {
  ms__cu_location_t location;
  int flags; /* MS__CU_ACCESS_READWRITE */
} ms__cu_access_desc_t;

enum {
  MS__CU_SUCCESS = 0,
  MS__CU_ERROR_INVALID_VALUE = 1,
  MS__CU_ERROR_OUT_OF_MEMORY = 2,
  MS__CU_ERROR_NOT_INITIALIZED = 3,
  MS__CU_ERROR_STUB_LIBRARY = 34,
  MS__CU_ERROR_INSUFFICIENT_DRIVER = 35,
  MS__CU_ERROR_NO_DEVICE = 100,
  MS__CU_LOCATION_DEVICE = 1,
  MS__CU_ALLOCATION_PINNED = 1,
  MS__CU_ACCESS_READWRITE = 3,
  MS__CU_GRANULARITY_MINIMUM = 0,
  MS__CU_STREAM_NON_BLOCKING = 1,
  MS__CU_EVENT_DISABLE_TIMING = 2,
  MS__CU_HOST_PORTABLE = 1 /* CU_MEMHOSTALLOC_PORTABLE, CU_MEMHOSTREGISTER_PORTABLE */
};

/* The driver functions, resolved once by ms__cu_load(). */
typedef struct ms__cu_api {
  CUresult (*Init)(unsigned flags);
  CUresult (*GetErrorName)(CUresult r, const char **name);
  CUresult (*DeviceGetCount)(int *count);
  CUresult (*DeviceGet)(CUdevice *dev, int ordinal);
  CUresult (*DeviceCanAccessPeer)(int *can, CUdevice dev, CUdevice peer);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext *ctx, CUdevice dev);
  CUresult (*CtxPushCurrent)(CUcontext ctx);
  CUresult (*CtxPopCurrent)(CUcontext *ctx);
  CUresult (*CtxSynchronize)(void);
  CUresult (*StreamCreate)(CUstream *stream, unsigned flags);
  CUresult (*EventCreate)(CUevent *event, unsigned flags);
  CUresult (*EventRecord)(CUevent event, CUstream stream);
  CUresult (*EventSynchronize)(CUevent event);
  CUresult (*EventDestroy)(CUevent event);
  CUresult (*MemGetInfo)(size_t *free_bytes, size_t *total_bytes);
  CUresult (*MemGetAllocationGranularity)(size_t *gran, const ms__cu_alloc_prop_t *prop,
                                          int option);
  CUresult (*MemAddressReserve)(CUdeviceptr *ptr, size_t size, size_t alignment, CUdeviceptr addr,
                                unsigned long long flags);
  CUresult (*MemAddressFree)(CUdeviceptr ptr, size_t size);
  CUresult (*MemCreate)(CUmemGenericAllocationHandle *handle, size_t size,
                        const ms__cu_alloc_prop_t *prop, unsigned long long flags);
  CUresult (*MemRelease)(CUmemGenericAllocationHandle handle);
  CUresult (*MemMap)(CUdeviceptr ptr, size_t size, size_t offset,
                     CUmemGenericAllocationHandle handle, unsigned long long flags);
  CUresult (*MemUnmap)(CUdeviceptr ptr, size_t size);
  CUresult (*MemSetAccess)(CUdeviceptr ptr, size_t size, const ms__cu_access_desc_t *desc,
                           size_t count);
  CUresult (*MemRetainAllocationHandle)(CUmemGenericAllocationHandle *handle, void *addr);
  CUresult (*MemsetD32Async)(CUdeviceptr ptr, unsigned value, size_t count, CUstream stream);
  CUresult (*MemcpyDtoHAsync)(void *dst, CUdeviceptr src, size_t bytes, CUstream stream);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr dst, const void *src, size_t bytes, CUstream stream);
  CUresult (*MemHostAlloc)(void **ptr, size_t bytes, unsigned flags);
  CUresult (*MemFreeHost)(void *ptr);
  CUresult (*MemHostRegister)(void *ptr, size_t bytes, unsigned flags);
  CUresult (*MemHostUnregister)(void *ptr);
} ms__cu_api_t;

extern ms__cu_api_t ms__cu;

/* Loads the driver and calls cuInit once per process. 0, or
 * MEMSLEEP_EUNAVAIL with the reason (no libcuda, the toolkit's stub, no
 * device, a driver too old) as the last error - every later call answers
 * the same. */
int ms__cu_load(void);

/* The integer value of environment variable name if it is one within
 * [lo, hi], else fallback. */
long ms__cu_env_long(const char *name, long fallback, long lo, long hi);

/* Sets the last error "<what>: CUDA_ERROR_NAME (code)" and returns the
 * MEMSLEEP_E* code for r (out of memory -> ENOMEM, else EBACKEND). */
int ms__cu_fail(CUresult r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#endif /* MEMSLEEP_BACKEND_CUDA_DRIVER_H */
