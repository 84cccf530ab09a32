/*
 * gpu_test.h - helpers shared by the GPU test programs (tests/gpu/test_cuda_*.c).
 *
 * Each GPU test is a plain C11 program run by tests/gpu/run.sh: it exits 0
 * when every check passed, 1 when one failed and 77 when it cannot run here
 * (no CUDA device), and prints a one-line verdict last. A failed check
 * prints where it failed, what it saw and memsleep_last_error().
 *
 * Contents are checked through cudaMemcpy against a counter-based pattern:
 * the byte at offset o of a range written with seed s is a function of (s, o)
 * alone, so any part of a range can be written or compared on its own, and a
 * page that moved to the wrong place or the wrong allocation is caught.
 *
 * Device memory is only read or written after the call that made it resident
 * returned 0: touching released memory faults and leaves the CUDA context
 * unusable for the rest of the program.
 *
 * The GT_* check macros end the enclosing function through "goto out" on
 * failure, so every function that uses them has an out: label that frees
 * what it allocated (memsleep_free works in any state).
 */
#ifndef MEMSLEEP_TESTS_GPU_TEST_H
#define MEMSLEEP_TESTS_GPU_TEST_H

#include <cuda_runtime.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memsleep/memsleep.h"

#define GT_SKIP 77
#define GT_MIB  ((size_t)1 << 20)
#define GT_GIB  ((size_t)1 << 30)
/* Slack allowed between device memory figures that should be equal: the
 * driver hands memory out in 2 MiB pages. */
#define GT_SLACK (2 * GT_MIB)
/* Largest piece of a range staged through host memory at once. */
#define GT_STAGE_BYTES (64 * GT_MIB)

static const char *gt_prog = "gpu test"; /* program name, for messages */
static int gt_failed;                    /* checks failed */
static int gt_passed;                    /* checks passed */

__attribute__((format(printf, 3, 4))) static inline void gt_fail_at(const char *file, int line,
                                                                    const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s:%d: FAIL: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  fflush(stderr);
  gt_failed++;
}

/* What a CUDA error means for the rest of the run. */
static inline const char *gt_cuda_hint(cudaError_t e) {
  if (e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure)
    return " (the CUDA context is now unusable: memory was touched while released or never "
           "mapped; every later check will fail too)";
  if (e == cudaErrorMemoryAllocation)
    return " (out of device memory: is another process using this GPU?)";
  return "";
}

/* Passes when cond holds; otherwise prints the message and leaves. */
#define GT_CHECK(cond, ...)                                                                        \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      gt_fail_at(__FILE__, __LINE__, __VA_ARGS__);                                                 \
      goto out;                                                                                    \
    }                                                                                              \
    gt_passed++;                                                                                   \
  } while (0)

/* A memsleep call that must return code (0 for GT_OK). */
#define GT_EXPECT(call, code)                                                                      \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_ != (code)) {                                                                           \
      gt_fail_at(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s); last error: %s",      \
                 #call, rc_, memsleep_strerror(rc_), (code), memsleep_strerror(code),              \
                 memsleep_last_error());                                                           \
      goto out;                                                                                    \
    }                                                                                              \
    gt_passed++;                                                                                   \
  } while (0)
#define GT_OK(call) GT_EXPECT(call, 0)

/* A CUDA runtime call that must succeed. */
#define GT_CUDA(call)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      gt_fail_at(__FILE__, __LINE__, "%s: %s: %s%s", #call, cudaGetErrorName(e_),                  \
                 cudaGetErrorString(e_), gt_cuda_hint(e_));                                        \
      goto out;                                                                                    \
    }                                                                                              \
  } while (0)

static inline double gt_now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static inline double gt_mib(size_t bytes) {
  return (double)bytes / (double)GT_MIB;
}

/* Signed difference a - b of two byte counts, in MiB. */
static inline double gt_diff_mib(size_t a, size_t b) {
  return a >= b ? gt_mib(a - b) : -gt_mib(b - a);
}

/*
 * Starts a test on device dev: line-buffered output (the runner pipes it),
 * the device selected and its primary context created. Returns 0, GT_SKIP
 * when there is no CUDA device or no driver (with a message), or 1.
 */
