/*
 * test_engine_batch.c - continuous batching does not change outputs.
 *
 * Proves that a request's tokens are the same whether it runs alone or
 * joins a busy batch (other requests prefilling and decoding around it,
 * admitted before and after it): greedy output identical, and sampled
 * output with a seed identical alone and in a batch, and across repeated
 * runs. Also that the engine takes several requests into one step.
 */
#include "engine_helpers.h"

static char g_dir[256];

static int setup(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  s.layers = 3;
  tm_make_dir(&s, g_dir, sizeof g_dir);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  tm_remove_dir(g_dir);
  return 0;
}

#define PLEN 11
static const int target_prompt[PLEN] = {9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 42};

static ms__engine_t *open_engine(int prefix_cache) {
  ms__engine_options_t o = tc_options(g_dir);
  o.prefix_cache = prefix_cache;
  ms__engine_t *e = NULL;
  if (ms__engine_create(&o, &e) != 0)
    fail_msg("ms__engine_create: %s", memsleep_last_error());
  return e;
}

/* Runs the target request alone and returns its tokens in out. */
static int run_alone(const ms__sampling_t *sp, int *out) {
  ms__engine_t *e = open_engine(0);
  tc_req_t r;
  tc_run(e, target_prompt, PLEN, sp, &r);
  memcpy(out, r.tokens, sizeof(int) * (size_t)r.n);
  int n = r.n;
  tc_destroy(&r);
  ms__engine_destroy(e);
  return n;
}

/* Runs the target request while 6 others run: 3 submitted before it, 3
 * after, of different lengths and sampling. */
static int run_in_batch(const ms__sampling_t *sp, int *out, ms__engine_stats_t *st_out) {
  ms__engine_t *e = open_engine(1);
  enum { OTHERS = 6 };
  tc_req_t others[OTHERS], r;
  int prompts[OTHERS][32];
  for (int i = 0; i < OTHERS; i++) {
    tc_init(&others[i]);
    for (int j = 0; j < 32; j++)
      prompts[i][j] = (i * 13 + j * 5 + 1) % 96;
  }
  for (int i = 0; i < OTHERS / 2; i++) {
    ms__sampling_t o;
    ms__sampling_default(&o);
    o.max_new_tokens = 30 + 7 * i;
    o.temperature = i == 1 ? 0.0f : 0.9f;
    o.ignore_eos = 1;
    ms__request_cb_t cb = tc_cb(&others[i]);
    assert_int_equal(ms__engine_submit(e, prompts[i], (size_t)(5 + 6 * i), &o, &cb, NULL), 0);
  }
  tc_wait_tokens(&others[0], 3);
  tc_init(&r);
  ms__request_cb_t cb = tc_cb(&r);
  assert_int_equal(ms__engine_submit(e, target_prompt, PLEN, sp, &cb, NULL), 0);
  for (int i = OTHERS / 2; i < OTHERS; i++) {
    ms__sampling_t o;
    ms__sampling_default(&o);
    o.max_new_tokens = 20 + i;
    o.temperature = 0.7f;
    o.top_k = 20;
    o.top_p = 0.9f;
    o.ignore_eos = 1;
    ms__request_cb_t cbo = tc_cb(&others[i]);
    assert_int_equal(ms__engine_submit(e, prompts[i], (size_t)(3 + 4 * i), &o, &cbo, NULL), 0);
  }
  tc_wait(&r);
  for (int i = 0; i < OTHERS; i++) {
    tc_wait(&others[i]);
    assert_int_equal(others[i].finishes, 1);
    tc_destroy(&others[i]);
  }
  memcpy(out, r.tokens, sizeof(int) * (size_t)r.n);
  int n = r.n;
  tc_destroy(&r);
  ms__engine_stats(e, st_out);
  ms__engine_destroy(e);
  return n;
}

static void test_greedy_alone_equals_greedy_in_busy_batch(void **state) {
  (void)state;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 40;
  sp.ignore_eos = 1;
  int a[64], b[64];
  int na = run_alone(&sp, a);
  ms__engine_stats_t st;
  int nb = run_in_batch(&sp, b, &st);
  assert_int_equal(na, 40);
  assert_int_equal(nb, 40);
  assert_memory_equal(a, b, sizeof(int) * 40);
  /* Seven requests of 20-46 tokens: batching means fewer steps than tokens. */
  assert_int_equal(st.requests_total, 7);
  assert_true(st.steps < st.generated_tokens_total);
  tc_assert_memsleep_empty();
}

static void test_same_seed_same_tokens_alone_and_in_batch(void **state) {
  (void)state;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 40;
  sp.ignore_eos = 1;
  sp.temperature = 1.0f;
  sp.top_k = 50;
  sp.top_p = 0.95f;
  sp.seed = 1234;
  sp.has_seed = 1;
  int a[64], b[64], c[64], g[64];
  ms__engine_stats_t st;
  assert_int_equal(run_alone(&sp, a), 40);
  assert_int_equal(run_alone(&sp, b), 40);
  assert_int_equal(run_in_batch(&sp, c, &st), 40);
  assert_memory_equal(a, b, sizeof(int) * 40);
  assert_memory_equal(a, c, sizeof(int) * 40);
  /* It really sampled: another seed gives another sequence. */
  sp.seed = 4321;
  assert_int_equal(run_alone(&sp, g), 40);
  assert_memory_not_equal(a, g, sizeof(int) * 40);
  tc_assert_memsleep_empty();
}

/* A prompt longer than one step's token budget (256) is prefilled in
 * chunks over several steps; the output equals a single-pass prefill (an
 * engine whose budget, max_batch, is larger than the prompt). */
static void test_chunked_prefill_equals_single_pass(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  s.max_pos = 512;
  char dir[256];
  tm_make_dir(&s, dir, sizeof dir);
  int p[300];
  for (int i = 0; i < 300; i++)
    p[i] = (i * 31 + 17) % 96;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 8;
  sp.ignore_eos = 1;
  int out[2][8];
  for (int k = 0; k < 2; k++) {
    ms__engine_options_t o = tc_options(dir);
    o.max_batch = k == 0 ? 4 : 320;
    o.kv_blocks = 100;
    ms__engine_t *e = NULL;
    assert_int_equal(ms__engine_create(&o, &e), 0);
    tc_req_t r;
    tc_run(e, p, 300, &sp, &r);
    assert_int_equal(r.n, 8);
    memcpy(out[k], r.tokens, sizeof out[k]);
    ms__engine_stats_t st;
    ms__engine_stats(e, &st);
    assert_int_equal(st.steps, k == 0 ? 9 : 8); /* 2 prefill steps, or 1 */
    tc_destroy(&r);
    ms__engine_destroy(e);
  }
  assert_memory_equal(out[0], out[1], sizeof out[0]);
  tm_remove_dir(dir);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_alone_equals_greedy_in_busy_batch),
      cmocka_unit_test(test_same_seed_same_tokens_alone_and_in_batch),
      cmocka_unit_test(test_chunked_prefill_equals_single_pass),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
