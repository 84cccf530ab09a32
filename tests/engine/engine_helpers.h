/*
 * engine_helpers.h - tiny random Llama-family models for the engine tests.
 *
 * tm_build() makes the weights of a small model from a seed (Hugging Face
 * tensor names, row-major float32), tm_write_dir() writes them as a model
 * directory (config.json + model.safetensors) that ms__model_load reads,
 * and tm_as_model() points an in-memory ms__model_t at them so the compute
 * backend can be tested without the loader. Also: a collector of one
 * request's tokens and finish, and waiting for it.
 */
#ifndef MEMSLEEP_TESTS_ENGINE_HELPERS_H
#define MEMSLEEP_TESTS_ENGINE_HELPERS_H

#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine/engine.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define TM_MAX_TENSORS 256

typedef struct tm_spec {
  ms__arch_t arch; /* which family */
  int vocab;       /* vocab_size */
  int hidden;      /* hidden_size */
  int inter;       /* intermediate_size */
  int layers;      /* num_hidden_layers */
  int heads;       /* num_attention_heads */
  int kv_heads;    /* num_key_value_heads */
  int max_pos;     /* max_position_embeddings */
  float theta;     /* rope_theta */
  int tie;         /* tie_word_embeddings */
  int eos;         /* eos_token_id */
  uint64_t seed;   /* weights' seed */
} tm_spec_t;

typedef struct tm_tensor {
  char name[96];  /* Hugging Face name */
  int rows, cols; /* shape (cols 0: a vector of rows) */
  float *data;    /* rows * max(cols, 1) floats (heap) */
} tm_tensor_t;

typedef struct tm_model {
  tm_spec_t spec;                /* what it is */
  tm_tensor_t t[TM_MAX_TENSORS]; /* its tensors */
  int n;                         /* how many */
} tm_model_t;

static inline tm_spec_t tm_default_spec(void) {
  tm_spec_t s = {.arch = MS__ARCH_LLAMA,
                 .vocab = 97,
                 .hidden = 32,
                 .inter = 48,
                 .layers = 2,
                 .heads = 4,
                 .kv_heads = 2,
                 .max_pos = 256,
                 .theta = 10000.0f,
                 .tie = 0,
                 .eos = 96,
                 .seed = 1};
  return s;
}

