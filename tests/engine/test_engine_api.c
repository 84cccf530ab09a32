/*
 * test_engine_api.c - the engine's request contract.
 *
 * Proves what a caller of ms__engine_submit sees: bad requests are refused
 * with MEMSLEEP_EINVAL and a full queue with MS__EBUSY; max_new_tokens,
 * stop ids and the model's EOS end a request with the right reason and
 * token count; a request that can never fit in the KV pool ends with an
 * error; cancel ends a request with abort and gives every KV block back;
 * destroy with requests running and waiting finishes each exactly once
 * with abort and leaves no memsleep memory behind.
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

static ms__engine_t *open_engine(ms__engine_options_t *o) {
  ms__engine_t *e = NULL;
  int rc = ms__engine_create(o, &e);
  if (rc != 0)
    fail_msg("ms__engine_create: %s", memsleep_last_error());
  return e;
}

static void test_submit_validation_gives_einval(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  o.max_context = 64;
  ms__engine_t *e = open_engine(&o);
  int p[4] = {1, 2, 3, 4};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  assert_int_equal(ms__engine_submit(e, p, 0, &sp, NULL, NULL), MEMSLEEP_EINVAL);
  int bad[2] = {1, 97};
  assert_int_equal(ms__engine_submit(e, bad, 2, &sp, NULL, NULL), MEMSLEEP_EINVAL);
  bad[1] = -1;
  assert_int_equal(ms__engine_submit(e, bad, 2, &sp, NULL, NULL), MEMSLEEP_EINVAL);
  sp.max_new_tokens = 61; /* 4 + 61 > 64 */
  assert_int_equal(ms__engine_submit(e, p, 4, &sp, NULL, NULL), MEMSLEEP_EINVAL);
  struct {
    float temperature, top_p;
    int top_k, max_new, n_stop, stop0;
  } cases[] = {{-1.0f, 1.0f, 0, 4, 0, 0}, {NAN, 1.0f, 0, 4, 0, 0},   {1.0f, 0.0f, 0, 4, 0, 0},
               {1.0f, 1.5f, 0, 4, 0, 0},  {1.0f, NAN, 0, 4, 0, 0},   {1.0f, 1.0f, -1, 4, 0, 0},
               {0.0f, 1.0f, 0, 0, 0, 0},  {0.0f, 1.0f, 0, 4, 17, 0}, {0.0f, 1.0f, 0, 4, 1, 97},
               {0.0f, 1.0f, 0, 4, -1, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    ms__sampling_default(&sp);
    sp.temperature = cases[i].temperature;
    sp.top_p = cases[i].top_p;
    sp.top_k = cases[i].top_k;
    sp.max_new_tokens = cases[i].max_new;
    sp.n_stop = cases[i].n_stop;
    sp.stop_ids[0] = cases[i].stop0;
    if (ms__engine_submit(e, p, 4, &sp, NULL, NULL) != MEMSLEEP_EINVAL)
      fail_msg("sampling case %zu was accepted", i);
  }
  ms__engine_stats_t st;
  ms__engine_stats(e, &st);
  assert_int_equal(st.waiting + st.running + st.requests_total, 0);
  ms__engine_destroy(e);
  tc_assert_memsleep_empty();
}

static void test_max_new_tokens_stop_ids_and_eos_end_requests(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  ms__engine_t *e = open_engine(&o);
  int p[5] = {3, 1, 4, 1, 5};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 12;
  sp.ignore_eos = 1;
  tc_req_t a;
  tc_run(e, p, 5, &sp, &a);
  assert_int_equal(a.info.reason, MS__FINISH_LENGTH);
  assert_int_equal(a.n, 12);
  assert_int_equal(a.info.completion_tokens, 12);
  assert_int_equal(a.info.prompt_tokens, 5);
  /* Stop at the first occurrence of the 4th token (kept in the output). */
  int stop = a.tokens[3], first = 0;
  while (a.tokens[first] != stop)
    first++;
  sp.n_stop = 2;
  sp.stop_ids[0] = 0 == stop ? 1 : 0;
  sp.stop_ids[1] = stop;
  for (int i = 0; i < first; i++)
    if (a.tokens[i] == sp.stop_ids[0])
      sp.stop_ids[0] = stop; /* keep the first stop id harmless */
  tc_req_t b;
  tc_run(e, p, 5, &sp, &b);
  assert_int_equal(b.info.reason, MS__FINISH_STOP);
  assert_int_equal(b.n, first + 1);
  assert_memory_equal(b.tokens, a.tokens, sizeof(int) * (size_t)b.n);
  ms__engine_destroy(e);

  /* The same weights with that token as the model's EOS. */
  tm_spec_t s = tm_default_spec();
  s.eos = stop;
  char dir2[256];
  tm_make_dir(&s, dir2, sizeof dir2);
  o.model_dir = dir2;
  e = open_engine(&o);
  ms__sampling_default(&sp);
  sp.max_new_tokens = 12;
  tc_req_t c, d;
  tc_run(e, p, 5, &sp, &c);
  assert_int_equal(c.info.reason, MS__FINISH_STOP);
  assert_int_equal(c.n, first + 1);
  sp.ignore_eos = 1;
  tc_run(e, p, 5, &sp, &d);
  assert_int_equal(d.info.reason, MS__FINISH_LENGTH);
  assert_memory_equal(d.tokens, a.tokens, sizeof(int) * 12);
  ms__engine_destroy(e);
  tm_remove_dir(dir2);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_destroy(&c);
  tc_destroy(&d);
  tc_assert_memsleep_empty();
}

