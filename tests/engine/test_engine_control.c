/*
 * test_engine_control.c - the engine calls the sleep/wake controller drives.
 *
 * Proves what a user of the control plane would notice: a drain waits for
 * the running requests while they keep generating (and times out when
 * told to); with admission closed new requests wait in the queue and run,
 * token-identically, once it reopens; a frozen scheduler makes no step and
 * the frozen request goes on with identical greedy tokens after the
 * unfreeze; abort ends running and waiting requests with finish reason
 * abort; a weight reload between steps switches the model's output (and
 * back), refuses a model of other shapes leaving the old weights, and drops
 * the prefix cache; while the weights are marked invalid submit refuses
 * with the reason and nothing waiting is admitted.
 */
#include "engine_helpers.h"

#define LONG_N 480

static const int PROMPT[] = {3, 14, 15, 92, 65, 35, 89, 79, 32, 38};
#define PROMPT_N (sizeof PROMPT / sizeof PROMPT[0])

static ms__sampling_t greedy(int n) {
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = n;
  sp.ignore_eos = 1;
  return sp;
}

/* Tokens r has now. */
static int tokens_now(tc_req_t *r) {
  pthread_mutex_lock(&r->mu);
  int n = r->n;
  pthread_mutex_unlock(&r->mu);
  return n;
}

static int done_now(tc_req_t *r) {
  pthread_mutex_lock(&r->mu);
  int d = r->done;
  pthread_mutex_unlock(&r->mu);
  return d;
}

typedef struct fixture {
  char dir[256];
  ms__engine_t *e;
} fixture_t;

static int setup(void **state) {
  fixture_t *f = calloc(1, sizeof *f);
  tm_spec_t s = tm_default_spec();
  s.max_pos = 512;
  tm_make_dir(&s, f->dir, sizeof f->dir);
  ms__engine_options_t o = tc_options(f->dir);
  o.max_context = 512;
  assert_int_equal(ms__engine_create(&o, &f->e), 0);
  *state = f;
  return 0;
}

static int teardown(void **state) {
  fixture_t *f = *state;
  ms__engine_destroy(f->e);
  tm_remove_dir(f->dir);
  free(f);
  tc_assert_memsleep_empty();
  return 0;
}

/* Starts a request of n greedy tokens and waits for its first tokens. */
static void start(ms__engine_t *e, int n, tc_req_t *r) {
  tc_init(r);
  ms__sampling_t sp = greedy(n);
  ms__request_cb_t cb = tc_cb(r);
  assert_int_equal(ms__engine_submit(e, PROMPT, PROMPT_N, &sp, &cb, NULL), 0);
  tc_wait_tokens(r, 2);
}

static void test_drain_waits_while_running_requests_keep_generating(void **state) {
  fixture_t *f = *state;
  tc_req_t ref, r;
  ms__sampling_t sp = greedy(LONG_N);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &ref);

  start(f->e, LONG_N, &r);
  ms__engine_set_admission(f->e, 0);
  size_t at_start = 0;
  assert_int_equal(ms__engine_wait_idle(f->e, -1, &at_start), 0);
  assert_int_equal(at_start, 1);
  /* The drain returned only after the request made every token and its
   * finish was delivered. */
  assert_true(done_now(&r));
  assert_int_equal(r.n, LONG_N);
  assert_int_equal(r.info.reason, MS__FINISH_LENGTH);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * LONG_N);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.running, 0);
  ms__engine_set_admission(f->e, 1);
  tc_destroy(&ref);
  tc_destroy(&r);
}

static void test_drain_times_out_and_the_request_goes_on(void **state) {
  fixture_t *f = *state;
  tc_req_t r;
  start(f->e, LONG_N, &r);
  ms__engine_set_admission(f->e, 0);
  size_t at_start = 0;
  assert_int_equal(ms__engine_wait_idle(f->e, 1, &at_start), MS__ETIMEDOUT);
  assert_int_equal(at_start, 1);
  ms__engine_set_admission(f->e, 1);
  tc_wait(&r);
  assert_int_equal(r.n, LONG_N);
  tc_destroy(&r);
}

