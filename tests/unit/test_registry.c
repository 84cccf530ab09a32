/*
 * test_registry.c - many live allocations, and the map that finds them.
 *
 * Proves that 100,000 live small allocations in a few tags each get their
 * own address (no two overlap), each can be written, each is found by
 * memsleep_free in any order exactly once, and the stats count them right
 * throughout. Also tests the internal address map (core/ptrmap.h)
 * directly: 100,000 keys inserted and removed in random order, removed
 * keys not found, remaining keys always found, which is what its
 * backward-shift deletion must guarantee. No timing is asserted here.
 */
#include "core/ptrmap.h"
#include "helpers.h"

#define N_ALLOCS 100000
#define N_TAGS   4
#define SMALL    64

static const char *const reg_tags[N_TAGS] = {"reg-a", "reg-b", "reg-c", "reg-d"};

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* Fisher-Yates with the test's seeded generator. */
static void shuffle(size_t *idx, size_t n, uint64_t seed) {
  uint64_t s = seed;
  for (size_t i = n; i > 1; i--) {
    size_t j = (size_t)(test_rand_next(&s) % i);
    size_t t = idx[i - 1];
    idx[i - 1] = idx[j];
    idx[j] = t;
  }
}

static void assert_tag_counts(const size_t *live) {
  size_t total = 0;
  for (size_t t = 0; t < N_TAGS; t++) {
    memsleep_stats_t s = test_stats(reg_tags[t]);
    assert_int_equal(s.allocations, live[t]);
    assert_int_equal(s.reserved_bytes, live[t] * test_pages_of(SMALL));
    assert_int_equal(s.resident_bytes, live[t] * test_pages_of(SMALL));
    assert_int_equal(s.backup_bytes, 0);
    total += live[t];
  }
  memsleep_stats_t all = test_stats(NULL);
  assert_int_equal(all.allocations, total);
  assert_int_equal(all.reserved_bytes, total * test_pages_of(SMALL));
}

static void test_many_small_allocations_are_distinct_and_all_found(void **state) {
  (void)state;
  void **p = calloc(N_ALLOCS, sizeof *p);
  void **sorted = calloc(N_ALLOCS, sizeof *sorted);
  size_t *order = calloc(N_ALLOCS, sizeof *order);
  assert_non_null(p);
  assert_non_null(sorted);
  assert_non_null(order);
  size_t live[N_TAGS] = {0};

  for (size_t i = 0; i < N_ALLOCS; i++) {
    p[i] = test_alloc(SMALL, reg_tags[i % N_TAGS], i % 7 == 0 ? MEMSLEEP_BACKUP : 0);
    live[i % N_TAGS]++;
    /* Each is its own memory: write its index at both ends. */
    memcpy(p[i], &i, sizeof i);
    memcpy((char *)p[i] + SMALL - sizeof i, &i, sizeof i);
    if (i % 25000 == 24999)
      assert_tag_counts(live);
  }
  assert_tag_counts(live);

  /* Distinct and not overlapping: sorted, neighbours are a page apart. */
  memcpy(sorted, p, N_ALLOCS * sizeof *p);
  qsort(sorted, N_ALLOCS, sizeof *sorted, cmp_ptr);
  for (size_t i = 1; i < N_ALLOCS; i++)
    assert_true((uintptr_t)sorted[i] - (uintptr_t)sorted[i - 1] >= test_pages_of(SMALL));
  for (size_t i = 0; i < N_ALLOCS; i++) {
    size_t a = 0, b = 0;
    memcpy(&a, p[i], sizeof a);
    memcpy(&b, (char *)p[i] + SMALL - sizeof b, sizeof b);
    assert_int_equal(a, i);
    assert_int_equal(b, i);
  }

  /* Free in random order; each once. */
  for (size_t i = 0; i < N_ALLOCS; i++)
    order[i] = i;
  shuffle(order, N_ALLOCS, 12345);
  for (size_t k = 0; k < N_ALLOCS; k++) {
    size_t i = order[k];
    int rc = memsleep_free(p[i]);
    if (rc != 0)
      fail_msg("free #%zu (allocation %zu, %p): %s (%s)", k, i, p[i], memsleep_strerror(rc),
               memsleep_last_error());
    live[i % N_TAGS]--;
    if (k % 10000 == 9999) {
      assert_tag_counts(live);
      /* An already freed one is no longer known. */
      assert_int_equal(memsleep_free(p[i]), MEMSLEEP_ENOTFOUND);
    }
  }
  assert_tag_counts(live);
  assert_stats_zero();
  for (size_t t = 0; t < N_TAGS; t++)
    assert_int_equal(memsleep_is_asleep(reg_tags[t]), 0);
  free(p);
  free(sorted);
  free(order);
}

/* Release and resume of tags holding many allocations keep every one
 * registered and its BACKUP contents. */
