/*
 * sampler.h - picking the next token from logits.
 *
 * Greedy (temperature 0: the arg max, lowest id on ties), or sampling from
 * softmax(logits / temperature) restricted to the top_k most likely tokens
 * and then to the smallest set whose probability reaches top_p. Each
 * request carries its own random generator (xoshiro256**, seeded through
 * splitmix64 from the request's seed) and draws exactly one number per
 * sampled token, so the same seed and the same logits give the same tokens
 * whatever else runs in the batch.
 */
#ifndef MEMSLEEP_ENGINE_SAMPLER_H
#define MEMSLEEP_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

/* A request's random generator. */
typedef struct ms__rng {
  uint64_t s[4]; /* xoshiro256** state */
} ms__rng_t;

/* Seeds rng from seed (any value, 0 included). */
void ms__rng_seed(ms__rng_t *rng, uint64_t seed);

/* Next 64 random bits. */
uint64_t ms__rng_next(ms__rng_t *rng);

/* A uniform double in [0, 1). */
double ms__rng_uniform(ms__rng_t *rng);

/* Scratch memory of a sampler (one per scheduler thread), for a vocabulary
 * of up to vocab tokens. */
typedef struct ms__sampler {
  int vocab;   /* tokens the scratch holds */
  int *idx;    /* [vocab] candidate ids */
  float *prob; /* [vocab] their probabilities */
  int *tmp;    /* [vocab] merge-sort scratch */
} ms__sampler_t;

int ms__sampler_init(ms__sampler_t *s, int vocab);
void ms__sampler_free(ms__sampler_t *s);

/* Picks a token from logits[0 .. vocab): temperature 0 is greedy (rng not
 * used); otherwise top_k (0: all), top_p (in (0, 1]) and one draw from
 * rng. Returns the token id. logits is not changed. Values are checked by
 * the caller (ms__engine_submit). */
int ms__sample(ms__sampler_t *s, const float *logits, int vocab, float temperature, int top_k,
               float top_p, ms__rng_t *rng);

#endif /* MEMSLEEP_ENGINE_SAMPLER_H */
