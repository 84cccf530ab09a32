/*
 * test_model_helpers.h - shared helpers of the model-loading tests.
 *
 * Temporary directories (made and removed whole), writing and patching
 * files, writing a random model through ms__model_write_random, and the
 * checks every error-path test makes: the code, the message naming the file
 * and the tensor, and no memsleep allocation left behind. Everything is
 * static: each test file is its own executable.
 */
#ifndef MEMSLEEP_TESTS_ENGINE_MODEL_HELPERS_H
#define MEMSLEEP_TESTS_ENGINE_MODEL_HELPERS_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "memsleep/memsleep.h"

/* A fresh empty directory under $TMPDIR (or /tmp); the caller frees it
 * with tm_rmdir. */
static inline char *tm_mkdtemp(void) {
  const char *base = getenv("TMPDIR");
  char buf[1024];
  snprintf(buf, sizeof buf, "%s/ms-model-XXXXXX", base && *base ? base : "/tmp");
  char *d = mkdtemp(buf);
  assert_non_null(d);
  return strdup(d);
}

static int tm_rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  (void)st;
  (void)flag;
  (void)ftw;
  return remove(path);
}

static inline void tm_rmdir(char *dir) {
  if (!dir)
    return;
  nftw(dir, tm_rm_one, 16, FTW_DEPTH | FTW_PHYS);
  free(dir);
}

/* dir/name into buf (static storage: valid until the next call). */
static inline const char *tm_path(const char *dir, const char *name) {
  static char buf[4096];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

static inline void tm_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  assert_int_equal(fwrite(data, 1, n, f), n);
  assert_int_equal(fclose(f), 0);
}

/* Reads a whole file (malloc'd, NUL-terminated); *n gets its size. */
static inline char *tm_read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)len + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)len, f), (size_t)len);
  buf[len] = '\0';
  fclose(f);
  if (n)
    *n = (size_t)len;
  return buf;
}

/* Replaces the first occurrence of from with to (same length or not) in
 * the file at path; fails the test if from is absent. */
static inline void tm_patch_file(const char *path, const char *from, const char *to) {
  size_t n;
  char *s = tm_read_file(path, &n);
  char *at = memmem(s, n, from, strlen(from));
  assert_non_null(at);
  size_t pre = (size_t)(at - s), fl = strlen(from), tl = strlen(to);
  char *o = malloc(n - fl + tl + 1);
  assert_non_null(o);
  memcpy(o, s, pre);
  memcpy(o + pre, to, tl);
  memcpy(o + pre + tl, at + fl, n - pre - fl);
  tm_write_file(path, o, n - fl + tl);
  free(o);
  free(s);
}

/* The default spec of arch with dtype, seed and shards, written into dir. */
static inline void tm_write_model(const char *dir, ms__arch_t arch, ms__wdtype_t dtype,
                                  unsigned long long seed, int shards) {
  ms__model_spec_t s;
  ms__model_spec_default(&s, arch);
  s.dtype = dtype;
  s.seed = seed;
  s.shards = shards;
  s.eos_token_id = 509;
  int rc = ms__model_write_random(dir, &s, NULL, NULL, NULL, NULL);
  if (rc)
    fail_msg("ms__model_write_random: %s", memsleep_last_error());
}

/* No memsleep allocation is alive. */
static inline void tm_assert_nothing_allocated(void) {
  memsleep_stats_t st;
  assert_int_equal(memsleep_stats(NULL, &st), 0);
  assert_int_equal(st.allocations, 0);
  assert_int_equal(st.reserved_bytes, 0);
  assert_int_equal(st.backup_bytes, 0);
}

/* The last error contains every one of the NULL-terminated strings. */
static inline void tm_assert_error_names(const char *first, ...) {
  const char *msg = memsleep_last_error();
  va_list ap;
  va_start(ap, first);
  for (const char *s = first; s; s = va_arg(ap, const char *))
    if (!strstr(msg, s)) {
      va_end(ap);
      fail_msg("last error \"%s\" does not mention \"%s\"", msg, s);
    }
  va_end(ap);
}

/* Loads dir expecting failure with code; checks nothing stays allocated
 * and the model is left zeroed. */
static inline void tm_assert_load_fails(const char *dir, int code) {
  ms__model_t m;
  memset(&m, 0x5a, sizeof m);
  int rc = ms__model_load(dir, "weights", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, &m);
  if (rc != code)
    fail_msg("load of %s gave %d (%s), expected %d", dir, rc, memsleep_last_error(), code);
  assert_null(m.layers);
  assert_null(m.arena);
  tm_assert_nothing_allocated();
}

/* The tensors of m as (pointer, floats) pairs, in a fixed order; returns
 * the count (ptrs/lens hold 4 + 12 * layers). */
static inline size_t tm_tensors_of(const ms__model_t *m, float **ptrs, size_t *lens) {
  const ms__model_config_t *c = &m->cfg;
  size_t n = 0, h = (size_t)c->hidden_size, in = (size_t)c->intermediate_size;
  size_t qd = (size_t)c->num_heads * c->head_dim, kvd = (size_t)c->num_kv_heads * c->head_dim;
#define ADD(p, len) (ptrs[n] = (p), lens[n++] = (len))
  ADD(m->embed, (size_t)c->vocab_size * h);
  for (int l = 0; l < c->num_layers; l++) {
    const ms__layer_t *L = &m->layers[l];
    ADD(L->attn_norm, h);
    ADD(L->wq, qd * h);
    ADD(L->wk, kvd * h);
    ADD(L->wv, kvd * h);
    if (c->qkv_bias) {
      ADD(L->bq, qd);
      ADD(L->bk, kvd);
      ADD(L->bv, kvd);
    }
    ADD(L->wo, h * qd);
    ADD(L->ffn_norm, h);
    ADD(L->w_gate, in * h);
    ADD(L->w_up, in * h);
    ADD(L->w_down, h * in);
  }
  ADD(m->final_norm, h);
  if (!c->tie_word_embeddings)
    ADD(m->lm_head, (size_t)c->vocab_size * h);
#undef ADD
  return n;
}

#endif /* MEMSLEEP_TESTS_ENGINE_MODEL_HELPERS_H */
