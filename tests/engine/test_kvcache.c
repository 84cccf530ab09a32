/*
 * test_kvcache.c - the KV block pool and the prefix cache.
 *
 * Proves that blocks are handed out and given back exactly (all or
 * nothing), that the pool is memsleep memory of tag "kv_cache" that can be
 * released, resumed and zeroed, that the prefix cache finds only blocks of
 * an identical prefix, shares them by reference count, gives up cached-only
 * blocks when the pool runs dry (oldest first), and that a reset frees
 * them.
 */
#include "engine/kvcache.h"
#include "engine_helpers.h"

static void test_alloc_and_release_are_exact(void **state) {
  (void)state;
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 2, 8, 4, 10, MEMSLEEP_HOST), 0);
  assert_int_equal(ms__kv_available(&kv), 10);
  uint32_t a[10], b[10];
  assert_int_equal(ms__kv_alloc(&kv, 7, a), 0);
  assert_int_equal(ms__kv_available(&kv), 3);
  assert_int_equal(ms__kv_alloc(&kv, 4, b), MEMSLEEP_ENOMEM); /* all or nothing */
  assert_int_equal(ms__kv_available(&kv), 3);
  assert_int_equal(ms__kv_alloc(&kv, 3, b), 0);
  int seen[10] = {0};
  for (int i = 0; i < 7; i++)
    seen[a[i]]++;
  for (int i = 0; i < 3; i++)
    seen[b[i]]++;
  for (int i = 0; i < 10; i++)
    assert_int_equal(seen[i], 1);
  ms__kv_release(&kv, a, 7);
  ms__kv_release(&kv, b, 3);
  assert_int_equal(ms__kv_available(&kv), 10);
  ms__kv_destroy(&kv);
  tc_assert_memsleep_empty();
}

static void test_pool_is_kv_cache_memory_that_sleeps_and_zeroes(void **state) {
  (void)state;
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 2, 8, 4, 10, MEMSLEEP_HOST), 0);
  memsleep_stats_t st;
  assert_int_equal(memsleep_stats("kv_cache", &st), 0);
  assert_int_equal(st.allocations, 2);
  assert_true(st.reserved_bytes >= 2 * kv.pool_bytes);
  assert_int_equal(kv.layout.elem_bytes, 4); /* float32 on the host */
  float *k = kv.layout.k, *v = kv.layout.v;
  k[5] = 3.0f;
  v[kv.pool_bytes / sizeof(float) - 1] = 4.0f;
  const char *tag = "kv_cache";
  assert_int_equal(memsleep_release(&tag, 1), 0);
  assert_int_equal(memsleep_resume(&tag, 1), 0);
  k[7] = 1.0f; /* scribble, as stale data would */
  assert_int_equal(ms__kv_zero(&kv), 0);
  for (size_t i = 0; i < kv.pool_bytes / sizeof(float); i++) {
    assert_true(k[i] == 0.0f);
    assert_true(v[i] == 0.0f);
  }
  ms__kv_destroy(&kv);
  tc_assert_memsleep_empty();
}

static void test_prefix_cache_matches_identical_prefixes_only(void **state) {
  (void)state;
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 1, 4, 4, 16, MEMSLEEP_HOST), 0);
  int p[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  uint32_t blk[3], got[3];
  assert_int_equal(ms__kv_alloc(&kv, 3, blk), 0);
  ms__kv_prefix_insert(&kv, p, blk, 3);
  assert_int_equal(kv.n_cached, 3);
  ms__kv_release(&kv, blk, 3); /* the sequence ends; the cache keeps them */
  assert_int_equal(ms__kv_available(&kv), 16);
  /* Same first 8 tokens, then different. */
  int q[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 99};
  assert_int_equal(ms__kv_prefix_match(&kv, q, 12, 3, got), 2);
  assert_int_equal(got[0], blk[0]);
  assert_int_equal(got[1], blk[1]);
  assert_int_equal(ms__kv_available(&kv), 14); /* held now */
  ms__kv_release(&kv, got, 2);
  /* Same second block but a different first: no match. */
  int r[8] = {0, 2, 3, 4, 5, 6, 7, 8};
  assert_int_equal(ms__kv_prefix_match(&kv, r, 8, 2, got), 0);
  /* max_blocks caps the match. */
  assert_int_equal(ms__kv_prefix_match(&kv, p, 12, 1, got), 1);
  ms__kv_release(&kv, got, 1);
  ms__kv_prefix_reset(&kv);
  assert_int_equal(kv.n_cached, 0);
  assert_int_equal(kv.n_free, 16);
  assert_int_equal(ms__kv_prefix_match(&kv, p, 12, 3, got), 0);
  ms__kv_destroy(&kv);
  tc_assert_memsleep_empty();
}

