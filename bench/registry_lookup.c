/*
 * registry_lookup.c - benchmark of finding an allocation by its address.
 *
 * memsleep_free() and the cudaMalloc interposer find an allocation's record
 * by address on every call, so that lookup must not slow down as
 * allocations pile up. This measures the registry's hash table (the same
 * one the core uses) at 1,000 live entries - the baseline - and at 100,000
 * and 1,000,000, with page-aligned keys like real allocations, and prints
 * nanoseconds per lookup and the ratio to the baseline (1.0 = flat).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/ptrmap.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;
static uint64_t rng(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* ns per successful lookup in a table of n page-aligned keys. */
static double lookup_ns(size_t n, size_t lookups) {
  ms__ptrmap_t m = {0};
  uintptr_t *keys = malloc(n * sizeof *keys);
  if (keys == NULL)
    exit(1);
  uintptr_t base = (uintptr_t)1 << 40;
  for (size_t i = 0; i < n; i++) {
    keys[i] = base + (uintptr_t)i * 4096 * 3; /* spaced like small allocations */
    if (ms__ptrmap_put(&m, (void *)keys[i], &keys[i]) != 0)
      exit(1);
  }
  size_t found = 0;
  double t0 = now_s();
  for (size_t i = 0; i < lookups; i++)
    found += ms__ptrmap_get(&m, (void *)keys[rng() % n]) != NULL;
  double dt = now_s() - t0;
  if (found != lookups) {
    fprintf(stderr, "registry_lookup: %zu of %zu lookups failed\n", lookups - found, lookups);
    exit(1);
  }
  ms__ptrmap_destroy(&m);
  free(keys);
  return dt * 1e9 / (double)lookups;
}

int main(void) {
  const size_t lookups = 5000000;
  double base = lookup_ns(1000, lookups);
  printf("%-12s %10s %8s\n", "live allocs", "ns/lookup", "ratio");
  printf("%-12d %10.1f %8.2f\n", 1000, base, 1.0);
  size_t sizes[] = {100000, 1000000};
  for (size_t i = 0; i < 2; i++) {
    double ns = lookup_ns(sizes[i], lookups);
    printf("%-12zu %10.1f %8.2f\n", sizes[i], ns, ns / base);
  }
  return 0;
}
