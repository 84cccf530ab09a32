/*
 * cuda_driver.c - opens the CUDA driver at run time (see cuda_driver.h).
 *
 * dlopen("libcuda.so.1") (or $MEMSLEEP_LIBCUDA), then cuGetProcAddress for
 * every function, asking for the ABI of CUDA 12.0 so that the _v2 entry
 * points (size_t sizes, explicit streams) come back whatever the driver's
 * version. Every failure is MEMSLEEP_EUNAVAIL with a message that says what
 * was missing; the answer is cached, so a process without a driver pays for
 * the attempt once.
 */
#include "cuda_driver.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/error.h"
#include "memsleep/memsleep.h"

ms__cu_api_t ms__cu;

/* The driver ABI version we ask cuGetProcAddress for (CUDA 12.0). */
#define MS__CU_ABI 12000

typedef CUresult (*ms__cu_getproc_v2_t)(const char *symbol, void **pfn, int version,
                                        unsigned long long flags, int *status);
typedef CUresult (*ms__cu_getproc_v1_t)(const char *symbol, void **pfn, int version,
                                        unsigned long long flags);

static pthread_once_t ms__cu_once = PTHREAD_ONCE_INIT;
static int ms__cu_rc = MEMSLEEP_EUNAVAIL;
static char ms__cu_why[512];

static const char *ms__cu_name(CUresult r) {
  const char *name = NULL;
  if (ms__cu.GetErrorName == NULL || ms__cu.GetErrorName(r, &name) != MS__CU_SUCCESS ||
      name == NULL)
    return "CUDA error";
  return name;
}

int ms__cu_fail(CUresult r, const char *fmt, ...) {
  char what[384];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  int code = r == MS__CU_ERROR_OUT_OF_MEMORY ? MEMSLEEP_ENOMEM : MEMSLEEP_EBACKEND;
  return ms__fail(code, "%s: %s (%d)", what, ms__cu_name(r), r);
}

static void ms__cu_why_set(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ms__cu_why_set(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(ms__cu_why, sizeof ms__cu_why, fmt, ap);
  va_end(ap);
}

static void ms__cu_load_once(void) {
  const char *path = getenv("MEMSLEEP_LIBCUDA");
  if (path == NULL || *path == '\0')
    path = "libcuda.so.1";
  void *lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    const char *err = dlerror();
    ms__cu_why_set("no CUDA driver: cannot load %s (%s)", path, err ? err : "unknown reason");
    return;
  }
  ms__cu_getproc_v2_t getproc2 = (ms__cu_getproc_v2_t)dlsym(lib, "cuGetProcAddress_v2");
  ms__cu_getproc_v1_t getproc1 = (ms__cu_getproc_v1_t)dlsym(lib, "cuGetProcAddress");
  if (getproc2 == NULL && getproc1 == NULL) {
    ms__cu_why_set("%s has no cuGetProcAddress: the CUDA driver is older than 11.3", path);
    return;
  }
  static const struct {
    const char *name;
    size_t offset;
  } fns[] = {
#define MS__CU_FN(n) {"cu" #n, offsetof(ms__cu_api_t, n)}
      MS__CU_FN(Init),
      MS__CU_FN(GetErrorName),
      MS__CU_FN(DeviceGetCount),
      MS__CU_FN(DeviceGet),
      MS__CU_FN(DeviceCanAccessPeer),
      MS__CU_FN(DevicePrimaryCtxRetain),
      MS__CU_FN(CtxPushCurrent),
      MS__CU_FN(CtxPopCurrent),
      MS__CU_FN(CtxSynchronize),
      MS__CU_FN(StreamCreate),
      MS__CU_FN(EventCreate),
      MS__CU_FN(EventRecord),
      MS__CU_FN(EventSynchronize),
      MS__CU_FN(EventDestroy),
      MS__CU_FN(MemGetInfo),
      MS__CU_FN(MemGetAllocationGranularity),
      MS__CU_FN(MemAddressReserve),
      MS__CU_FN(MemAddressFree),
      MS__CU_FN(MemCreate),
      MS__CU_FN(MemRelease),
      MS__CU_FN(MemMap),
      MS__CU_FN(MemUnmap),
      MS__CU_FN(MemSetAccess),
      MS__CU_FN(MemRetainAllocationHandle),
      MS__CU_FN(MemsetD32Async),
      MS__CU_FN(MemcpyDtoHAsync),
      MS__CU_FN(MemcpyHtoDAsync),
      MS__CU_FN(MemHostAlloc),
      MS__CU_FN(MemFreeHost),
      MS__CU_FN(MemHostRegister),
      MS__CU_FN(MemHostUnregister),
#undef MS__CU_FN
  };
  ms__cu_api_t api = {0};
  for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
    void *fn = NULL;
    int status = 0;
    CUresult r = getproc2 != NULL ? getproc2(fns[i].name, &fn, MS__CU_ABI, 0, &status)
                                  : getproc1(fns[i].name, &fn, MS__CU_ABI, 0);
    if (r == MS__CU_ERROR_STUB_LIBRARY) {
      ms__cu_why_set("no CUDA driver: %s is the CUDA toolkit's stub library "
                     "(CUDA_ERROR_STUB_LIBRARY), not a driver",
                     path);
      return;
    }
    if (r != MS__CU_SUCCESS || fn == NULL) {
      ms__cu_why_set("the CUDA driver in %s lacks %s (cuGetProcAddress error %d): it is older "
                     "than CUDA 12.0",
                     path, fns[i].name, r);
      return;
    }
    *(void **)((char *)&api + fns[i].offset) = fn;
  }
  ms__cu = api;
  CUresult r = ms__cu.Init(0);
  if (r == MS__CU_ERROR_STUB_LIBRARY)
    ms__cu_why_set("no CUDA driver: %s is the CUDA toolkit's stub library "
                   "(CUDA_ERROR_STUB_LIBRARY), not a driver",
                   path);
  else if (r == MS__CU_ERROR_NO_DEVICE)
    ms__cu_why_set("cuInit: no CUDA device is visible (CUDA_ERROR_NO_DEVICE)");
  else if (r == MS__CU_ERROR_INSUFFICIENT_DRIVER)
    ms__cu_why_set("cuInit: the CUDA driver is too old (CUDA_ERROR_INSUFFICIENT_DRIVER)");
  else if (r != MS__CU_SUCCESS)
    ms__cu_why_set("cuInit failed: %s (%d)", ms__cu_name(r), r);
  else
    ms__cu_rc = 0;
  /* The library stays loaded: its functions are in ms__cu. */
}

long ms__cu_env_long(const char *name, long fallback, long lo, long hi) {
  const char *s = getenv(name);
  if (s == NULL || *s == '\0')
    return fallback;
  char *end = NULL;
  long v = strtol(s, &end, 10);
  return end != NULL && *end == '\0' && v >= lo && v <= hi ? v : fallback;
}

int ms__cu_load(void) {
  pthread_once(&ms__cu_once, ms__cu_load_once);
  if (ms__cu_rc != 0)
    return ms__fail(MEMSLEEP_EUNAVAIL, "%s", ms__cu_why);
  return 0;
}