static void test_many_allocations_survive_release_resume(void **state) {
  (void)state;
  enum { N = 20000 };
  void **p = calloc(N, sizeof *p);
  assert_non_null(p);
  for (size_t i = 0; i < N; i++) {
    p[i] = test_alloc(SMALL, reg_tags[i % 2], MEMSLEEP_BACKUP);
    memcpy(p[i], &i, sizeof i);
  }
  assert_ok(memsleep_release(reg_tags, 2));
  assert_int_equal(test_stats(NULL).resident_bytes, 0);
  assert_ok(memsleep_resume(reg_tags, 2));
  for (size_t i = 0; i < N; i++) {
    size_t v = 0;
    memcpy(&v, p[i], sizeof v);
    assert_int_equal(v, i);
  }
  for (size_t i = N; i-- > 0;)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
  free(p);
}

/* A key the map never saw: page-aligned, like the real ones. */
static const void *key_of(size_t i) {
  return (const void *)(uintptr_t)(((uintptr_t)i + 1) << 12);
}

/* 100,000 keys in, removed in random order; after every removal the removed
 * key is gone, and every so often all remaining keys are checked. */
static void test_ptrmap_remove_in_random_order_keeps_the_rest(void **state) {
  (void)state;
  enum { N = 100000 };
  ms__ptrmap_t m = {NULL, 0, 0};
  size_t *order = calloc(N, sizeof *order);
  unsigned char *gone = calloc(N, 1);
  assert_non_null(order);
  assert_non_null(gone);
  for (size_t i = 0; i < N; i++) {
    assert_int_equal(ms__ptrmap_put(&m, key_of(i), (void *)(uintptr_t)(i + 1)), 0);
    order[i] = i;
  }
  assert_int_equal(m.count, N);
  for (size_t i = 0; i < N; i++)
    assert_ptr_equal(ms__ptrmap_get(&m, key_of(i)), (void *)(uintptr_t)(i + 1));
  assert_null(ms__ptrmap_get(&m, key_of(N)));
  assert_null(ms__ptrmap_get(&m, NULL));

  shuffle(order, N, 777);
  for (size_t k = 0; k < N; k++) {
    size_t i = order[k];
    assert_ptr_equal(ms__ptrmap_remove(&m, key_of(i)), (void *)(uintptr_t)(i + 1));
    gone[i] = 1;
    assert_null(ms__ptrmap_get(&m, key_of(i)));
    assert_null(ms__ptrmap_remove(&m, key_of(i))); /* removing twice finds nothing */
    if (k % 4999 == 0 || k > N - 100) {
      for (size_t j = 0; j < N; j++) {
        void *v = ms__ptrmap_get(&m, key_of(j));
        if (gone[j] ? v != NULL : v != (void *)(uintptr_t)(j + 1))
          fail_msg("after %zu removals: key %zu (%s) gives %p", k + 1, j,
                   gone[j] ? "removed" : "present", v);
      }
    }
  }
  assert_int_equal(m.count, 0);
  ms__ptrmap_destroy(&m);
  free(order);
  free(gone);
  assert_stats_zero();
}

/* Small tables, where probe runs wrap around the end of the slot array:
 * interleaved inserts and removes, checked against a plain array. */
static void test_ptrmap_small_tables_with_wraparound(void **state) {
  (void)state;
  enum { KEYS = 200, ROUNDS = 20000 };
  uint64_t rng = 4242;
  for (int table = 0; table < 20; table++) {
    ms__ptrmap_t m = {NULL, 0, 0};
    unsigned char in[KEYS] = {0};
    size_t count = 0;
    for (int r = 0; r < ROUNDS / 20; r++) {
      size_t i = (size_t)(test_rand_next(&rng) % (uint64_t)(16 + table * 9 % KEYS));
      if (in[i]) {
        assert_ptr_equal(ms__ptrmap_remove(&m, key_of(i)), (void *)(uintptr_t)(i + 1));
        in[i] = 0;
        count--;
      } else {
        assert_int_equal(ms__ptrmap_put(&m, key_of(i), (void *)(uintptr_t)(i + 1)), 0);
        in[i] = 1;
        count++;
      }
      assert_int_equal(m.count, count);
      for (size_t j = 0; j < KEYS; j++) {
        void *v = ms__ptrmap_get(&m, key_of(j));
        if (in[j] ? v != (void *)(uintptr_t)(j + 1) : v != NULL)
          fail_msg("table %d round %d: key %zu (%s) gives %p", table, r, j,
                   in[j] ? "present" : "absent", v);
      }
    }
    ms__ptrmap_destroy(&m);
  }
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_many_small_allocations_are_distinct_and_all_found),
      cmocka_unit_test(test_many_allocations_survive_release_resume),
      cmocka_unit_test(test_ptrmap_remove_in_random_order_keeps_the_rest),
      cmocka_unit_test(test_ptrmap_small_tables_with_wraparound),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
