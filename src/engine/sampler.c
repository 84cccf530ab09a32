/*
 * sampler.c - greedy, temperature, top-k and top-p sampling with a
 * per-request generator (see sampler.h).
 *
 * Candidates are ordered by logit, then by id, a total order, so the result
 * never depends on the sort's whims. The common cases avoid the full sort:
 * greedy is one scan, plain temperature sampling walks the ids in order,
 * and top_k keeps a small heap.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "engine/sampler.h"
#include "memsleep/memsleep.h"

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void ms__rng_seed(ms__rng_t *rng, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++)
    rng->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

uint64_t ms__rng_next(ms__rng_t *rng) {
  uint64_t *s = rng->s;
  uint64_t r = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

double ms__rng_uniform(ms__rng_t *rng) {
  return (double)(ms__rng_next(rng) >> 11) * 0x1.0p-53;
}

int ms__sampler_init(ms__sampler_t *s, int vocab) {
  memset(s, 0, sizeof *s);
  if (vocab < 1)
    return ms__fail(MEMSLEEP_EINVAL, "sampler: vocabulary of %d tokens", vocab);
  s->idx = malloc(sizeof(int) * (size_t)vocab);
  s->prob = malloc(sizeof(float) * (size_t)vocab);
  s->tmp = malloc(sizeof(int) * (size_t)vocab);
  if (!s->idx || !s->prob || !s->tmp) {
    ms__sampler_free(s);
    return ms__fail(MEMSLEEP_ENOMEM, "sampler: scratch for %d tokens", vocab);
  }
  s->vocab = vocab;
  return 0;
}

void ms__sampler_free(ms__sampler_t *s) {
  free(s->idx);
  free(s->prob);
  free(s->tmp);
  memset(s, 0, sizeof *s);
}

/* 1 if token a ranks before token b: larger logit, then smaller id. */
static int before(const float *logits, int a, int b) {
  return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
}

/* Sorts idx[0 .. n) by rank: a merge sort (tmp: n ints of scratch) with
 * insertion sort for short runs; no global comparator state, as qsort would
 * need. */
static void sort_by_rank(const float *logits, int *idx, int *tmp, int n) {
  if (n <= 32) {
    for (int i = 1; i < n; i++) {
      int v = idx[i], j = i - 1;
      while (j >= 0 && before(logits, v, idx[j])) {
        idx[j + 1] = idx[j];
        j--;
      }
      idx[j + 1] = v;
    }
    return;
  }
  int h = n / 2;
  sort_by_rank(logits, idx, tmp, h);
  sort_by_rank(logits, idx + h, tmp, n - h);
  int i = 0, j = h, k = 0;
  while (i < h && j < n)
    tmp[k++] = before(logits, idx[j], idx[i]) ? idx[j++] : idx[i++];
  while (i < h)
    tmp[k++] = idx[i++];
  while (j < n)
    tmp[k++] = idx[j++];
  memcpy(idx, tmp, sizeof(int) * (size_t)n);
}

/* Sift-down in a min-heap (by rank: the root is the worst kept token). */
static void heap_down(const float *logits, int *hp, int n, int i) {
  for (;;) {
    int l = 2 * i + 1, r = l + 1, w = i;
    if (l < n && before(logits, hp[w], hp[l]))
      w = l;
    if (r < n && before(logits, hp[w], hp[r]))
      w = r;
    if (w == i)
      return;
    int t = hp[i];
    hp[i] = hp[w];
    hp[w] = t;
    i = w;
  }
}

int ms__sample(ms__sampler_t *s, const float *logits, int vocab, float temperature, int top_k,
               float top_p, ms__rng_t *rng) {
  if (temperature <= 0.0f || top_k == 1) {
    int best = 0;
    for (int i = 1; i < vocab; i++)
      if (logits[i] > logits[best])
        best = i;
    return best;
  }
  int n = vocab;
  int sorted = 0;
  if (top_k > 0 && top_k < vocab) {
    /* Keep the top_k best in a heap whose root is the worst of them. */
    int *hp = s->idx;
    for (int i = 0; i < top_k; i++)
      hp[i] = i;
    for (int i = top_k / 2 - 1; i >= 0; i--)
      heap_down(logits, hp, top_k, i);
    for (int i = top_k; i < vocab; i++)
      if (before(logits, i, hp[0])) {
        hp[0] = i;
        heap_down(logits, hp, top_k, 0);
      }
    n = top_k;
    sort_by_rank(logits, s->idx, s->tmp, n);
    sorted = 1;
  } else {
    for (int i = 0; i < vocab; i++)
      s->idx[i] = i;
  }
  if (top_p < 1.0f && !sorted) {
    sort_by_rank(logits, s->idx, s->tmp, n);
    sorted = 1;
  }
  float mx = logits[s->idx[0]];
  if (!sorted)
    for (int i = 1; i < n; i++)
      if (logits[s->idx[i]] > mx)
        mx = logits[s->idx[i]];
  double sum = 0;
  for (int i = 0; i < n; i++) {
    float p = expf((logits[s->idx[i]] - mx) / temperature);
    s->prob[i] = p;
    sum += p;
  }
  if (top_p < 1.0f) {
    /* Smallest head of the ranking whose mass reaches top_p (at least one). */
    double want = (double)top_p * sum, acc = 0;
    int keep = 0;
    while (keep < n) {
      acc += s->prob[keep++];
      if (acc >= want)
        break;
    }
    n = keep;
    sum = acc;
  }
  double u = ms__rng_uniform(rng) * sum, acc = 0;
  for (int i = 0; i < n; i++) {
    acc += s->prob[i];
    if (u < acc)
      return s->idx[i];
  }
  return s->idx[n - 1];
}