static inline int gt_begin(const char *prog, int dev) {
  gt_prog = prog;
  setvbuf(stdout, NULL, _IOLBF, 0);
  int n = 0, drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0) ||
      (e == cudaErrorInsufficientDriver && drv == 0)) {
    printf("%s: SKIP: no CUDA device here (%s)\n", prog,
           e == cudaSuccess ? "0 devices" : cudaGetErrorName(e));
    return GT_SKIP;
  }
  if (e != cudaSuccess) {
    printf("%s: FAIL: cudaGetDeviceCount: %s: %s (driver supports CUDA %d.%d, runtime is %d.%d)\n",
           prog, cudaGetErrorName(e), cudaGetErrorString(e), drv / 1000, drv % 1000 / 10, rt / 1000,
           rt % 1000 / 10);
    return 1;
  }
  if (dev >= n) {
    printf("%s: SKIP: needs device %d, this machine has %d\n", prog, dev, n);
    return GT_SKIP;
  }
  struct cudaDeviceProp prop;
  e = cudaSetDevice(dev);
  if (e == cudaSuccess)
    e = cudaFree(NULL); /* creates the primary context now */
  if (e == cudaSuccess)
    e = cudaGetDeviceProperties(&prop, dev);
  if (e != cudaSuccess) {
    printf("%s: FAIL: starting CUDA on device %d: %s: %s\n", prog, dev, cudaGetErrorName(e),
           cudaGetErrorString(e));
    return 1;
  }
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  printf("%s: device %d of %d: %s, %.0f MiB total, %.0f MiB free; driver CUDA %d.%d, runtime "
         "%d.%d\n",
         prog, dev, n, prop.name, gt_mib(total_b), gt_mib(free_b), drv / 1000, drv % 1000 / 10,
         rt / 1000, rt % 1000 / 10);
  return 0;
}

/* Prints the verdict line and returns the exit status. */
static inline int gt_end(void) {
  if (gt_failed == 0) {
    printf("%s: PASS (%d checks)\n", gt_prog, gt_passed);
    return 0;
  }
  printf("%s: FAIL (%d of %d checks failed; details above)\n", gt_prog, gt_failed,
         gt_failed + gt_passed);
  return 1;
}

/* Free bytes of the current device, or 0 (with a message) on error. */
static inline size_t gt_free_bytes(void) {
  size_t free_b = 0, total_b = 0;
  cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  if (e != cudaSuccess) {
    fprintf(stderr, "%s: cudaMemGetInfo: %s\n", gt_prog, cudaGetErrorName(e));
    return 0;
  }
  return free_b;
}

/* One 8-byte word of the pattern of seed (a bijective mix of seed and index). */
static inline uint64_t gt_word(uint64_t seed, uint64_t index) {
  uint64_t z = seed * 0xd1342543de82ef95ULL + index * 0x9e3779b97f4a7c15ULL + 0x632be59bd9b4e019ULL;
  z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ULL;
  z = (z ^ (z >> 32)) * 0xd6e8feb86659fd93ULL;
  return z ^ (z >> 32);
}

/* Fills buf with bytes [off, off + n) of the pattern of seed. */
static inline void gt_pattern(unsigned char *buf, size_t off, size_t n, uint64_t seed) {
  size_t i = 0;
  while (i < n) {
    size_t o = off + i;
    uint64_t w = gt_word(seed, o / 8);
    size_t skip = o % 8;
    size_t len = 8 - skip < n - i ? 8 - skip : n - i;
    memcpy(buf + i, (unsigned char *)&w + skip, len);
    i += len;
  }
}

/* Writes bytes [off, off + n) of the pattern of seed at dev + off. */
static inline cudaError_t gt_dev_write(void *dev, size_t off, size_t n, uint64_t seed) {
  size_t stage = n < GT_STAGE_BYTES ? n : GT_STAGE_BYTES;
  unsigned char *buf = malloc(stage ? stage : 1);
  if (buf == NULL)
    return cudaErrorMemoryAllocation;
  cudaError_t e = cudaSuccess;
  for (size_t done = 0; done < n && e == cudaSuccess; done += stage) {
    size_t len = n - done < stage ? n - done : stage;
    gt_pattern(buf, off + done, len, seed);
    e = cudaMemcpy((char *)dev + off + done, buf, len, cudaMemcpyHostToDevice);
  }
  free(buf);
  return e;
}

/*
 * Compares bytes [off, off + n) at dev + off with the pattern of seed, or,
 * when seed is GT_BYTE(v), with the byte v repeated. Sets *bad to the offset
 * of the first byte that differs, or SIZE_MAX when all match.
 */
