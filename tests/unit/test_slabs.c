/*
 * test_slabs.c - small allocations share slabs, and every rule still holds.
 *
 * A driver charges per mapping, so small allocations of one tag, policy
 * and device are carved out of slabs (MEMSLEEP_SLAB_BYTES; the CUDA backend
 * uses slabs by default, the host backend only when asked, as here). This
 * proves: a release costs per slab, not per allocation; blocks never
 * overlap; policies and large allocations do not share a slab; freed space
 * is reused and an emptied slab goes back to the backend; allocating into an
 * asleep tag is refused even where a slab has room; contents survive release
 * and resume; a fault at any step of a release or resume of slabs is undone
 * with nothing lost; and threads allocating and freeing in one tag at once
 * get distinct, intact blocks.
 */
#include <pthread.h>

#include "core/fault.h"
#include "helpers.h"

#define SLAB ((size_t)1 << 20) /* MEMSLEEP_SLAB_BYTES for this test */

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* No two of the n blocks (each size bytes) overlap. */
static void assert_disjoint(void **p, size_t n, size_t size) {
  void **s = malloc(n * sizeof *s);
  assert_non_null(s);
  memcpy(s, p, n * sizeof *s);
  qsort(s, n, sizeof *s, cmp_ptr);
  for (size_t i = 1; i < n; i++)
    if ((uintptr_t)s[i - 1] + size > (uintptr_t)s[i])
      fail_msg("blocks %p and %p overlap (%zu bytes each)", s[i - 1], s[i], size);
  free(s);
}