static void test_closed_admission_queues_requests_that_run_after_reopen(void **state) {
  fixture_t *f = *state;
  tc_req_t ref, r;
  ms__sampling_t sp = greedy(12);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &ref);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  uint64_t steps = st.steps;

  ms__engine_set_admission(f->e, 0);
  tc_init(&r);
  ms__request_cb_t cb = tc_cb(&r);
  assert_int_equal(ms__engine_submit(f->e, PROMPT, PROMPT_N, &sp, &cb, NULL), 0);
  usleep(200 * 1000);
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.waiting, 1);
  assert_int_equal(st.running, 0);
  assert_int_equal(st.steps, steps);
  assert_int_equal(tokens_now(&r), 0);
  assert_false(done_now(&r));

  ms__engine_set_admission(f->e, 1);
  tc_wait(&r);
  assert_int_equal(r.n, 12);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * 12);
  tc_destroy(&ref);
  tc_destroy(&r);
}

static void test_closed_admission_queue_is_bounded(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  char dir[256];
  tm_make_dir(&s, dir, sizeof dir);
  ms__engine_options_t o = tc_options(dir);
  o.max_queue = 2;
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  ms__engine_set_admission(e, 0);
  ms__sampling_t sp = greedy(4);
  tc_req_t r[3];
  for (int i = 0; i < 3; i++) {
    tc_init(&r[i]);
    ms__request_cb_t cb = tc_cb(&r[i]);
    assert_int_equal(ms__engine_submit(e, PROMPT, PROMPT_N, &sp, &cb, NULL), i < 2 ? 0 : MS__EBUSY);
  }
  ms__engine_set_admission(e, 1);
  tc_wait(&r[0]);
  tc_wait(&r[1]);
  assert_int_equal(r[1].n, 4);
  ms__engine_destroy(e);
  for (int i = 0; i < 3; i++)
    tc_destroy(&r[i]);
  tm_remove_dir(dir);
  tc_assert_memsleep_empty();
}

static void test_freeze_stops_steps_and_unfreeze_resumes_identically(void **state) {
  fixture_t *f = *state;
  tc_req_t ref, r;
  ms__sampling_t sp = greedy(LONG_N);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &ref);

  start(f->e, LONG_N, &r);
  ms__engine_set_frozen(f->e, 1);
  ms__engine_set_admission(f->e, 0);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  uint64_t steps = st.steps;
  int n = tokens_now(&r);
  usleep(200 * 1000);
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.steps, steps);
  assert_int_equal(st.running, 1);
  assert_int_equal(tokens_now(&r), n);
  assert_true(n < LONG_N);
  /* A frozen request cannot drain: the wait says so at once. */
  assert_int_equal(ms__engine_wait_idle(f->e, 60000, NULL), MEMSLEEP_ESTATE);

  ms__engine_set_frozen(f->e, 0);
  ms__engine_set_admission(f->e, 1);
  tc_wait(&r);
  assert_int_equal(r.n, LONG_N);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * LONG_N);
  tc_destroy(&ref);
  tc_destroy(&r);
}

static void test_abort_all_ends_running_and_waiting_with_abort(void **state) {
  fixture_t *f = *state;
  tc_req_t run, wait;
  start(f->e, LONG_N, &run);
  ms__engine_set_admission(f->e, 0);
  tc_init(&wait);
  ms__sampling_t sp = greedy(8);
  ms__request_cb_t cb = tc_cb(&wait);
  assert_int_equal(ms__engine_submit(f->e, PROMPT, PROMPT_N, &sp, &cb, NULL), 0);
  assert_int_equal(ms__engine_abort_all(f->e), 2);
  tc_wait(&run);
  tc_wait(&wait);
  assert_int_equal(run.info.reason, MS__FINISH_ABORT);
  assert_int_equal(wait.info.reason, MS__FINISH_ABORT);
  assert_true(run.n < LONG_N);
  assert_int_equal(wait.n, 0);
  assert_int_equal(run.finishes, 1);
  assert_int_equal(wait.finishes, 1);
  assert_int_equal(ms__engine_wait_idle(f->e, 10000, NULL), 0);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.running + st.waiting, 0);
  assert_int_equal(st.kv_blocks_free, st.kv_blocks_total);
  assert_int_equal(ms__engine_abort_all(f->e), 0);
  ms__engine_set_admission(f->e, 1);
  tc_destroy(&run);
  tc_destroy(&wait);
}