static void test_cached_blocks_are_evicted_oldest_first_when_needed(void **state) {
  (void)state;
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 1, 4, 2, 4, MEMSLEEP_HOST), 0);
  int a[2] = {1, 1}, b[2] = {2, 2};
  uint32_t ba, bb, tmp[4];
  assert_int_equal(ms__kv_alloc(&kv, 1, &ba), 0);
  ms__kv_prefix_insert(&kv, a, &ba, 1);
  ms__kv_release(&kv, &ba, 1);
  assert_int_equal(ms__kv_alloc(&kv, 1, &bb), 0);
  ms__kv_prefix_insert(&kv, b, &bb, 1);
  ms__kv_release(&kv, &bb, 1);
  assert_int_equal(kv.n_cached, 2);
  /* Take all but one: the free ones go first, then the oldest cached (a). */
  assert_int_equal(ms__kv_alloc(&kv, 3, tmp), 0);
  assert_int_equal(kv.n_cached, 1);
  int b3[3] = {2, 2, 0};
  uint32_t got;
  assert_int_equal(ms__kv_prefix_match(&kv, b3, 3, 1, &got), 1);
  assert_int_equal(got, bb);
  /* A cached block someone holds is not evictable. */
  assert_int_equal(ms__kv_available(&kv), 0);
  assert_int_equal(ms__kv_alloc(&kv, 1, tmp + 3), MEMSLEEP_ENOMEM);
  ms__kv_release(&kv, &got, 1);
  ms__kv_release(&kv, tmp, 3);
  assert_int_equal(ms__kv_available(&kv), 4);
  ms__kv_prefix_reset(&kv);
  assert_int_equal(kv.n_free, 4);
  ms__kv_destroy(&kv);
  tc_assert_memsleep_empty();
}

/* Many inserts and evictions keep the hash table consistent: every cached
 * block can still be found. */
static void test_hash_table_survives_churn(void **state) {
  (void)state;
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 1, 4, 2, 32, MEMSLEEP_HOST), 0);
  for (int round = 0; round < 500; round++) {
    int toks[2] = {round, round * 7};
    uint32_t b;
    assert_int_equal(ms__kv_alloc(&kv, 1, &b), 0);
    ms__kv_prefix_insert(&kv, toks, &b, 1);
    ms__kv_release(&kv, &b, 1);
    assert_int_equal(ms__kv_available(&kv), 32);
  }
  assert_int_equal(kv.n_cached, 32);
  for (int round = 500 - 32; round < 500; round++) {
    int toks[2] = {round, round * 7};
    uint32_t got;
    assert_int_equal(ms__kv_prefix_match(&kv, toks, 2, 1, &got), 1);
    ms__kv_release(&kv, &got, 1);
  }
  ms__kv_destroy(&kv);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alloc_and_release_are_exact),
      cmocka_unit_test(test_pool_is_kv_cache_memory_that_sleeps_and_zeroes),
      cmocka_unit_test(test_prefix_cache_matches_identical_prefixes_only),
      cmocka_unit_test(test_cached_blocks_are_evicted_oldest_first_when_needed),
      cmocka_unit_test(test_hash_table_survives_churn),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
