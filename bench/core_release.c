/*
 * core_release.c - the memory core's own release/resume of a given tag
 * layout: the baseline of bench/control_plane.py.
 *
 * Allocates, for each --tag NAME:ALLOCATIONS:BYTES:FLAGS, BYTES bytes in
 * ALLOCATIONS host allocations under NAME (FLAGS: backup, zero or none),
 * fills them, then times CYCLES rounds of memsleep_release_flags() of every
 * tag and memsleep_resume() of every tag - the same calls the server's
 * control plane makes, without HTTP, drain or bookkeeping. It checks the
 * contents of the backup allocations after the last resume, so a fast but
 * wrong release cannot pass. The last line is machine-readable:
 *
 *   core: release_ms=MEDIAN resume_ms=MEDIAN bytes=TOTAL
 *
 *   bench_core_release --tag NAME:N:BYTES:FLAGS [--tag ...] [--cycles N] [--no-backup]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memsleep/memsleep.h"

#define TAGS_MAX 8

typedef struct tag_layout {
  char name[MEMSLEEP_TAG_MAX + 1]; /* memsleep tag */
  size_t allocations;              /* how many allocations */
  size_t bytes;                    /* bytes over all of them */
  unsigned flags;                  /* MEMSLEEP_BACKUP, MEMSLEEP_ZERO or 0 */
  void **ptrs;                     /* the allocations */
  size_t *sizes;                   /* their sizes */
} tag_layout;

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_core_release: %s failed: %s (%s)\n", what, memsleep_strerror(rc),
          memsleep_last_error());
  exit(1);
}

static int parse_tag(const char *arg, tag_layout *t) {
  char flags[16];
  unsigned long long n, bytes;
  if (sscanf(arg, "%63[^:]:%llu:%llu:%15s", t->name, &n, &bytes, flags) != 4 || n == 0 || bytes < n)
    return -1;
  t->allocations = (size_t)n;
  t->bytes = (size_t)bytes;
  if (strcmp(flags, "backup") == 0)
    t->flags = MEMSLEEP_BACKUP;
  else if (strcmp(flags, "zero") == 0)
    t->flags = MEMSLEEP_ZERO;
  else if (strcmp(flags, "none") == 0)
    t->flags = 0;
  else
    return -1;
  return 0;
}

/* A pattern that encodes each word's place, so a lost or moved page shows. */
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

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv) {
  tag_layout tags[TAGS_MAX];
  size_t ntags = 0;
  int cycles = 10;
  unsigned release_flags = 0;
  memset(tags, 0, sizeof tags);
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--tag") == 0 && i + 1 < argc && ntags < TAGS_MAX) {
      if (parse_tag(argv[++i], &tags[ntags]) != 0) {
        fprintf(stderr, "bench_core_release: bad --tag \"%s\" (NAME:ALLOCATIONS:BYTES:FLAGS)\n",
                argv[i]);
        return 2;
      }
      ntags++;
    } else if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc) {
      cycles = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--no-backup") == 0) {
      release_flags = MEMSLEEP_RELEASE_NO_BACKUP;
    } else {
      fprintf(stderr,
              "usage: %s --tag NAME:ALLOCATIONS:BYTES:FLAGS [--tag ...] [--cycles N] "
              "[--no-backup]\n",
              argv[0]);
      return 2;
    }
  }
  if (ntags == 0 || cycles < 1) {
    fprintf(stderr, "bench_core_release: at least one --tag and --cycles >= 1 needed\n");
    return 2;
  }

  const char *names[TAGS_MAX];
  size_t total = 0;
  for (size_t t = 0; t < ntags; t++) {
    tag_layout *l = &tags[t];
    names[t] = l->name;
    l->ptrs = calloc(l->allocations, sizeof *l->ptrs);
    l->sizes = calloc(l->allocations, sizeof *l->sizes);
    if (!l->ptrs || !l->sizes)
      return 1;
    size_t each = l->bytes / l->allocations / 8 * 8;
    for (size_t i = 0; i < l->allocations; i++) {
      size_t size = i + 1 < l->allocations ? each : (l->bytes - each * i) / 8 * 8;
      if (size < 8)
        size = 8;
      int rc = memsleep_alloc(&l->ptrs[i], size, MEMSLEEP_HOST, l->name, l->flags);
      if (rc != 0)
        die("memsleep_alloc", rc);
      l->sizes[i] = size;
      fill(l->ptrs[i], size, (uint64_t)(t * 1000003u + i));
      total += size;
    }
    printf("tag %-10s %6zu allocations %12zu bytes  %s\n", l->name, l->allocations, l->bytes,
           l->flags == MEMSLEEP_BACKUP ? "backup"
           : l->flags == MEMSLEEP_ZERO ? "zero"
                                       : "none");
  }

  double *rel = calloc((size_t)cycles, sizeof *rel);
  double *res = calloc((size_t)cycles, sizeof *res);
  if (!rel || !res)
    return 1;
  for (int c = 0; c < cycles; c++) {
    double t0 = now_ms();
    int rc = memsleep_release_flags(names, ntags, release_flags);
    double t1 = now_ms();
    if (rc != 0)
      die("memsleep_release_flags", rc);
    rc = memsleep_resume(names, ntags);
    double t2 = now_ms();
    if (rc != 0)
      die("memsleep_resume", rc);
    rel[c] = t1 - t0;
    res[c] = t2 - t1;
    printf("cycle %2d: release %8.3f ms  resume %8.3f ms\n", c + 1, rel[c], res[c]);
  }
  if (release_flags == 0)
    for (size_t t = 0; t < ntags; t++)
      for (size_t i = 0; tags[t].flags == MEMSLEEP_BACKUP && i < tags[t].allocations; i++)
        if (!check(tags[t].ptrs[i], tags[t].sizes[i], (uint64_t)(t * 1000003u + i))) {
          fprintf(stderr, "bench_core_release: allocation %zu of %s lost its contents\n", i,
                  tags[t].name);
          return 1;
        }
  printf("core: release_ms=%.3f resume_ms=%.3f bytes=%zu\n", median(rel, cycles),
         median(res, cycles), total);
  for (size_t t = 0; t < ntags; t++) {
    for (size_t i = 0; i < tags[t].allocations; i++)
      memsleep_free(tags[t].ptrs[i]);
    free(tags[t].ptrs);
    free(tags[t].sizes);
  }
  free(rel);
  free(res);
  return 0;
}