static void test_abort_all_works_while_frozen(void **state) {
  fixture_t *f = *state;
  tc_req_t r;
  start(f->e, LONG_N, &r);
  ms__engine_set_frozen(f->e, 1);
  assert_int_equal(ms__engine_abort_all(f->e), 1);
  tc_wait(&r);
  assert_int_equal(r.info.reason, MS__FINISH_ABORT);
  ms__engine_set_frozen(f->e, 0);
  tc_destroy(&r);
}

static void test_reload_between_steps_switches_weights(void **state) {
  fixture_t *f = *state;
  /* Model B: same shapes, other weights. Its own engine gives the
   * reference. */
  tm_spec_t s = tm_default_spec();
  s.max_pos = 512;
  s.seed = 2;
  char dir_b[256];
  tm_make_dir(&s, dir_b, sizeof dir_b);
  ms__sampling_t sp = greedy(16);
  tc_req_t a, b, got;
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &a);
  {
    ms__engine_options_t o = tc_options(dir_b);
    o.max_context = 512;
    ms__engine_t *eb = NULL;
    assert_int_equal(ms__engine_create(&o, &eb), 0);
    tc_run(eb, PROMPT, PROMPT_N, &sp, &b);
    ms__engine_destroy(eb);
  }
  assert_memory_not_equal(a.tokens, b.tokens, sizeof(int) * 16);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  assert_true(st.prefix_cached_blocks > 0);

  /* A reload while a request runs waits for the step in flight. */
  tc_req_t busy;
  start(f->e, LONG_N, &busy);
  assert_int_equal(ms__engine_reload_weights(f->e, dir_b), 0);
  tc_wait(&busy);
  assert_int_equal(busy.n, LONG_N);
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.prefix_cached_blocks, 0);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &got);
  assert_memory_equal(got.tokens, b.tokens, sizeof(int) * 16);
  tc_destroy(&got);

  assert_int_equal(ms__engine_reload_weights(f->e, f->dir), 0);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &got);
  assert_memory_equal(got.tokens, a.tokens, sizeof(int) * 16);
  tc_destroy(&got);

  /* Other shapes: refused, the old weights stay. */
  s.layers = 3;
  char dir_bad[256];
  tm_make_dir(&s, dir_bad, sizeof dir_bad);
  assert_int_equal(ms__engine_reload_weights(f->e, dir_bad), MEMSLEEP_EINVAL);
  assert_non_null(strstr(memsleep_last_error(), "config.json"));
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &got);
  assert_memory_equal(got.tokens, a.tokens, sizeof(int) * 16);
  tc_destroy(&got);

  tm_remove_dir(dir_b);
  tm_remove_dir(dir_bad);
  tc_destroy(&a);
  tc_destroy(&b);
  tc_destroy(&busy);
}

static void test_invalid_weights_refuse_submit_with_the_reason(void **state) {
  fixture_t *f = *state;
  tc_req_t ref, queued, r;
  ms__sampling_t sp = greedy(10);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &ref);
  /* A request already waiting when the weights turn invalid is not
   * admitted until they are valid again. */
  ms__engine_set_admission(f->e, 0);
  tc_init(&queued);
  ms__request_cb_t cb = tc_cb(&queued);
  assert_int_equal(ms__engine_submit(f->e, PROMPT, PROMPT_N, &sp, &cb, NULL), 0);
  ms__engine_set_weights_valid(f->e, 0, "weights discarded: update them first");
  ms__engine_set_admission(f->e, 1);
  tc_init(&r);
  cb = tc_cb(&r);
  assert_int_equal(ms__engine_submit(f->e, PROMPT, PROMPT_N, &sp, &cb, NULL), MS__EWEIGHTS);
  assert_non_null(strstr(memsleep_last_error(), "update them first"));
  usleep(200 * 1000);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.waiting, 1);
  assert_false(done_now(&queued));

  ms__engine_set_weights_valid(f->e, 1, NULL);
  tc_wait(&queued);
  assert_memory_equal(queued.tokens, ref.tokens, sizeof(int) * 10);
  tc_destroy(&r);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &r);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * 10);
  tc_destroy(&ref);
  tc_destroy(&queued);
  tc_destroy(&r);
}

