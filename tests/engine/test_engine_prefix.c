/*
 * test_engine_prefix.c - the prefix cache seen from a request.
 *
 * Proves that a repeated prompt reuses the KV blocks of its full prompt
 * blocks (cached_tokens > 0) and gives the same output as the first run;
 * that a prompt sharing only a prefix reuses just that; that flushing is
 * refused while requests run and, once idle, empties the cache so the next
 * run computes everything again with the same output.
 */
#include "engine_helpers.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  tm_make_dir(&s, g_dir, sizeof g_dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  tm_remove_dir(g_dir);
  return 0;
}

static void test_repeated_prompt_hits_cache_with_same_output_and_flush_works(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir); /* blocks of 4 tokens */
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  int p[18];
  for (int i = 0; i < 18; i++)
    p[i] = (i * 7 + 3) % 90;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 10;
  sp.ignore_eos = 1;
  tc_req_t a, b, c, d;
  tc_run(e, p, 18, &sp, &a);
  assert_int_equal(a.info.cached_tokens, 0);
  ms__engine_stats_t st;
  ms__engine_stats(e, &st);
  assert_int_equal(st.prefix_cached_blocks, 4); /* 18 / 4 full prompt blocks */
  assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);

  tc_run(e, p, 18, &sp, &b);
  assert_int_equal(b.info.cached_tokens, 16);
  assert_int_equal(b.n, a.n);
  assert_memory_equal(a.tokens, b.tokens, sizeof(int) * (size_t)a.n);

  /* Only the first 9 tokens shared: two blocks reused. */
  int q[18];
  memcpy(q, p, sizeof q);
  q[9] = (q[9] + 1) % 90;
  tc_run(e, q, 18, &sp, &c);
  assert_int_equal(c.info.cached_tokens, 8);

  /* Flush is refused while a request runs or waits. */
  tc_req_t busy;
  tc_init(&busy);
  ms__request_cb_t cb = tc_cb(&busy);
  ms__sampling_t lsp = sp;
  lsp.max_new_tokens = 200;
  uint64_t id;
  assert_int_equal(ms__engine_submit(e, p, 18, &lsp, &cb, &id), 0);
  assert_int_equal(ms__engine_flush_cache(e), MEMSLEEP_ESTATE);
  assert_int_equal(ms__engine_cancel(e, id), 0);
  tc_wait(&busy);

  assert_int_equal(ms__engine_flush_cache(e), 0);
  ms__engine_stats(e, &st);
  assert_int_equal(st.prefix_cached_blocks, 0);
  assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
  tc_run(e, p, 18, &sp, &d);
  assert_int_equal(d.info.cached_tokens, 0);
  assert_memory_equal(a.tokens, d.tokens, sizeof(int) * (size_t)a.n);
  ms__engine_stats(e, &st);
  assert_int_equal(st.cached_tokens_total, 16 + 8 + busy.info.cached_tokens);
  ms__engine_destroy(e);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_destroy(&c);
  tc_destroy(&d);
  tc_destroy(&busy);
  tc_assert_memsleep_empty();
}

/* A prompt that is exactly a whole number of blocks still computes its last
 * token (only the blocks before it come from the cache). */
static void test_block_aligned_prompt_reuses_all_but_last_block(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  int p[12] = {11, 22, 33, 44, 55, 66, 77, 88, 1, 2, 3, 4};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 6;
  sp.ignore_eos = 1;
  tc_req_t a, b;
  tc_run(e, p, 12, &sp, &a);
  tc_run(e, p, 12, &sp, &b);
  assert_int_equal(b.info.cached_tokens, 8);
  assert_memory_equal(a.tokens, b.tokens, sizeof(int) * 6);
  ms__engine_destroy(e);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_assert_memsleep_empty();
}

/* With the prefix cache off nothing is cached. */
static void test_prefix_cache_off_caches_nothing(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  o.prefix_cache = 0;
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  int p[12] = {11, 22, 33, 44, 55, 66, 77, 88, 1, 2, 3, 4};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 3;
  tc_req_t a, b;
  tc_run(e, p, 12, &sp, &a);
  tc_run(e, p, 12, &sp, &b);
  assert_int_equal(b.info.cached_tokens, 0);
  ms__engine_stats_t st;
  ms__engine_stats(e, &st);
  assert_int_equal(st.prefix_cached_blocks, 0);
  ms__engine_destroy(e);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_repeated_prompt_hits_cache_with_same_output_and_flush_works),
      cmocka_unit_test(test_block_aligned_prompt_reuses_all_but_last_block),
      cmocka_unit_test(test_prefix_cache_off_caches_nothing),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
