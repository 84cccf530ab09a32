/*
 * test_compute.c - the CPU compute backend on an in-memory model.
 *
 * Proves that a prompt processed in one pass gives the same logits as the
 * same tokens fed one at a time through the paged KV cache, that where the
 * blocks lie in the pool does not matter, and that a sequence's logits are
 * bit-identical alone and inside a batch with other sequences (what makes
 * seeded sampling reproducible). Also covers Qwen2 biases and tied
 * embeddings, and that every scratch byte is freed.
 */
#include "engine/compute.h"
#include "engine/kvcache.h"
#include "engine_helpers.h"

typedef struct fixture {
  tm_model_t tm;     /* the weights */
  ms__model_t m;     /* the model view of them */
  ms__kv_cache_t kv; /* a pool of 64 blocks of 4 tokens */
  void *ctx;         /* the backend */
} fixture_t;

static void fx_open(fixture_t *f, const tm_spec_t *spec, int threads) {
  tm_build(&f->tm, spec);
  tm_as_model(&f->tm, &f->m);
  assert_int_equal(ms__kv_create(&f->kv, spec->layers,
                                 spec->kv_heads * (spec->hidden / spec->heads), 4, 64,
                                 MEMSLEEP_HOST),
                   0);
  assert_int_equal(ms__compute_cpu.create(&f->m, &f->kv.layout, threads, 64, 128, &f->ctx), 0);
}

static void fx_close(fixture_t *f) {
  ms__compute_cpu.destroy(f->ctx);
  ms__kv_destroy(&f->kv);
  free(f->m.layers);
  tm_free(&f->tm);
  tc_assert_memsleep_empty();
}

/* Logits of every position of tokens, prefilled in one pass. */
static void prefill_all(fixture_t *f, const int *tokens, int n, const uint32_t *table, float *out) {
  ms__batch_seq_t s = {.tokens = tokens,
                       .n_tokens = n,
                       .start_pos = 0,
                       .block_table = table,
                       .logits = out,
                       .all_logits = 1};
  assert_int_equal(ms__compute_cpu.forward(f->ctx, &s, 1), 0);
}

static void check_prefill_equals_decode(const tm_spec_t *spec) {
  fixture_t f;
  fx_open(&f, spec, 2);
  enum { N = 19 };
  int tokens[N];
  for (int i = 0; i < N; i++)
    tokens[i] = (i * 37 + 5) % spec->vocab;
  int V = spec->vocab;
  float *a = malloc(sizeof(float) * N * V), *b = malloc(sizeof(float) * N * V);
  uint32_t t1[8] = {0, 1, 2, 3, 4, 5}, t2[8] = {40, 13, 27, 8, 61, 33};
  prefill_all(&f, tokens, N, t1, a);
  for (int i = 0; i < N; i++) {
    ms__batch_seq_t s = {.tokens = tokens + i,
                         .n_tokens = 1,
                         .start_pos = i,
                         .block_table = t2,
                         .logits = b + (size_t)i * V};
    assert_int_equal(ms__compute_cpu.forward(f.ctx, &s, 1), 0);
  }
  double maxdiff = 0, maxabs = 0;
  for (int i = 0; i < N * V; i++) {
    assert_true(isfinite(a[i]));
    maxdiff = fmax(maxdiff, fabs((double)a[i] - b[i]));
    maxabs = fmax(maxabs, fabs((double)a[i]));
  }
  assert_true(maxabs > 0.1);
  assert_true(maxdiff == 0.0);
  free(a);
  free(b);
  fx_close(&f);
}

static void test_prefill_in_one_pass_equals_token_by_token_llama(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  check_prefill_equals_decode(&s);
}

static void test_prefill_in_one_pass_equals_token_by_token_qwen2_tied(void **state) {
  (void)state;
  tm_spec_t s = tm_default_spec();
  s.arch = MS__ARCH_QWEN2;
  s.tie = 1;
  s.kv_heads = 1;
  s.theta = 1000000.0f;
  check_prefill_equals_decode(&s);
}

/* Sequence A's logits alone, then with two other sequences around it (one
 * prefilling, one decoding), must match bit for bit. */