static void test_a_release_costs_per_slab_not_per_allocation(void **state) {
  (void)state;
  enum { N = 1000, SIZE = 1000 };
  void *p[N];
  for (size_t i = 0; i < N; i++) {
    p[i] = test_alloc(SIZE, "slab-many", MEMSLEEP_BACKUP);
    test_fill_random(p[i], SIZE, i);
  }
  assert_disjoint(p, N, SIZE);
  memsleep_stats_t s = test_stats("slab-many");
  assert_int_equal(s.allocations, N);
  assert_int_equal(s.reserved_bytes, SLAB); /* 1000 blocks of 1 KiB: one slab */

  ms__fault_arm(0, 0);
  assert_ok(test_release1("slab-many"));
  long ops = ms__fault_count();
  if (ops > 8)
    fail_msg("releasing %d small allocations took %ld backend operations; one slab needs a few", N,
             ops);
  assert_int_equal(test_stats("slab-many").resident_bytes, 0);
  assert_ok(test_resume1("slab-many"));
  for (size_t i = 0; i < N; i++)
    assert_random(p[i], SIZE, i);
  for (size_t i = 0; i < N; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

static void test_policies_and_large_allocations_do_not_share(void **state) {
  (void)state;
  void *kept = test_alloc(4096, "slab-mixed", MEMSLEEP_BACKUP);
  void *zeroed = test_alloc(4096, "slab-mixed", MEMSLEEP_ZERO);
  void *large = test_alloc(SLAB / 2, "slab-mixed", MEMSLEEP_BACKUP); /* > SLAB/4: own mapping */
  memsleep_stats_t s = test_stats("slab-mixed");
  assert_int_equal(s.allocations, 3);
  assert_int_equal(s.reserved_bytes, 2 * SLAB + test_pages_of(SLAB / 2));
  test_fill_random(kept, 4096, 1);
  memset(zeroed, 0x77, 4096);
  test_fill_random(large, SLAB / 2, 2);
  assert_ok(test_release1("slab-mixed"));
  assert_ok(test_resume1("slab-mixed"));
  assert_random(kept, 4096, 1);
  assert_zeros(zeroed, 4096);
  assert_random(large, SLAB / 2, 2);
  assert_ok(memsleep_free(kept));
  assert_ok(memsleep_free(zeroed));
  assert_ok(memsleep_free(large));
  assert_stats_zero();
}

static void test_freed_space_is_reused_and_empty_slabs_go_back(void **state) {
  (void)state;
  void *p[8];
  for (size_t i = 0; i < 8; i++)
    p[i] = test_alloc(SLAB / 8, "slab-reuse", 0); /* exactly fills one slab */
  assert_int_equal(test_stats("slab-reuse").reserved_bytes, SLAB);
  assert_ok(memsleep_free(p[2]));
  assert_ok(memsleep_free(p[3]));
  /* Only the two freed neighbours, merged, can hold this. */
  void *q = test_alloc(SLAB / 4, "slab-reuse", 0);
  assert_int_equal(test_stats("slab-reuse").reserved_bytes, SLAB);
  assert_ptr_equal(q, p[2] < p[3] ? p[2] : p[3]);
  memset(q, 1, SLAB / 4);
  assert_ok(memsleep_free(q));
  for (size_t i = 0; i < 8; i++)
    if (i != 2 && i != 3)
      assert_ok(memsleep_free(p[i]));
  assert_stats_zero(); /* the emptied slab went back to the backend */
}

static void test_asleep_tag_refuses_even_with_room(void **state) {
  (void)state;
  void *p = test_alloc(100, "slab-asleep", MEMSLEEP_BACKUP);
  memcpy(p, "slab", 5);
  assert_ok(test_release1("slab-asleep"));
  void *q = NULL;
  assert_int_equal(memsleep_alloc(&q, 100, MEMSLEEP_HOST, "slab-asleep", MEMSLEEP_BACKUP),
                   MEMSLEEP_ESTATE);
  assert_null(q);
  assert_int_equal(test_stats("slab-asleep").allocations, 1);
  assert_ok(test_resume1("slab-asleep"));
  assert_string_equal(p, "slab");
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

static void test_free_while_asleep_keeps_the_others(void **state) {
  (void)state;
  enum { N = 64 };
  void *p[N];
  for (size_t i = 0; i < N; i++) {
    p[i] = test_alloc(3000, "slab-free-asleep", MEMSLEEP_BACKUP);
    test_fill_random(p[i], 3000, 100 + i);
  }
  assert_ok(test_release1("slab-free-asleep"));
  for (size_t i = 0; i < N; i += 2)
    assert_ok(memsleep_free(p[i]));
  assert_int_equal(test_stats("slab-free-asleep").allocations, N / 2);
  assert_ok(test_resume1("slab-free-asleep"));
  for (size_t i = 1; i < N; i += 2)
    assert_random(p[i], 3000, 100 + i);
  for (size_t i = 1; i < N; i += 2)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

/* Two slabs and a large allocation in each of two tags; a fault at every
 * operation of release + resume in turn. */
static void test_a_fault_at_any_step_loses_nothing(void **state) {
  (void)state;
  static const char *const tags[] = {"slab-fault-a", "slab-fault-b"};
  enum { N = 10 };
  void *p[2][N];
  size_t size[N];
  for (size_t t = 0; t < 2; t++)
    for (size_t i = 0; i < N; i++) {
      size[i] = i == 0 ? SLAB : SLAB / 5 + i; /* one large, nine small: two slabs */
      p[t][i] = test_alloc(size[i], tags[t], MEMSLEEP_BACKUP);
      test_fill_random(p[t][i], size[i], t * 100 + i);
    }
  ms__fault_arm(0, 0);
  assert_ok(memsleep_release(tags, 2));
  long nrelease = ms__fault_count();
  assert_ok(memsleep_resume(tags, 2));
  long ntotal = ms__fault_count();
  assert_true(nrelease > 0);

  for (long k = 1; k <= ntotal; k++) {
    ms__fault_arm(k, 0);
    int rc = memsleep_release(tags, 2);
    if (rc == 0) {
      rc = memsleep_resume(tags, 2);
      if (rc != 0) {
        assert_int_equal(memsleep_is_asleep(tags[0]), 1);
        ms__fault_arm(0, 0);
        assert_ok(memsleep_resume(tags, 2));
      }
    } else {
      assert_int_equal(memsleep_is_asleep(tags[0]), 0);
      assert_int_equal(memsleep_is_asleep(tags[1]), 0);
    }
    ms__fault_arm(0, 0);
    for (size_t t = 0; t < 2; t++)
      for (size_t i = 0; i < N; i++)
        assert_random(p[t][i], size[i], t * 100 + i);
  }
  for (size_t t = 0; t < 2; t++)
    for (size_t i = 0; i < N; i++)
      assert_ok(memsleep_free(p[t][i]));
  assert_stats_zero();
}

enum { THREADS = 4, ROUNDS = 400, LIVE = 16 };

static void *churn(void *arg) {
  size_t id = (size_t)(uintptr_t)arg;
  void *live[LIVE] = {0};
  size_t sizes[LIVE] = {0};
  uint64_t rng = id + 1;
  for (size_t r = 0; r < ROUNDS; r++) {
    size_t k = test_rand_next(&rng) % LIVE;
    if (live[k] != NULL) {
      if (test_check_random(live[k], sizes[k], id * 1000000 + (uintptr_t)live[k]) != SIZE_MAX)
        return (void *)"a block was overwritten by another";
      if (memsleep_free(live[k]) != 0)
        return (void *)"free failed";
    }
    sizes[k] = 1 + test_rand_next(&rng) % (SLAB / 8);
    if (memsleep_alloc(&live[k], sizes[k], MEMSLEEP_HOST, "slab-threads", MEMSLEEP_BACKUP) != 0)
      return (void *)"alloc failed";
    test_fill_random(live[k], sizes[k], id * 1000000 + (uintptr_t)live[k]);
  }
  for (size_t k = 0; k < LIVE; k++) {
    if (test_check_random(live[k], sizes[k], id * 1000000 + (uintptr_t)live[k]) != SIZE_MAX)
      return (void *)"a block was overwritten by another";
    if (memsleep_free(live[k]) != 0)
      return (void *)"free failed";
  }
  return NULL;
}

static void test_threads_share_slabs_safely(void **state) {
  (void)state;
  pthread_t th[THREADS];
  for (size_t i = 0; i < THREADS; i++)
    assert_int_equal(pthread_create(&th[i], NULL, churn, (void *)(uintptr_t)i), 0);
  for (size_t i = 0; i < THREADS; i++) {
    void *why = NULL;
    assert_int_equal(pthread_join(th[i], &why), 0);
    if (why != NULL)
      fail_msg("thread %zu: %s", i, (const char *)why);
  }
  assert_stats_zero();
}

int main(void) {
  setenv("MEMSLEEP_SLAB_BYTES", "1048576", 1);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_a_release_costs_per_slab_not_per_allocation),
      cmocka_unit_test(test_policies_and_large_allocations_do_not_share),
      cmocka_unit_test(test_freed_space_is_reused_and_empty_slabs_go_back),
      cmocka_unit_test(test_asleep_tag_refuses_even_with_room),
      cmocka_unit_test(test_free_while_asleep_keeps_the_others),
      cmocka_unit_test(test_a_fault_at_any_step_loses_nothing),
      cmocka_unit_test(test_threads_share_slabs_safely),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