static void test_kv_sleep_cycle_with_prefix_reset_and_zero(void **state) {
  fixture_t *f = *state;
  tc_req_t ref, r;
  ms__sampling_t sp = greedy(10);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &ref);
  ms__engine_stats_t st;
  ms__engine_stats(f->e, &st);
  assert_true(st.prefix_cached_blocks > 0);
  /* Refused while a request runs: its keys and values would be lost. */
  start(f->e, LONG_N, &r);
  assert_int_equal(ms__engine_kv_zero(f->e), MEMSLEEP_ESTATE);
  ms__engine_set_admission(f->e, 0);
  assert_int_equal(ms__engine_wait_idle(f->e, -1, NULL), 0);
  tc_destroy(&r);

  assert_int_equal(ms__engine_reset_prefix_cache(f->e), 0);
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.prefix_cached_blocks, 0);
  const char *kv = "kv_cache";
  assert_int_equal(memsleep_release_flags(&kv, 1, MEMSLEEP_RELEASE_NO_BACKUP), 0);
  assert_int_equal(ms__engine_kv_zero(f->e), MEMSLEEP_ESTATE); /* asleep */
  assert_int_equal(memsleep_resume(&kv, 1), 0);
  assert_int_equal(ms__engine_kv_zero(f->e), 0);
  ms__engine_set_admission(f->e, 1);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &r);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * 10);
  assert_int_equal(r.info.cached_tokens, 0);
  tc_destroy(&r);

  /* The cheap repair the server uses: the pool comes back as zeros from
   * memsleep (MEMSLEEP_ZERO), the prefix cache goes, outputs are the same. */
  ms__engine_set_admission(f->e, 0);
  assert_int_equal(ms__engine_wait_idle(f->e, -1, NULL), 0);
  assert_int_equal(ms__engine_reset_prefix_cache(f->e), 0);
  assert_int_equal(memsleep_release_flags(&kv, 1, MEMSLEEP_RELEASE_NO_BACKUP), 0);
  assert_int_equal(ms__engine_kv_repair(f->e), MEMSLEEP_ESTATE); /* asleep */
  assert_int_equal(memsleep_resume(&kv, 1), 0);
  memsleep_stats_t kvs;
  assert_int_equal(memsleep_measure("kv_cache", &kvs), 0);
  assert_int_equal(kvs.resident_bytes, kvs.reserved_bytes); /* mapped, populated */
  assert_int_equal(ms__engine_kv_repair(f->e), 0);
  ms__engine_stats(f->e, &st);
  assert_int_equal(st.prefix_cached_blocks, 0);
  ms__engine_set_admission(f->e, 1);
  tc_run(f->e, PROMPT, PROMPT_N, &sp, &r);
  assert_memory_equal(r.tokens, ref.tokens, sizeof(int) * 10);
  assert_int_equal(r.info.cached_tokens, 0);
  tc_destroy(&ref);
  tc_destroy(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_drain_waits_while_running_requests_keep_generating,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_drain_times_out_and_the_request_goes_on, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_closed_admission_queues_requests_that_run_after_reopen,
                                      setup, teardown),
      cmocka_unit_test(test_closed_admission_queue_is_bounded),
      cmocka_unit_test_setup_teardown(test_freeze_stops_steps_and_unfreeze_resumes_identically,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(test_abort_all_ends_running_and_waiting_with_abort, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_abort_all_works_while_frozen, setup, teardown),
      cmocka_unit_test_setup_teardown(test_reload_between_steps_switches_weights, setup, teardown),
      cmocka_unit_test_setup_teardown(test_invalid_weights_refuse_submit_with_the_reason, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(test_kv_sleep_cycle_with_prefix_reset_and_zero, setup,
                                      teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
