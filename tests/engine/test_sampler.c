/*
 * test_sampler.c - greedy, temperature, top-k, top-p and seeding.
 *
 * Proves what a user of sampling_params notices: greedy picks the arg max
 * (lowest id on ties) whatever the seed; the same seed gives the same
 * draws and different seeds differ; top_k never returns a token outside
 * the k best and top_p never one outside the nucleus; temperature sharpens
 * or flattens the distribution as it should.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine/sampler.h"

#define V 64

static void fill_logits(float *l) {
  for (int i = 0; i < V; i++)
    l[i] = (float)((i * 29) % V) / 8.0f; /* a permutation of 0 .. 7.875 */
}

static void test_greedy_picks_argmax_lowest_id_on_ties(void **state) {
  (void)state;
  ms__sampler_t s;
  assert_int_equal(ms__sampler_init(&s, V), 0);
  float l[V];
  fill_logits(l);
  int best = 0;
  for (int i = 0; i < V; i++)
    if (l[i] > l[best])
      best = i;
  ms__rng_t rng;
  ms__rng_seed(&rng, 5);
  assert_int_equal(ms__sample(&s, l, V, 0.0f, 0, 1.0f, &rng), best);
  l[3] = l[best];
  l[60] = l[best];
  assert_int_equal(ms__sample(&s, l, V, 0.0f, 0, 1.0f, &rng), 3);
  /* top_k 1 is greedy too. */
  assert_int_equal(ms__sample(&s, l, V, 1.0f, 1, 1.0f, &rng), 3);
  ms__sampler_free(&s);
}

static void draw(ms__sampler_t *s, uint64_t seed, float temp, int k, float p, int *out, int n) {
  float l[V];
  fill_logits(l);
  ms__rng_t rng;
  ms__rng_seed(&rng, seed);
  for (int i = 0; i < n; i++)
    out[i] = ms__sample(s, l, V, temp, k, p, &rng);
}

static void test_same_seed_same_tokens_other_seed_differs(void **state) {
  (void)state;
  ms__sampler_t s;
  assert_int_equal(ms__sampler_init(&s, V), 0);
  int a[200], b[200], c[200];
  draw(&s, 42, 1.5f, 0, 1.0f, a, 200);
  draw(&s, 42, 1.5f, 0, 1.0f, b, 200);
  draw(&s, 43, 1.5f, 0, 1.0f, c, 200);
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, c, sizeof a);
  draw(&s, 7, 0.8f, 10, 0.9f, a, 200);
  draw(&s, 7, 0.8f, 10, 0.9f, b, 200);
  assert_memory_equal(a, b, sizeof a);
  ms__sampler_free(&s);
}

static void test_top_k_keeps_only_the_k_best(void **state) {
  (void)state;
  ms__sampler_t s;
  assert_int_equal(ms__sampler_init(&s, V), 0);
  float l[V];
  fill_logits(l);
  int out[2000], seen[V] = {0};
  draw(&s, 1, 5.0f, 5, 1.0f, out, 2000);
  for (int i = 0; i < 2000; i++) {
    int rank = 0;
    for (int j = 0; j < V; j++)
      rank += l[j] > l[out[i]];
    assert_true(rank < 5);
    seen[out[i]] = 1;
  }
  int distinct = 0;
  for (int j = 0; j < V; j++)
    distinct += seen[j];
  assert_int_equal(distinct, 5); /* high temperature: all five show up */
  ms__sampler_free(&s);
}

static void test_top_p_keeps_the_nucleus(void **state) {
  (void)state;
  ms__sampler_t s;
  assert_int_equal(ms__sampler_init(&s, V), 0);
  float l[V];
  for (int i = 0; i < V; i++)
    l[i] = -10.0f;
  l[7] = 2.0f; /* p ~ 0.64 */
  l[9] = 1.5f; /* p ~ 0.36 */
  int out[1000];
  ms__rng_t rng;
  ms__rng_seed(&rng, 3);
  int n7 = 0;
  for (int i = 0; i < 1000; i++) {
    out[i] = ms__sample(&s, l, V, 1.0f, 0, 0.5f, &rng); /* nucleus: {7} */
    assert_int_equal(out[i], 7);
  }
  for (int i = 0; i < 1000; i++) {
    out[i] = ms__sample(&s, l, V, 1.0f, 0, 0.9f, &rng); /* nucleus: {7, 9} */
    assert_true(out[i] == 7 || out[i] == 9);
    n7 += out[i] == 7;
  }
  assert_true(n7 > 550 && n7 < 750);
  ms__sampler_free(&s);
}

static void test_temperature_sharpens_and_flattens(void **state) {
  (void)state;
  ms__sampler_t s;
  assert_int_equal(ms__sampler_init(&s, V), 0);
  int out[3000];
  float l[V];
  fill_logits(l);
  int best = 0;
  for (int i = 0; i < V; i++)
    if (l[i] > l[best])
      best = i;
  draw(&s, 11, 0.01f, 0, 1.0f, out, 3000);
  int hits = 0;
  for (int i = 0; i < 3000; i++)
    hits += out[i] == best;
  assert_true(hits > 2900);
  draw(&s, 11, 100.0f, 0, 1.0f, out, 3000);
  hits = 0;
  for (int i = 0; i < 3000; i++)
    hits += out[i] == best;
  assert_true(hits < 200); /* nearly uniform over 64 */
  ms__sampler_free(&s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_greedy_picks_argmax_lowest_id_on_ties),
      cmocka_unit_test(test_same_seed_same_tokens_other_seed_differs),
      cmocka_unit_test(test_top_k_keeps_only_the_k_best),
      cmocka_unit_test(test_top_p_keeps_the_nucleus),
      cmocka_unit_test(test_temperature_sharpens_and_flattens),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
