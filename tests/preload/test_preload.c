/*
 * test_preload.c - libmemsleep_preload.so routes cudaMalloc/cudaFree.
 *
 * Runs with LD_PRELOAD=libmemsleep_preload.so over a fake libcudart (see
 * fake_cudart.c: host memory, device MEMSLEEP_HOST). Proves: outside a
 * region cudaMalloc and cudaFree reach the real runtime and memsleep owns
 * nothing; inside a region the allocation is memsleep's, with the region's
 * tag and policy, survives a release/resume, and cudaFree frees it through
 * memsleep; nested regions use the innermost; the pluggable-allocator entry
 * points do the same and refuse to allocate outside a region; and
 * MEMSLEEP_DEFAULT_REGION (argv[1] says what it was set to: "none",
 * "kv:zero" or "bad") puts the whole process in a region, or is refused
 * with a warning and ignored.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "memsleep/memsleep.h"

int cudaMalloc(void **ptr, size_t size);
int cudaFree(void *ptr);
extern long fake_cudart_mallocs;
extern long fake_cudart_frees;

static int failures;
#define CHECK(cond)                                                                                \
  do {                                                                                             \
    if (!(cond)) {                                                                                 \
      fprintf(stderr, "%s:%d: CHECK(%s) failed (last error: %s)\n", __FILE__, __LINE__, #cond,     \
              memsleep_last_error());                                                              \
      failures++;                                                                                  \
    }                                                                                              \
  } while (0)

static void test_outside_a_region_is_the_real_runtime(void) {
  long m = fake_cudart_mallocs, f = fake_cudart_frees;
  void *p = NULL;
  CHECK(cudaMalloc(&p, 4096) == 0);
  CHECK(p != NULL && !memsleep_owns(p));
  CHECK(fake_cudart_mallocs == m + 1);
  CHECK(cudaFree(p) == 0);
  CHECK(fake_cudart_frees == f + 1);
}

static void test_inside_a_region_is_memsleep(void) {
  long m = fake_cudart_mallocs, f = fake_cudart_frees;
  CHECK(memsleep_region_push("pl-weights", MEMSLEEP_BACKUP) == 0);
  void *w = NULL;
  CHECK(cudaMalloc(&w, 100000) == 0);
  CHECK(memsleep_region_push("pl-kv", MEMSLEEP_ZERO) == 0);
  void *kv = NULL;
  CHECK(cudaMalloc(&kv, 5000) == 0);
  CHECK(memsleep_region_pop() == 0);
  CHECK(memsleep_region_pop() == 0);
  CHECK(fake_cudart_mallocs == m); /* neither reached the runtime */
  CHECK(memsleep_owns(w) && memsleep_owns(kv));
  memsleep_stats_t s;
  CHECK(memsleep_stats("pl-weights", &s) == 0 && s.allocations == 1);
  CHECK(memsleep_stats("pl-kv", &s) == 0 && s.allocations == 1);
  memset(w, 0x3c, 100000);
  memset(kv, 0x7f, 5000);
  CHECK(memsleep_release(NULL, 0) == 0);
  CHECK(memsleep_resume(NULL, 0) == 0);
  CHECK(((unsigned char *)w)[0] == 0x3c && ((unsigned char *)w)[99999] == 0x3c);
  CHECK(((unsigned char *)kv)[0] == 0 && ((unsigned char *)kv)[4999] == 0);
  CHECK(cudaFree(w) == 0 && cudaFree(kv) == 0);
  CHECK(fake_cudart_frees == f);
  CHECK(!memsleep_owns(w));
  CHECK(memsleep_stats(NULL, &s) == 0 && s.allocations == 0 && s.reserved_bytes == 0);
}

static void test_pluggable_allocator_entry_points(void) {
  void *(*tmalloc)(ssize_t, int, void *) =
      (void *(*)(ssize_t, int, void *))dlsym(RTLD_DEFAULT, "memsleep_torch_malloc");
  void (*tfree)(void *, ssize_t, int, void *) =
      (void (*)(void *, ssize_t, int, void *))dlsym(RTLD_DEFAULT, "memsleep_torch_free");
  CHECK(tmalloc != NULL && tfree != NULL);
  if (tmalloc == NULL || tfree == NULL)
    return;
  /* Outside a region: refused, unless a default region applies. */
  void *q = tmalloc(4096, MEMSLEEP_HOST, NULL);
  if (getenv("MEMSLEEP_DEFAULT_REGION") != NULL &&
      strcmp(getenv("MEMSLEEP_DEFAULT_REGION"), "kv:zero") == 0) {
    CHECK(q != NULL && memsleep_owns(q));
    tfree(q, 4096, MEMSLEEP_HOST, NULL);
  } else {
    CHECK(q == NULL);
  }
  CHECK(memsleep_region_push("pl-torch", MEMSLEEP_BACKUP) == 0);
  void *p = tmalloc(8192, MEMSLEEP_HOST, NULL);
  CHECK(memsleep_region_pop() == 0);
  CHECK(p != NULL && memsleep_owns(p));
  memsleep_stats_t s;
  CHECK(memsleep_stats("pl-torch", &s) == 0 && s.allocations == 1);
  tfree(p, 8192, MEMSLEEP_HOST, NULL);
  CHECK(!memsleep_owns(p));
}

static void test_default_region(const char *mode) {
  long m = fake_cudart_mallocs;
  void *p = NULL;
  CHECK(cudaMalloc(&p, 3000) == 0);
  if (strcmp(mode, "kv:zero") == 0) {
    CHECK(memsleep_owns(p));
    CHECK(fake_cudart_mallocs == m);
    memsleep_stats_t s;
    CHECK(memsleep_stats("kv", &s) == 0 && s.allocations == 1);
    memset(p, 1, 3000);
    const char *kv = "kv";
    CHECK(memsleep_release(&kv, 1) == 0 && memsleep_resume(&kv, 1) == 0);
    CHECK(((unsigned char *)p)[0] == 0 && ((unsigned char *)p)[2999] == 0);
  } else {
    CHECK(!memsleep_owns(p)); /* "none" and "bad": no default region */
    CHECK(fake_cudart_mallocs == m + 1);
  }
  CHECK(cudaFree(p) == 0);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s none|kv:zero|bad   (run with LD_PRELOAD=libmemsleep_preload.so)\n",
            argv[0]);
    return 2;
  }
  if (dlsym(RTLD_DEFAULT, "memsleep_torch_malloc") == NULL) {
    fprintf(stderr, "libmemsleep_preload.so is not preloaded\n");
    return 1;
  }
  if (strcmp(argv[1], "none") == 0) {
    test_outside_a_region_is_the_real_runtime();
    test_inside_a_region_is_memsleep();
  }
  test_pluggable_allocator_entry_points();
  test_default_region(argv[1]);
  printf("%s: %d failure(s)\n", argv[1], failures);
  return failures ? 1 : 0;
}