static inline uint64_t tm_rand(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Uniform in [-1, 1). */
static inline float tm_uniform(uint64_t *s) {
  return (float)((double)(tm_rand(s) >> 11) * 0x1.0p-52 - 1.0);
}

static inline tm_tensor_t *tm_add(tm_model_t *m, const char *name, int rows, int cols, float scale,
                                  float base, uint64_t *rs) {
  tm_tensor_t *t = &m->t[m->n++];
  snprintf(t->name, sizeof t->name, "%s", name);
  t->rows = rows;
  t->cols = cols;
  size_t n = (size_t)rows * (size_t)(cols ? cols : 1);
  t->data = malloc(sizeof(float) * n);
  for (size_t i = 0; i < n; i++)
    t->data[i] = base + scale * tm_uniform(rs);
  return t;
}

static inline tm_tensor_t *tm_find(tm_model_t *m, const char *name) {
  for (int i = 0; i < m->n; i++)
    if (strcmp(m->t[i].name, name) == 0)
      return &m->t[i];
  return NULL;
}

/* Builds the tensors of spec. Weights of a projection with `in` inputs are
 * uniform in +-1.5/sqrt(in) so activations stay of order one. */
static inline void tm_build(tm_model_t *m, const tm_spec_t *spec) {
  memset(m, 0, sizeof *m);
  m->spec = *spec;
  uint64_t rs = spec->seed;
  int H = spec->hidden, hd = H / spec->heads, qd = spec->heads * hd, kvd = spec->kv_heads * hd;
  int I = spec->inter;
  float sh = 1.5f / sqrtf((float)H), si = 1.5f / sqrtf((float)I), sq = 1.5f / sqrtf((float)qd);
  char nm[96];
  tm_add(m, "model.embed_tokens.weight", spec->vocab, H, 1.0f, 0.0f, &rs);
  for (int l = 0; l < spec->layers; l++) {
#define TM_NAME(fmt) (snprintf(nm, sizeof nm, "model.layers.%d." fmt, l), nm)
    tm_add(m, TM_NAME("input_layernorm.weight"), H, 0, 0.2f, 1.0f, &rs);
    tm_add(m, TM_NAME("self_attn.q_proj.weight"), qd, H, sh, 0.0f, &rs);
    tm_add(m, TM_NAME("self_attn.k_proj.weight"), kvd, H, sh, 0.0f, &rs);
    tm_add(m, TM_NAME("self_attn.v_proj.weight"), kvd, H, sh, 0.0f, &rs);
    if (spec->arch == MS__ARCH_QWEN2) {
      tm_add(m, TM_NAME("self_attn.q_proj.bias"), qd, 0, 0.3f, 0.0f, &rs);
      tm_add(m, TM_NAME("self_attn.k_proj.bias"), kvd, 0, 0.3f, 0.0f, &rs);
      tm_add(m, TM_NAME("self_attn.v_proj.bias"), kvd, 0, 0.3f, 0.0f, &rs);
    }
    tm_add(m, TM_NAME("self_attn.o_proj.weight"), H, qd, sq, 0.0f, &rs);
    tm_add(m, TM_NAME("post_attention_layernorm.weight"), H, 0, 0.2f, 1.0f, &rs);
    tm_add(m, TM_NAME("mlp.gate_proj.weight"), I, H, sh, 0.0f, &rs);
    tm_add(m, TM_NAME("mlp.up_proj.weight"), I, H, sh, 0.0f, &rs);
    tm_add(m, TM_NAME("mlp.down_proj.weight"), H, I, si, 0.0f, &rs);
#undef TM_NAME
  }
  tm_add(m, "model.norm.weight", H, 0, 0.2f, 1.0f, &rs);
  if (!spec->tie)
    tm_add(m, "lm_head.weight", spec->vocab, H, sh * 2.0f, 0.0f, &rs);
}

static inline void tm_free(tm_model_t *m) {
  for (int i = 0; i < m->n; i++)
    free(m->t[i].data);
  m->n = 0;
}

/* Points *out at m's tensors (heap memory, owned by m). out->layers is
 * malloc'd: free it with free(out->layers), never ms__model_free. */
static inline void tm_as_model(tm_model_t *m, ms__model_t *out) {
  const tm_spec_t *s = &m->spec;
  memset(out, 0, sizeof *out);
  ms__model_config_t *c = &out->cfg;
  c->arch = s->arch;
  c->vocab_size = s->vocab;
  c->hidden_size = s->hidden;
  c->intermediate_size = s->inter;
  c->num_layers = s->layers;
  c->num_heads = s->heads;
  c->num_kv_heads = s->kv_heads;
  c->head_dim = s->hidden / s->heads;
  c->max_position = s->max_pos;
  c->rope_theta = s->theta;
  c->rms_norm_eps = 1e-6f;
  c->tie_word_embeddings = s->tie;
  c->qkv_bias = s->arch == MS__ARCH_QWEN2;
  c->bos_token_id = -1;
  c->eos_token_ids[0] = s->eos;
  c->n_eos = 1;
  out->device = MEMSLEEP_HOST;
  out->elem_bytes = 4;
  out->embed = tm_find(m, "model.embed_tokens.weight")->data;
  out->final_norm = tm_find(m, "model.norm.weight")->data;
  out->lm_head = s->tie ? out->embed : tm_find(m, "lm_head.weight")->data;
  out->layers = calloc((size_t)s->layers, sizeof *out->layers);
  char nm[96];
  for (int l = 0; l < s->layers; l++) {
    ms__layer_t *L = &out->layers[l];
#define TM_GET(fmt)                                                                                \
  (snprintf(nm, sizeof nm, "model.layers.%d." fmt, l), tm_find(m, nm) ? tm_find(m, nm)->data : NULL)
    L->attn_norm = TM_GET("input_layernorm.weight");
    L->wq = TM_GET("self_attn.q_proj.weight");
    L->wk = TM_GET("self_attn.k_proj.weight");
    L->wv = TM_GET("self_attn.v_proj.weight");
    L->bq = TM_GET("self_attn.q_proj.bias");
    L->bk = TM_GET("self_attn.k_proj.bias");
    L->bv = TM_GET("self_attn.v_proj.bias");
    L->wo = TM_GET("self_attn.o_proj.weight");
    L->ffn_norm = TM_GET("post_attention_layernorm.weight");
    L->w_gate = TM_GET("mlp.gate_proj.weight");
    L->w_up = TM_GET("mlp.up_proj.weight");
    L->w_down = TM_GET("mlp.down_proj.weight");
#undef TM_GET
  }
}

static inline const char *tm_arch_name(ms__arch_t a) {
  return a == MS__ARCH_QWEN2     ? "Qwen2ForCausalLM"
         : a == MS__ARCH_MISTRAL ? "MistralForCausalLM"
                                 : "LlamaForCausalLM";
}

static inline const char *tm_model_type(ms__arch_t a) {
  return a == MS__ARCH_QWEN2 ? "qwen2" : a == MS__ARCH_MISTRAL ? "mistral" : "llama";
}

/* Writes m as dir/config.json and dir/model.safetensors (F32). Returns 0
 * or -1. */
static inline int tm_write_dir(const tm_model_t *m, const char *dir) {
  const tm_spec_t *s = &m->spec;
  mkdir(dir, 0755);
  char path[4096];
  snprintf(path, sizeof path, "%s/config.json", dir);
  FILE *f = fopen(path, "w");
  if (!f)
    return -1;
  fprintf(f,
          "{\"architectures\": [\"%s\"], \"model_type\": \"%s\", \"vocab_size\": %d, "
          "\"hidden_size\": %d, \"intermediate_size\": %d, \"num_hidden_layers\": %d, "
          "\"num_attention_heads\": %d, \"num_key_value_heads\": %d, "
          "\"max_position_embeddings\": %d, \"rope_theta\": %.1f, \"rms_norm_eps\": 1e-06, "
          "\"tie_word_embeddings\": %s, \"bos_token_id\": null, \"eos_token_id\": %d, "
          "\"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}\n",
          tm_arch_name(s->arch), tm_model_type(s->arch), s->vocab, s->hidden, s->inter, s->layers,
          s->heads, s->kv_heads, s->max_pos, (double)s->theta, s->tie ? "true" : "false", s->eos);
  fclose(f);
  /* safetensors: u64 header length, JSON header, then the data. */
  size_t hcap = 64 * 1024, hlen = 0, off = 0;
  char *h = malloc(hcap);
  hlen += (size_t)snprintf(h + hlen, hcap - hlen, "{");
  for (int i = 0; i < m->n; i++) {
    const tm_tensor_t *t = &m->t[i];
    size_t bytes = sizeof(float) * (size_t)t->rows * (size_t)(t->cols ? t->cols : 1);
    char shape[64];
    if (t->cols)
      snprintf(shape, sizeof shape, "[%d, %d]", t->rows, t->cols);
    else
      snprintf(shape, sizeof shape, "[%d]", t->rows);
    hlen += (size_t)snprintf(h + hlen, hcap - hlen,
                             "%s\"%s\": {\"dtype\": \"F32\", \"shape\": %s, "
                             "\"data_offsets\": [%zu, %zu]}",
                             i ? ", " : "", t->name, shape, off, off + bytes);
    off += bytes;
  }
  hlen += (size_t)snprintf(h + hlen, hcap - hlen, "}");
  while (hlen % 8)
    h[hlen++] = ' ';
  snprintf(path, sizeof path, "%s/model.safetensors", dir);
  f = fopen(path, "wb");
  if (!f) {
    free(h);
    return -1;
  }
  uint64_t n64 = hlen;
  fwrite(&n64, 8, 1, f);
  fwrite(h, 1, hlen, f);
  for (int i = 0; i < m->n; i++) {
    const tm_tensor_t *t = &m->t[i];
    fwrite(t->data, sizeof(float), (size_t)t->rows * (size_t)(t->cols ? t->cols : 1), f);
  }
  free(h);
  return fclose(f) == 0 ? 0 : -1;
}

/* Writes the model of spec into a fresh temporary directory (under
 * $TMPDIR, else /tmp) whose path goes to dir (cap bytes). */
static inline void tm_make_dir(const tm_spec_t *spec, char *dir, size_t cap) {
  const char *tmp = getenv("TMPDIR");
  snprintf(dir, cap, "%s/memsleep-engine-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
  assert_non_null(mkdtemp(dir));
  tm_model_t m;
  tm_build(&m, spec);
  assert_int_equal(tm_write_dir(&m, dir), 0);
  tm_free(&m);
}

static inline void tm_remove_dir(const char *dir) {
  char p[4200];
  snprintf(p, sizeof p, "%s/config.json", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/model.safetensors", dir);
  unlink(p);
  rmdir(dir);
}

/* ---- collecting one request's output -------------------------------- */

#define TC_MAX_TOKENS 512

typedef struct tc_req {
  pthread_mutex_t mu;        /* guards the rest */
  pthread_cond_t cv;         /* signalled on finish */
  int tokens[TC_MAX_TOKENS]; /* tokens in order */
  int n;                     /* how many */
  int done;                  /* on_finish ran */
  int finishes;              /* times on_finish ran (must be 1) */
  ms__finish_info_t info;    /* its argument (error copied out) */
  char error[256];           /* info.error */
} tc_req_t;

static inline void tc_on_token(void *u, int tok) {
  tc_req_t *r = u;
  pthread_mutex_lock(&r->mu);
  if (r->n < TC_MAX_TOKENS)
    r->tokens[r->n++] = tok;
  pthread_mutex_unlock(&r->mu);
}

static inline void tc_on_finish(void *u, const ms__finish_info_t *info) {
  tc_req_t *r = u;
  pthread_mutex_lock(&r->mu);
  r->info = *info;
  if (info->error)
    snprintf(r->error, sizeof r->error, "%s", info->error);
  r->info.error = NULL;
  r->done = 1;
  r->finishes++;
  pthread_cond_broadcast(&r->cv);
  pthread_mutex_unlock(&r->mu);
}

static inline void tc_init(tc_req_t *r) {
  memset(r, 0, sizeof *r);
  pthread_mutex_init(&r->mu, NULL);
  pthread_cond_init(&r->cv, NULL);
}

static inline void tc_destroy(tc_req_t *r) {
  pthread_mutex_destroy(&r->mu);
  pthread_cond_destroy(&r->cv);
}

static inline ms__request_cb_t tc_cb(tc_req_t *r) {
  ms__request_cb_t cb = {.on_token = tc_on_token, .on_finish = tc_on_finish, .user = r};
  return cb;
}

/* Waits (at most 120 s) for r to finish. */
static inline void tc_wait(tc_req_t *r) {
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 120;
  pthread_mutex_lock(&r->mu);
  while (!r->done)
    if (pthread_cond_timedwait(&r->cv, &r->mu, &until) != 0)
      break;
  int done = r->done;
  pthread_mutex_unlock(&r->mu);
  assert_true(done);
}

/* Engine options for a model directory: small pools, two threads. */
static inline ms__engine_options_t tc_options(const char *dir) {
  ms__engine_options_t o;
  memset(&o, 0, sizeof o);
  o.model_dir = dir;
  o.device = MEMSLEEP_HOST;
  o.threads = 2;
  o.kv_block_tokens = 4;
  o.kv_blocks = 256;
  o.max_batch = 8;
  o.max_queue = 64;
  o.prefix_cache = 1;
  return o;
}

/* Submits one request and waits for it to finish; r is initialised here
 * and must be tc_destroy'ed. */
static inline void tc_run(ms__engine_t *e, const int *prompt, size_t n, const ms__sampling_t *sp,
                          tc_req_t *r) {
  tc_init(r);
  ms__request_cb_t cb = tc_cb(r);
  assert_int_equal(ms__engine_submit(e, prompt, n, sp, &cb, NULL), 0);
  tc_wait(r);
  assert_int_equal(r->finishes, 1);
}

/* Waits (at most 60 s) until r has at least n tokens or has finished. */
static inline void tc_wait_tokens(tc_req_t *r, int n) {
  for (int i = 0; i < 60000; i++) {
    pthread_mutex_lock(&r->mu);
    int ok = r->n >= n || r->done;
    pthread_mutex_unlock(&r->mu);
    if (ok)
      return;
    usleep(1000);
  }
  fail_msg("request produced no tokens in 60 s");
}

static inline void tc_assert_memsleep_empty(void) {
  memsleep_stats_t st;
  assert_int_equal(memsleep_stats(NULL, &st), 0);
  assert_int_equal(st.allocations, 0);
  assert_int_equal(st.reserved_bytes, 0);
  assert_int_equal(st.resident_bytes, 0);
  assert_int_equal(st.backup_bytes, 0);
}

#endif /* MEMSLEEP_TESTS_ENGINE_HELPERS_H */
