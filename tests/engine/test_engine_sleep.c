/*
 * test_engine_sleep.c - the engine's memory can sleep between requests.
 *
 * Proves that the engine keeps nothing it needs in a releasable region
 * except what the tags promise: with the engine idle and the prefix cache
 * flushed, releasing "weights" (backup), "kv_cache" and "workspace" frees
 * their resident memory, and after resume (the KV pool zeroed by
 * MEMSLEEP_ZERO) the same greedy request gives the same tokens.
 */
#include "engine_helpers.h"

static void test_release_resume_between_requests_keeps_output(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  char dir[256];
  tm_make_dir(&s, dir, sizeof dir);
  ms__engine_options_t o = tc_options(dir);
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  int p[14];
  for (int i = 0; i < 14; i++)
    p[i] = (i * 5 + 2) % 90;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 24;
  sp.ignore_eos = 1;
  tc_req_t a, b;
  tc_run(e, p, 14, &sp, &a);

  assert_int_equal(ms__engine_flush_cache(e), 0);
  const char *tags[] = {"weights", "kv_cache", "workspace"};
  assert_int_equal(memsleep_release(tags, 3), 0);
  memsleep_stats_t st;
  for (int i = 0; i < 3; i++) {
    assert_int_equal(memsleep_stats(tags[i], &st), 0);
    assert_int_equal(st.resident_bytes, 0);
  }
  assert_int_equal(memsleep_resume(tags, 3), 0);

  tc_run(e, p, 14, &sp, &b);
  assert_int_equal(a.n, 24);
  assert_int_equal(b.n, 24);
  assert_memory_equal(a.tokens, b.tokens, sizeof(int) * 24);
  ms__engine_destroy(e);
  tc_destroy(&a);
  tc_destroy(&b);
  tm_remove_dir(dir);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_release_resume_between_requests_keeps_output),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
