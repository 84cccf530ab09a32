/*
 * host_sleep.c - benchmark of release/resume on the host backend.
 *
 * Allocates GIB GiB in ALLOCS allocations (BACKUP), fills them, and in the
 * same run measures:
 *   - the baseline: a plain memcpy of the same bytes, allocation by
 *     allocation, between buffers whose pages are already there;
 *   - release with backup and resume, cycle by cycle, as GB/s and as a
 *     ratio to that baseline (the first cycle pays for first-time costs);
 *   - release and resume latency of the same bytes without backup.
 * It checks every allocation's contents after the last resume, so a fast
 * but wrong release cannot pass.
 *
 *   bench_host_sleep [--gib N] [--allocs N] [--cycles N] [--copy]
 *
 * --copy sets MEMSLEEP_HOST_MOVE=0: backups are copied into host buffers
 * (the path the CUDA backend takes) instead of moving pages.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "memsleep/memsleep.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_host_sleep: %s failed: %s (%s)\n", what, memsleep_strerror(rc),
          memsleep_last_error());
  exit(1);
}

/* A cheap position-dependent pattern: each 8-byte word encodes its index and
 * its allocation, so a misplaced or lost page is caught. */
static void fill(uint64_t *p, size_t bytes, uint64_t salt) {
  for (size_t i = 0; i < bytes / 8; i++)
    p[i] = (i * 0x9e3779b97f4a7c15ULL) ^ salt;
}

static int check(const uint64_t *p, size_t bytes, uint64_t salt) {
  for (size_t i = 0; i < bytes / 8; i++)
    if (p[i] != ((i * 0x9e3779b97f4a7c15ULL) ^ salt))
      return 0;
  return 1;
}

int main(int argc, char **argv) {
  double gib = 4.0;
  size_t nallocs = 1000;
  int cycles = 4;
  int copy = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--gib") == 0 && i + 1 < argc)
      gib = atof(argv[++i]);
    else if (strcmp(argv[i], "--allocs") == 0 && i + 1 < argc)
      nallocs = (size_t)strtoul(argv[++i], NULL, 10);
    else if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc)
      cycles = atoi(argv[++i]);
    else if (strcmp(argv[i], "--copy") == 0)
      copy = 1;
    else {
      fprintf(stderr, "usage: %s [--gib N] [--allocs N] [--cycles N] [--copy]\n", argv[0]);
      return 2;
    }
  }
  if (gib <= 0 || nallocs == 0 || cycles < 1) {
    fprintf(stderr, "bench_host_sleep: --gib, --allocs and --cycles must be positive\n");
    return 2;
  }
  if (copy)
    setenv("MEMSLEEP_HOST_MOVE", "0", 1);
  size_t total = (size_t)(gib * (double)(1ull << 30));
  size_t each = total / nallocs / 8 * 8;
  total = each * nallocs;
  double gb = (double)total / 1e9;
  printf("host sleep/wake: %.2f GiB in %zu allocations of %zu bytes, backups %s\n",
         (double)total / (double)(1ull << 30), nallocs, each,
         copy ? "copied (MEMSLEEP_HOST_MOVE=0)" : "moved (mremap)");

  void **ptrs = calloc(nallocs, sizeof *ptrs);
  if (ptrs == NULL)
    return 1;
  fprintf(stderr, "allocating and filling...\n");
  for (size_t i = 0; i < nallocs; i++) {
    int rc = memsleep_alloc(&ptrs[i], each, MEMSLEEP_HOST, "bench_weights", MEMSLEEP_BACKUP);
    if (rc != 0)
      die("memsleep_alloc", rc);
    fill(ptrs[i], each, i);
  }

  /* Baseline: memcpy of the same bytes into pages that already exist (the
   * destination is written once first), best of three. */
  char *dst =
      mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (dst == MAP_FAILED) {
    perror("mmap baseline");
    return 1;
  }
  double best = 1e30;
  for (int r = 0; r < 3; r++) {
    double t0 = now_s();
    for (size_t i = 0; i < nallocs; i++)
      memcpy(dst + i * each, ptrs[i], each);
    double dt = now_s() - t0;
    if (dt < best)
      best = dt;
  }
  munmap(dst, total);
  double base_gbs = gb / best;
  printf("baseline memcpy: %8.1f ms  %7.2f GB/s\n", best * 1e3, base_gbs);

  const char *tags[] = {"bench_weights"};
  printf("%-6s %12s %10s %8s %12s %10s %8s\n", "cycle", "release ms", "GB/s", "ratio", "resume ms",
         "GB/s", "ratio");
  for (int c = 1; c <= cycles; c++) {
    double t0 = now_s();
    int rc = memsleep_release(tags, 1);
    double t1 = now_s();
    if (rc != 0)
      die("memsleep_release", rc);
    rc = memsleep_resume(tags, 1);
    double t2 = now_s();
    if (rc != 0)
      die("memsleep_resume", rc);
    double rel = t1 - t0, res = t2 - t1;
    printf("%-6d %12.1f %10.2f %8.2f %12.1f %10.2f %8.2f\n", c, rel * 1e3, gb / rel,
           (gb / rel) / base_gbs, res * 1e3, gb / res, (gb / res) / base_gbs);
  }
  for (size_t i = 0; i < nallocs; i++)
    if (!check(ptrs[i], each, i)) {
      fprintf(stderr, "bench_host_sleep: allocation %zu lost its contents\n", i);
      return 1;
    }
  printf("contents after %d cycles: intact\n", cycles);
  for (size_t i = 0; i < nallocs; i++)
    memsleep_free(ptrs[i]);

  /* The same bytes without backup: latency only. */
  for (size_t i = 0; i < nallocs; i++) {
    int rc = memsleep_alloc(&ptrs[i], each, MEMSLEEP_HOST, "bench_kv", 0);
    if (rc != 0)
      die("memsleep_alloc", rc);
  }
  const char *kv[] = {"bench_kv"};
  for (int c = 1; c <= 2; c++) {
    double t0 = now_s();
    int rc = memsleep_release(kv, 1);
    double t1 = now_s();
    if (rc != 0)
      die("memsleep_release", rc);
    rc = memsleep_resume(kv, 1);
    double t2 = now_s();
    if (rc != 0)
      die("memsleep_resume", rc);
    printf("no backup, cycle %d: release %.1f ms, resume %.1f ms (resume maps and populates "
           "fresh pages)\n",
           c, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
  }
  for (size_t i = 0; i < nallocs; i++)
    memsleep_free(ptrs[i]);
  free(ptrs);
  memsleep_stats_t s;
  memsleep_stats(NULL, &s);
  printf("after freeing everything: reserved %zu, resident %zu, backup %zu bytes\n",
         s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  return s.reserved_bytes || s.resident_bytes || s.backup_bytes ? 1 : 0;
}