#define GT_BYTE(v) (0xb7e0000000000000ULL | (uint64_t)(unsigned char)(v))
static inline cudaError_t gt_dev_check(const void *dev, size_t off, size_t n, uint64_t seed,
                                       size_t *bad) {
  *bad = SIZE_MAX;
  size_t stage = n < GT_STAGE_BYTES ? n : GT_STAGE_BYTES;
  unsigned char *got = malloc(stage ? stage : 1);
  unsigned char *want = malloc(stage ? stage : 1);
  cudaError_t e = got != NULL && want != NULL ? cudaSuccess : cudaErrorMemoryAllocation;
  int is_byte = (seed >> 8) == (GT_BYTE(0) >> 8);
  if (is_byte && want != NULL)
    memset(want, (int)(seed & 0xff), stage);
  for (size_t done = 0; done < n && e == cudaSuccess && *bad == SIZE_MAX; done += stage) {
    size_t len = n - done < stage ? n - done : stage;
    e = cudaMemcpy(got, (const char *)dev + off + done, len, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess)
      break;
    if (!is_byte)
      gt_pattern(want, off + done, len, seed);
    if (memcmp(got, want, len) != 0)
      for (size_t i = 0; i < len; i++)
        if (got[i] != want[i]) {
          *bad = off + done + i;
          fprintf(stderr, "%s: %p + %zu: read 0x%02x, expected 0x%02x\n", gt_prog, dev, *bad,
                  got[i], want[i]);
          break;
        }
  }
  free(got);
  free(want);
  return e;
}

/* GT_CHECK that bytes [off, off + n) at dev hold seed's pattern (or GT_BYTE). */
#define GT_CHECK_CONTENTS(dev, off, n, seed, what)                                                 \
  do {                                                                                             \
    size_t bad_ = SIZE_MAX;                                                                        \
    GT_CUDA(gt_dev_check((dev), (off), (n), (seed), &bad_));                                       \
    GT_CHECK(bad_ == SIZE_MAX, "%s: contents differ at byte %zu of %zu", (what), bad_,             \
             (size_t)(n));                                                                         \
  } while (0)

/* Stats of tag (NULL: all), or all zeros with a message on error. */
static inline memsleep_stats_t gt_stats(const char *tag) {
  memsleep_stats_t s;
  memset(&s, 0, sizeof s);
  int rc = memsleep_stats(tag, &s);
  if (rc != 0)
    fprintf(stderr, "%s: memsleep_stats(%s): %s: %s\n", gt_prog, tag ? tag : "NULL",
            memsleep_strerror(rc), memsleep_last_error());
  return s;
}

/* Backend-measured figures of tag (NULL: all); zeros with a message on error. */
static inline memsleep_stats_t gt_measure(const char *tag) {
  memsleep_stats_t s;
  memset(&s, 0, sizeof s);
  int rc = memsleep_measure(tag, &s);
  if (rc != 0)
    fprintf(stderr, "%s: memsleep_measure(%s): %s: %s\n", gt_prog, tag ? tag : "NULL",
            memsleep_strerror(rc), memsleep_last_error());
  return s;
}

static inline void gt_print_stats(const char *label, memsleep_stats_t s) {
  printf("  %-34s allocations %zu, reserved %.1f MiB, resident %.1f MiB, backup %.1f MiB\n", label,
         s.allocations, gt_mib(s.reserved_bytes), gt_mib(s.resident_bytes), gt_mib(s.backup_bytes));
}

/* Frees every non-NULL pointer of ptrs[0..n) and sets it to NULL. A free
 * that fails is a failed check (memsleep_free works in any state). Returns
 * how many failed. */
static inline int gt_free_all(void **ptrs, size_t n) {
  int failed = 0;
  for (size_t i = 0; i < n; i++) {
    if (ptrs[i] == NULL)
      continue;
    int rc = memsleep_free(ptrs[i]);
    if (rc != 0) {
      fprintf(stderr, "%s: memsleep_free(%p): %s: %s\n", gt_prog, ptrs[i], memsleep_strerror(rc),
              memsleep_last_error());
      failed++;
      gt_failed++;
    }
    ptrs[i] = NULL;
  }
  return failed;
}

#endif /* MEMSLEEP_TESTS_GPU_TEST_H */