static void test_logits_identical_alone_and_in_batch(void **state) {
  (void)state;
  tm_spec_t spec = tm_default_spec();
  fixture_t f;
  fx_open(&f, &spec, 2);
  int V = spec.vocab;
  int pa[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, pb[7] = {50, 51, 52, 53, 54, 55, 56};
  int pc[3] = {90, 80, 70};
  uint32_t ta[4] = {0, 1, 2}, tb[4] = {10, 11}, tcb[4] = {20};
  float *alone = malloc(sizeof(float) * V), *batched = malloc(sizeof(float) * V);
  float *other = malloc(sizeof(float) * 2 * V);
  ms__batch_seq_t s = {
      .tokens = pa, .n_tokens = 10, .start_pos = 0, .block_table = ta, .logits = alone};
  assert_int_equal(ms__compute_cpu.forward(f.ctx, &s, 1), 0);
  /* Again, in a batch: B prefilled first, then C, A in the middle. */
  ms__batch_seq_t c0 = {.tokens = pc, .n_tokens = 2, .start_pos = 0, .block_table = tcb};
  assert_int_equal(ms__compute_cpu.forward(f.ctx, &c0, 1), 0);
  ms__batch_seq_t batch[3] = {
      {.tokens = pb, .n_tokens = 7, .start_pos = 0, .block_table = tb, .logits = other},
      {.tokens = pa, .n_tokens = 10, .start_pos = 0, .block_table = ta, .logits = batched},
      {.tokens = pc + 2, .n_tokens = 1, .start_pos = 2, .block_table = tcb, .logits = other + V},
  };
  assert_int_equal(ms__compute_cpu.forward(f.ctx, batch, 3), 0);
  assert_memory_equal(alone, batched, sizeof(float) * V);
  free(alone);
  free(batched);
  free(other);
  fx_close(&f);
}

/* One thread or two: the same bits. */
static void test_thread_count_does_not_change_logits(void **state) {
  (void)state;
  tm_spec_t spec = tm_default_spec();
  int V = spec.vocab, tokens[12];
  for (int i = 0; i < 12; i++)
    tokens[i] = (i * 11) % V;
  uint32_t t[3] = {0, 1, 2};
  float *a = malloc(sizeof(float) * 12 * V), *b = malloc(sizeof(float) * 12 * V);
  fixture_t f;
  fx_open(&f, &spec, 1);
  prefill_all(&f, tokens, 12, t, a);
  fx_close(&f);
  fx_open(&f, &spec, 3);
  prefill_all(&f, tokens, 12, t, b);
  fx_close(&f);
  assert_memory_equal(a, b, sizeof(float) * 12 * V);
  free(a);
  free(b);
}

static void test_forward_rejects_what_does_not_fit(void **state) {
  (void)state;
  tm_spec_t spec = tm_default_spec();
  fixture_t f;
  fx_open(&f, &spec, 2);
  int tokens[65] = {0};
  uint32_t t[32] = {0};
  ms__batch_seq_t s = {.tokens = tokens, .n_tokens = 65, .block_table = t};
  assert_int_equal(ms__compute_cpu.forward(f.ctx, &s, 1), MEMSLEEP_EINVAL); /* > max_tokens */
  tokens[0] = spec.vocab;
  s.n_tokens = 1;
  assert_int_equal(ms__compute_cpu.forward(f.ctx, &s, 1), MEMSLEEP_EINVAL); /* bad id */
  tokens[0] = 0;
  s.start_pos = 128;
  assert_int_equal(ms__compute_cpu.forward(f.ctx, &s, 1), MEMSLEEP_EINVAL); /* > context */
  fx_close(&f);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_prefill_in_one_pass_equals_token_by_token_llama),
      cmocka_unit_test(test_prefill_in_one_pass_equals_token_by_token_qwen2_tied),
      cmocka_unit_test(test_logits_identical_alone_and_in_batch),
      cmocka_unit_test(test_thread_count_does_not_change_logits),
      cmocka_unit_test(test_forward_rejects_what_does_not_fit),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
