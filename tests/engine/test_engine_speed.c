/*
 * test_engine_speed.c - generation speed of the default-sized model.
 *
 * Runs the model memsleep-mkmodel makes by default (4 layers, hidden 256,
 * 8 heads, 4 kv heads, intermediate 688, vocab 512) on two threads and
 * prints single-request and batched tokens per second. The aim is >= 50
 * tokens/s single-request on a 2-core machine; the figure is printed, not
 * asserted (timings vary with the machine and sanitizers), but the output
 * must be complete.
 */
#include "engine_helpers.h"

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_tokens_per_second(void **state) {
  (void)state;
  tm_spec_t s = {.arch = MS__ARCH_LLAMA,
                 .vocab = 512,
                 .hidden = 256,
                 .inter = 688,
                 .layers = 4,
                 .heads = 8,
                 .kv_heads = 4,
                 .max_pos = 2048,
                 .theta = 10000.0f,
                 .eos = 511,
                 .seed = 9};
  char dir[256];
  tm_make_dir(&s, dir, sizeof dir);
  ms__engine_options_t o = tc_options(dir);
  o.kv_block_tokens = 16;
  o.kv_blocks = 256;
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), 0);
  int p[16];
  for (int i = 0; i < 16; i++)
    p[i] = (i * 37) % 512;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 128;
  sp.ignore_eos = 1;
  /* Warm up (page in the weights), then measure. */
  tc_req_t w;
  tc_run(e, p, 16, &sp, &w);
  tc_destroy(&w);
  double t0 = now_s();
  tc_req_t r;
  tc_run(e, p, 16, &sp, &r);
  double single = r.n / (now_s() - t0);
  assert_int_equal(r.n, 128);
  tc_destroy(&r);

  enum { B = 8 };
  tc_req_t rb[B];
  t0 = now_s();
  for (int i = 0; i < B; i++) {
    tc_init(&rb[i]);
    ms__request_cb_t cb = tc_cb(&rb[i]);
    p[0] = i;
    assert_int_equal(ms__engine_submit(e, p, 16, &sp, &cb, NULL), 0);
  }
  int total = 0;
  for (int i = 0; i < B; i++) {
    tc_wait(&rb[i]);
    total += rb[i].n;
    tc_destroy(&rb[i]);
  }
  double batched = total / (now_s() - t0);
  assert_int_equal(total, B * 128);
  printf("engine speed (default mkmodel size, 2 threads): single request %.1f tokens/s; "
         "batch of %d: %.1f tokens/s (aim: >= 50 single)\n",
         single, B, batched);
  ms__engine_destroy(e);
  tm_remove_dir(dir);
  tc_assert_memsleep_empty();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tokens_per_second),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