static void test_request_that_can_never_fit_ends_with_error(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  o.kv_blocks = 4; /* 16 tokens */
  ms__engine_t *e = open_engine(&o);
  int p[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 20;
  tc_req_t a;
  tc_run(e, p, 10, &sp, &a);
  assert_int_equal(a.info.reason, MS__FINISH_ERROR);
  assert_non_null(strstr(a.error, "KV blocks"));
  assert_int_equal(a.n, 0);
  /* One that fits still runs. */
  sp.max_new_tokens = 6;
  tc_req_t b;
  tc_run(e, p, 10, &sp, &b);
  assert_true(b.info.reason == MS__FINISH_LENGTH || b.info.reason == MS__FINISH_STOP);
  ms__engine_destroy(e);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_assert_memsleep_empty();
}

static void test_queue_full_gives_ebusy(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  o.max_batch = 1;
  o.max_queue = 2;
  ms__engine_t *e = open_engine(&o);
  int p[3] = {7, 8, 9};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 200;
  sp.ignore_eos = 1;
  tc_req_t r[4];
  int rc = 0, accepted = 0;
  for (int i = 0; i < 4 && rc == 0; i++) {
    tc_init(&r[i]);
    ms__request_cb_t cb = tc_cb(&r[i]);
    rc = ms__engine_submit(e, p, 3, &sp, &cb, NULL);
    accepted += rc == 0;
  }
  assert_int_equal(rc, MS__EBUSY);
  assert_true(accepted == 2 || accepted == 3);
  ms__engine_destroy(e);
  for (int i = 0; i < accepted; i++) {
    assert_int_equal(r[i].finishes, 1);
    assert_int_equal(r[i].info.reason, MS__FINISH_ABORT);
  }
  for (int i = 0; i <= accepted && i < 4; i++)
    tc_destroy(&r[i]);
  tc_assert_memsleep_empty();
}

static void test_cancel_ends_with_abort_and_frees_blocks(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  ms__engine_t *e = open_engine(&o);
  int p[9] = {5, 6, 7, 8, 9, 10, 11, 12, 13};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 240;
  sp.ignore_eos = 1;
  tc_req_t a;
  tc_init(&a);
  ms__request_cb_t cb = tc_cb(&a);
  uint64_t id = 0;
  assert_int_equal(ms__engine_submit(e, p, 9, &sp, &cb, &id), 0);
  tc_wait_tokens(&a, 2);
  ms__engine_stats_t st;
  ms__engine_stats(e, &st);
  if (!(st.kv_blocks_free < st.kv_blocks_total))
    fail_msg("free %zu of %zu with %d tokens, done %d reason %d running %zu", st.kv_blocks_free,
             st.kv_blocks_total, a.n, a.done, (int)a.info.reason, st.running);
  assert_int_equal(ms__engine_cancel(e, id), 0);
  tc_wait(&a);
  assert_int_equal(a.info.reason, MS__FINISH_ABORT);
  assert_true(a.n < 240);
  ms__engine_stats(e, &st);
  assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
  assert_int_equal(st.running, 0);
  assert_int_equal(ms__engine_cancel(e, id), MEMSLEEP_ENOTFOUND);
  assert_int_equal(ms__engine_cancel(e, 987654), MEMSLEEP_ENOTFOUND);
  ms__engine_destroy(e);
  assert_int_equal(a.finishes, 1);
  tc_destroy(&a);
  tc_assert_memsleep_empty();
}

static void test_destroy_aborts_running_and_waiting_and_leaks_nothing(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options(g_dir);
  o.max_batch = 2;
  ms__engine_t *e = open_engine(&o);
  int p[4] = {2, 4, 6, 8};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 240;
  sp.ignore_eos = 1;
  enum { N = 5 };
  tc_req_t r[N];
  for (int i = 0; i < N; i++) {
    tc_init(&r[i]);
    ms__request_cb_t cb = tc_cb(&r[i]);
    assert_int_equal(ms__engine_submit(e, p, 4, &sp, &cb, NULL), 0);
  }
  tc_wait_tokens(&r[0], 1);
  ms__engine_destroy(e);
  for (int i = 0; i < N; i++) {
    assert_int_equal(r[i].finishes, 1);
    assert_int_equal(r[i].info.reason, MS__FINISH_ABORT);
    tc_destroy(&r[i]);
  }
  tc_assert_memsleep_empty();
}

static void test_create_failure_leaves_nothing(void **state) {
  (void)state;
  ms__engine_options_t o = tc_options("/nonexistent-model-dir");
  ms__engine_t *e = NULL;
  assert_true(ms__engine_create(&o, &e) < 0);
  assert_null(e);
  o = tc_options(g_dir);
  o.max_context = 100000; /* beyond the model's 256 */
  assert_int_equal(ms__engine_create(&o, &e), MEMSLEEP_EINVAL);
  o = tc_options(g_dir);
  o.device = -5; /* neither the host nor a CUDA ordinal */
  assert_int_equal(ms__engine_create(&o, &e), MEMSLEEP_EINVAL);
  ms__engine_destroy(NULL);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_submit_validation_gives_einval),
      cmocka_unit_test(test_max_new_tokens_stop_ids_and_eos_end_requests),
      cmocka_unit_test(test_request_that_can_never_fit_ends_with_error),
      cmocka_unit_test(test_queue_full_gives_ebusy),
      cmocka_unit_test(test_cancel_ends_with_abort_and_frees_blocks),
      cmocka_unit_test(test_destroy_aborts_running_and_waiting_and_leaks_nothing),
      cmocka_unit_test(test_create_failure_leaves_nothing),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
