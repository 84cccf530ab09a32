/*
 * model.c - loading a Llama-family model's weights into memsleep memory,
 * reloading them in place, and writing models with random weights.
 *
 * Loading is two passes. The plan pass reads config.json, lists every
 * tensor the configuration needs (name, shape), finds each one in
 * model.safetensors or in the shard that model.safetensors.index.json names,
 * and checks that it is there, has the right shape and a dtype we convert.
 * Only then does the read pass allocate and convert the data. Every tensor
 * goes into one memsleep allocation (under the caller's tag and flags, on
 * the caller's device), each at a 256-byte aligned offset: a sleep or wake
 * maps, copies and unmaps one region instead of hundreds, and small tensors
 * are not each rounded up to the device's mapping granularity. The data is
 * converted to float32 in place on the host; for a CUDA device to bfloat16
 * in a host staging buffer (as large as the largest tensor) that is then
 * copied to the tensor's place on the device. So a
 * broken directory is refused before any memory is taken, and a reload
 * (update_weights_from_disk) is refused before a byte of the live weights is
 * overwritten.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "engine/device.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "memsleep/memsleep.h"

#define NAME_MAX_LEN 96
#define INDEX_FILE   "model.safetensors.index.json"
#define SINGLE_FILE  "model.safetensors"

/* One tensor the configuration needs, and where it was found. */
typedef struct want_t {
  char name[NAME_MAX_LEN];
  int ndim;          /* 1 or 2 */
  uint64_t shape[2]; /* [rows][cols], or [len] */
  void **slot;       /* the model field that points at it */
  int kind;          /* KIND_* (for the random writer's scale) */
  size_t file;       /* index into plan_t.files */
  const ms__st_tensor_t *t;
} want_t;

enum { KIND_EMBED, KIND_NORM, KIND_IN_PROJ, KIND_OUT_PROJ, KIND_BIAS, KIND_HEAD };

/* The result of the plan pass. */
typedef struct plan_t {
  ms__model_config_t cfg;
  want_t *wants;
  size_t nwants;
  ms__st_file_t *files;
  size_t nfiles;
  uint64_t total_bytes; /* float32 bytes of every wanted tensor */
} plan_t;

/* Closes the plan's files and frees its lists; *p is zeroed. */
static void plan_free(plan_t *p) {
  for (size_t i = 0; i < p->nfiles; i++)
    ms__st_close(&p->files[i]);
  free(p->files);
  free(p->wants);
  memset(p, 0, sizeof *p);
}

/* Appends to w[*n] the tensor named fmt (with layer), of shape [rows][cols]
 * (cols 0: a vector of rows), whose pointer lives in *slot. */
static void add_want(want_t *w, size_t *n, void **slot, int kind, uint64_t rows, uint64_t cols,
                     const char *fmt, int layer) {
  want_t *x = &w[(*n)++];
  snprintf(x->name, sizeof x->name, fmt, layer);
  x->slot = slot;
  x->kind = kind;
  x->ndim = cols ? 2 : 1;
  x->shape[0] = rows;
  x->shape[1] = cols;
}

/* Lists the tensors cfg needs, with slots pointing into m (whose layers
 * table must have cfg->num_layers entries). Returns the count (wants must
 * hold 4 + 12 * num_layers). */
static size_t list_wants(const ms__model_config_t *c, ms__model_t *m, want_t *w) {
  size_t n = 0;
  uint64_t h = (uint64_t)c->hidden_size, in = (uint64_t)c->intermediate_size;
  uint64_t qd = (uint64_t)c->num_heads * (uint64_t)c->head_dim;
  uint64_t kvd = (uint64_t)c->num_kv_heads * (uint64_t)c->head_dim;
  add_want(w, &n, &m->embed, KIND_EMBED, (uint64_t)c->vocab_size, h, "model.embed_tokens.weight",
           0);
  for (int l = 0; l < c->num_layers; l++) {
    ms__layer_t *L = &m->layers[l];
    add_want(w, &n, &L->attn_norm, KIND_NORM, h, 0, "model.layers.%d.input_layernorm.weight", l);
    add_want(w, &n, &L->wq, KIND_IN_PROJ, qd, h, "model.layers.%d.self_attn.q_proj.weight", l);
    add_want(w, &n, &L->wk, KIND_IN_PROJ, kvd, h, "model.layers.%d.self_attn.k_proj.weight", l);
    add_want(w, &n, &L->wv, KIND_IN_PROJ, kvd, h, "model.layers.%d.self_attn.v_proj.weight", l);
    if (c->qkv_bias) {
      add_want(w, &n, &L->bq, KIND_BIAS, qd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
      add_want(w, &n, &L->bk, KIND_BIAS, kvd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
      add_want(w, &n, &L->bv, KIND_BIAS, kvd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
    }
    add_want(w, &n, &L->wo, KIND_OUT_PROJ, h, qd, "model.layers.%d.self_attn.o_proj.weight", l);
    add_want(w, &n, &L->ffn_norm, KIND_NORM, h, 0,
             "model.layers.%d.post_attention_layernorm.weight", l);
    add_want(w, &n, &L->w_gate, KIND_IN_PROJ, in, h, "model.layers.%d.mlp.gate_proj.weight", l);
    add_want(w, &n, &L->w_up, KIND_IN_PROJ, in, h, "model.layers.%d.mlp.up_proj.weight", l);
    add_want(w, &n, &L->w_down, KIND_OUT_PROJ, h, in, "model.layers.%d.mlp.down_proj.weight", l);
  }
  add_want(w, &n, &m->final_norm, KIND_NORM, h, 0, "model.norm.weight", 0);
  if (!c->tie_word_embeddings)
    add_want(w, &n, &m->lm_head, KIND_HEAD, (uint64_t)c->vocab_size, h, "lm_head.weight", 0);
  return n;
}

/* Element count of a wanted tensor. */
static uint64_t want_numel(const want_t *w) {
  return w->ndim == 2 ? w->shape[0] * w->shape[1] : w->shape[0];
}

/* Index of the open file named fname (relative to dir) in p, opening it
 * the first time. */
static int plan_file(plan_t *p, const char *dir, const char *fname, size_t *idx) {
  char path[4400];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, fname) >= sizeof path)
    return ms__fail(MEMSLEEP_EINVAL, "%s: path too long", dir);
  for (size_t i = 0; i < p->nfiles; i++)
    if (strcmp(p->files[i].path, path) == 0) {
      *idx = i;
      return 0;
    }
  ms__st_file_t *nf = realloc(p->files, (p->nfiles + 1) * sizeof *nf);
  if (!nf)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: no memory", path);
  p->files = nf;
  int rc = ms__st_open(path, &p->files[p->nfiles]);
  if (rc)
    return rc;
  *idx = p->nfiles++;
  return 0;
}

/* Sets each want's file from the index's weight_map (index_path). */
static int plan_from_index(plan_t *p, const char *dir, const char *index_path) {
  json_error_t jerr;
  json_t *root = json_load_file(index_path, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return ms__fail(MEMSLEEP_EINVAL, "%s: malformed JSON: %s (line %d)", index_path, jerr.text,
                    jerr.line);
  int rc = 0;
  const json_t *map = json_object_get(root, "weight_map");
  if (!json_is_object(map))
    rc = ms__fail(MEMSLEEP_EINVAL, "%s: no \"weight_map\" object", index_path);
  for (size_t i = 0; i < p->nwants && rc == 0; i++) {
    want_t *w = &p->wants[i];
    const json_t *f = json_object_get(map, w->name);
    if (!f) {
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\" is missing from the weight_map", index_path,
                    w->name);
    } else if (!json_is_string(f) || strchr(json_string_value(f), '/') ||
               json_string_value(f)[0] == '\0' || json_string_value(f)[0] == '.') {
      rc = ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": the weight_map entry is not a file name in the directory",
                    index_path, w->name);
    } else {
      rc = plan_file(p, dir, json_string_value(f), &w->file);
    }
  }
  json_decref(root);
  return rc;
}

/* The plan pass: config, tensor list, files, and every tensor checked. On
 * success the caller owns *p (plan_free); slots point into m. */
static int plan_make(const char *dir, ms__model_t *m, plan_t *p) {
  memset(p, 0, sizeof *p);
  int rc = ms__config_load(dir, &p->cfg);
  if (rc)
    return rc;
  p->wants = calloc(4 + 12 * (size_t)p->cfg.num_layers, sizeof *p->wants);
  if (!p->wants)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: no memory for the tensor list", dir);
  p->nwants = list_wants(&p->cfg, m, p->wants);

  char path[4400];
  snprintf(path, sizeof path, "%s/" INDEX_FILE, dir);
  if (access(path, F_OK) == 0) {
    rc = plan_from_index(p, dir, path);
  } else {
    size_t idx = 0;
    rc = plan_file(p, dir, SINGLE_FILE, &idx);
    if (rc == MEMSLEEP_ENOTFOUND)
      rc = ms__fail(MEMSLEEP_ENOTFOUND, "%s: no " SINGLE_FILE " or " INDEX_FILE, dir);
    for (size_t i = 0; i < p->nwants; i++)
      p->wants[i].file = idx;
  }
  for (size_t i = 0; i < p->nwants && rc == 0; i++) {
    want_t *w = &p->wants[i];
    const ms__st_file_t *f = &p->files[w->file];
    w->t = ms__st_find(f, w->name);
    if (!w->t) {
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\" is missing", f->path, w->name);
      break;
    }
    if (!ms__st_dtype_convertible(w->t->dtype)) {
      rc = ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": dtype %s is not supported (F32, F16 or BF16)", f->path,
                    w->name, ms__st_dtype_name(w->t->dtype));
      break;
    }
    int same = w->t->ndim == w->ndim;
    for (int d = 0; d < w->ndim && same; d++)
      same = w->t->shape[d] == w->shape[d];
    if (!same) {
      char got[128] = "[", need[64];
      for (int d = 0; d < w->t->ndim && d < 4; d++)
        snprintf(got + strlen(got), sizeof got - strlen(got), "%s%llu", d ? ", " : "",
                 (unsigned long long)w->t->shape[d]);
      strcat(got, w->t->ndim > 4 ? ", ...]" : "]");
      if (w->ndim == 2)
        snprintf(need, sizeof need, "[%llu, %llu]", (unsigned long long)w->shape[0],
                 (unsigned long long)w->shape[1]);
      else
        snprintf(need, sizeof need, "[%llu]", (unsigned long long)w->shape[0]);
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\" has shape %s, config.json needs %s",
                    f->path, w->name, got, need);
      break;
    }
    p->total_bytes += want_numel(w) * 4;
  }
  if (rc)
    plan_free(p);
  return rc;
}

/* Progress across tensors: done is the bytes of tensors finished. */
typedef struct progress_t {
  ms__progress_fn fn;
  void *user;
  size_t done, total;
} progress_t;

static void tensor_progress(size_t done_bytes, void *user) {
  progress_t *pr = user;
  if (pr->fn)
    pr->fn(pr->done + done_bytes, pr->total, pr->user);
}

/* Reads w into the host staging buffer as float32, converts it to
 * bfloat16 in place (front to back: element i's two bytes never overtake
 * element i's four) and copies it to w's device allocation. */
static int read_to_device(const plan_t *p, const want_t *w, int device, float *staging,
                          progress_t *pr) {
  int rc = ms__st_read_f32(&p->files[w->file], w->t, staging, tensor_progress, pr);
  if (rc)
    return rc;
  size_t n = (size_t)want_numel(w);
  uint16_t *h = (uint16_t *)(void *)staging;
  for (size_t j = 0; j < n; j++)
    h[j] = ms__f32_to_bf16(staging[j]);
  rc = ms__device_upload(device, *w->slot, h, n * sizeof(uint16_t));
  if (rc)
    ms__fail_append(" (tensor \"%s\")", w->name);
  return rc;
}

/* The read pass: every want's data into *w->slot, on device. */
static int plan_read(const plan_t *p, int device, ms__progress_fn fn, void *user) {
  progress_t pr = {fn, user, 0, (size_t)p->total_bytes};
  float *staging = NULL;
  if (device != MEMSLEEP_HOST) {
    size_t most = 1;
    for (size_t i = 0; i < p->nwants; i++)
      if ((size_t)want_numel(&p->wants[i]) > most)
        most = (size_t)want_numel(&p->wants[i]);
    staging = malloc(most * sizeof(float));
    if (!staging)
      return ms__fail(MEMSLEEP_ENOMEM, "no memory for a staging buffer of %zu bytes",
                      most * sizeof(float));
  }
  if (fn)
    fn(0, pr.total, user);
  int rc = 0;
  for (size_t i = 0; i < p->nwants && rc == 0; i++) {
    const want_t *w = &p->wants[i];
    if (staging)
      rc = read_to_device(p, w, device, staging, &pr);
    else
      rc = ms__st_read_f32(&p->files[w->file], w->t, *w->slot, tensor_progress, &pr);
    pr.done += (size_t)want_numel(w) * 4;
  }
  free(staging);
  return rc;
}

/* Frees the model's allocation, then its tables; zeroes *m. */
void ms__model_free(ms__model_t *m) {
  if (!m)
    return;
  if (m->arena)
    memsleep_free(m->arena);
  free(m->layers);
  memset(m, 0, sizeof *m);
}

/* Bytes tensor w takes in the model's allocation: its own, rounded up so
 * that the next one starts 256-byte aligned. */
static size_t tensor_span(const want_t *w, int elem_bytes) {
  size_t bytes = (size_t)want_numel(w) * (size_t)elem_bytes;
  return (bytes + 255) / 256 * 256;
}

/* Loads dir: plan, allocate one block for all tensors, read. On failure the
 * allocation is freed and *out is zeroed. */
int ms__model_load(const char *dir, const char *tag, unsigned flags, int device,
                   ms__progress_fn progress, void *user, ms__model_t *out) {
  if (!out)
    return ms__fail(MEMSLEEP_EINVAL, "ms__model_load: NULL model");
  memset(out, 0, sizeof *out);
  if (!dir || !tag)
    return ms__fail(MEMSLEEP_EINVAL, "ms__model_load: NULL directory or tag");
  int rc = ms__device_check(device);
  if (rc)
    return rc;
  if (strlen(dir) >= sizeof out->dir || strlen(tag) >= sizeof out->tag)
    return ms__fail(MEMSLEEP_EINVAL, "%s: directory or tag name too long", dir);
  ms__model_config_t cfg;
  rc = ms__config_load(dir, &cfg);
  if (rc)
    return rc;
  ms__model_t m;
  memset(&m, 0, sizeof m);
  m.device = device;
  m.elem_bytes = device == MEMSLEEP_HOST ? 4 : 2;
  m.layers = calloc((size_t)cfg.num_layers, sizeof *m.layers);
  if (!m.layers)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: no memory for %d layers", dir, cfg.num_layers);
  plan_t p;
  rc = plan_make(dir, &m, &p);
  if (rc) {
    free(m.layers);
    return rc;
  }
  m.cfg = p.cfg;
  size_t total = 0;
  for (size_t i = 0; i < p.nwants; i++) {
    total += tensor_span(&p.wants[i], m.elem_bytes);
    m.weight_bytes += (size_t)want_numel(&p.wants[i]) * (size_t)m.elem_bytes;
  }
  rc = memsleep_alloc(&m.arena, total, device, tag, flags);
  if (rc) {
    m.arena = NULL;
    ms__fail_append(" (allocating %zu bytes for the %zu tensors of %s)", total, p.nwants, dir);
    goto fail;
  }
  size_t off = 0;
  for (size_t i = 0; i < p.nwants; i++) {
    *p.wants[i].slot = (char *)m.arena + off;
    off += tensor_span(&p.wants[i], m.elem_bytes);
  }
  if (m.cfg.tie_word_embeddings)
    m.lm_head = m.embed;
  rc = plan_read(&p, device, progress, user);
  if (rc)
    goto fail;
  snprintf(m.dir, sizeof m.dir, "%s", dir);
  snprintf(m.tag, sizeof m.tag, "%s", tag);
  plan_free(&p);
  *out = m;
  return 0;
fail:
  plan_free(&p);
  ms__model_free(&m);
  return rc;
}

/* First shape field of a and b that differs, or NULL. */
static const char *shape_mismatch(const ms__model_config_t *a, const ms__model_config_t *b, int *va,
                                  int *vb) {
#define CHECK(field, label)                                                                        \
  if (a->field != b->field) {                                                                      \
    *va = (int)a->field;                                                                           \
    *vb = (int)b->field;                                                                           \
    return label;                                                                                  \
  }
  CHECK(arch, "architecture");
  CHECK(vocab_size, "vocab_size");
  CHECK(hidden_size, "hidden_size");
  CHECK(intermediate_size, "intermediate_size");
  CHECK(num_layers, "num_hidden_layers");
  CHECK(num_heads, "num_attention_heads");
  CHECK(num_kv_heads, "num_key_value_heads");
  CHECK(head_dim, "head_dim");
  CHECK(tie_word_embeddings, "tie_word_embeddings");
  CHECK(qkv_bias, "qkv_bias");
#undef CHECK
  return NULL;
}

/* Reloads in place: the plan pass checks dir completely (its slots point
 * at m's own fields, so the read pass writes into m's existing memory);
 * only then is anything written. */
int ms__model_reload(ms__model_t *m, const char *dir, ms__progress_fn progress, void *user) {
  if (!m || !dir || !m->layers)
    return ms__fail(MEMSLEEP_EINVAL, "ms__model_reload: NULL or unloaded model");
  if (strlen(dir) >= sizeof m->dir)
    return ms__fail(MEMSLEEP_EINVAL, "%s: directory name too long", dir);
  if (memsleep_is_asleep(m->tag) == 1)
    return ms__fail(MEMSLEEP_ESTATE, "%s: the weights' tag \"%s\" is asleep: resume it first", dir,
                    m->tag);
  ms__model_config_t cfg;
  int rc = ms__config_load(dir, &cfg);
  if (rc)
    return rc;
  int va = 0, vb = 0;
  const char *what = shape_mismatch(&cfg, &m->cfg, &va, &vb);
  if (what)
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s/config.json: %s is %d but the loaded model's is %d: cannot reload in "
                    "place",
                    dir, what, va, vb);
  plan_t p;
  rc = plan_make(dir, m, &p);
  if (rc)
    return rc;
  rc = plan_read(&p, m->device, progress, user);
  plan_free(&p);
  if (rc) {
    ms__fail_append(" (weights of %s partly overwritten: reload again)", m->dir);
    return rc;
  }
  m->cfg.rope_theta = cfg.rope_theta;
  m->cfg.rms_norm_eps = cfg.rms_norm_eps;
  m->cfg.bos_token_id = cfg.bos_token_id;
  memcpy(m->cfg.eos_token_ids, cfg.eos_token_ids, sizeof cfg.eos_token_ids);
  m->cfg.n_eos = cfg.n_eos;
  snprintf(m->dir, sizeof m->dir, "%s", dir);
  return 0;
}

/* ---- random models ---- */

void ms__model_spec_default(ms__model_spec_t *s, ms__arch_t arch) {
  memset(s, 0, sizeof *s);
  s->arch = arch;
  s->vocab_size = 512;
  s->hidden_size = 256;
  s->intermediate_size = 688;
  s->num_layers = 4;
  s->num_heads = 8;
  s->num_kv_heads = 4;
  s->max_position = 2048;
  s->rope_theta = 10000.0f;
  s->rms_norm_eps = 1e-6f;
  s->tie_word_embeddings = arch == MS__ARCH_QWEN2;
  s->eos_token_id = -1;
  s->dtype = MS__WDTYPE_F32;
  s->seed = 1;
  s->shards = 1;
}

static uint64_t splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* A uniform double in (0, 1]. */
static double uniform01(uint64_t *s) {
  return ((double)(splitmix64(s) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/* What the writer's fill callback needs. */
typedef struct writer_t {
  const ms__model_spec_t *spec;
  const want_t *wants;
  const size_t *index; /* spec i of the current file -> want */
  ms__progress_fn progress;
  void *user;
  size_t done, total;
} writer_t;

/* Seeded normal values for one tensor: the stream depends only on the
 * seed and the name. Scales keep activations near unit size through the
 * layers: inputs of projections 1/sqrt(fan_in), residual writers also
 * 1/sqrt(2 * layers), norms 1 + noise, biases small. */
static int fill_tensor(size_t i, float *dst, uint64_t numel, void *user) {
  writer_t *wr = user;
  const want_t *w = &wr->wants[wr->index[i]];
  uint64_t s = wr->spec->seed ^ 0x6d656d736c656570ULL;
  for (const char *c = w->name; *c; c++) /* FNV-1a of the name */
    s = (s ^ (unsigned char)*c) * 0x100000001b3ULL;
  double fan_in = w->ndim == 2 ? (double)w->shape[1] : 1.0;
  double mean = 0, std = 0.02;
  switch (w->kind) {
  case KIND_NORM:
    mean = 1.0;
    std = 0.05;
    break;
  case KIND_BIAS:
    std = 0.02;
    break;
  case KIND_OUT_PROJ:
    std = 1.0 / sqrt(fan_in * 2.0 * wr->spec->num_layers);
    break;
  default: /* embeddings, lm_head and input projections */
    std = 1.0 / sqrt(fan_in);
    break;
  }
  for (uint64_t j = 0; j < numel; j += 2) {
    double r = sqrt(-2.0 * log(uniform01(&s)));
    double a = 6.283185307179586 * uniform01(&s);
    dst[j] = (float)(mean + std * r * cos(a));
    if (j + 1 < numel)
      dst[j + 1] = (float)(mean + std * r * sin(a));
  }
  wr->done += (size_t)numel * 4;
  if (wr->progress)
    wr->progress(wr->done, wr->total, wr->user);
  return 0;
}

/* architectures[0] and model_type of each ms__arch_t. */
static const char *const arch_names[][2] = {
    [MS__ARCH_LLAMA] = {"LlamaForCausalLM", "llama"},
    [MS__ARCH_QWEN2] = {"Qwen2ForCausalLM", "qwen2"},
    [MS__ARCH_MISTRAL] = {"MistralForCausalLM", "mistral"},
};

/* f as the shortest decimal that reads back as the same float, as a
 * double (so 1e-6f is written "1e-06", not 9.9999999747524271e-07). */
static double tidy(float f) {
  char buf[32];
  for (int prec = 6; prec < 10; prec++) {
    snprintf(buf, sizeof buf, "%.*g", prec, (double)f);
    if ((float)strtod(buf, NULL) == f)
      break;
  }
  return strtod(buf, NULL);
}

/* Writes dir/config.json for spec s. */
static int write_config(const char *dir, const ms__model_spec_t *s) {
  static const char *torch_dtype[] = {"float32", "float16", "bfloat16"};
  char path[4400];
  snprintf(path, sizeof path, "%s/config.json", dir);
  json_t *c = json_pack(
      "{s:[s],s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:b,s:i,s:n,s:s,s:f}", "architectures",
      arch_names[s->arch][0], "model_type", arch_names[s->arch][1], "hidden_act", "silu",
      "hidden_size", s->hidden_size, "intermediate_size", s->intermediate_size, "num_hidden_layers",
      s->num_layers, "num_attention_heads", s->num_heads, "num_key_value_heads", s->num_kv_heads,
      "max_position_embeddings", s->max_position, "rope_theta", tidy(s->rope_theta), "rms_norm_eps",
      tidy(s->rms_norm_eps), "tie_word_embeddings", s->tie_word_embeddings, "vocab_size",
      s->vocab_size, "bos_token_id", "torch_dtype", torch_dtype[s->dtype], "initializer_range",
      0.02);
  if (!c)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: could not build the JSON", path);
  int bad = json_object_set_new(c, "eos_token_id",
                                s->eos_token_id >= 0 ? json_integer(s->eos_token_id) : json_null());
  if (s->arch == MS__ARCH_MISTRAL)
    bad |= json_object_set_new(c, "sliding_window", json_null());
  if (s->arch == MS__ARCH_QWEN2)
    bad |= json_object_set_new(c, "use_sliding_window", json_false());
  if (bad ||
      json_dump_file(c, path, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(15)) != 0) {
    json_decref(c);
    return ms__fail(MEMSLEEP_EBACKEND, "%s: cannot write: %s", path, strerror(errno));
  }
  json_decref(c);
  return 0;
}

/* Checks a spec as the loader would (through a config it can parse). */
static int check_spec(const ms__model_spec_t *s) {
  if ((unsigned)s->arch > MS__ARCH_MISTRAL || (unsigned)s->dtype > MS__WDTYPE_BF16)
    return ms__fail(MEMSLEEP_EINVAL, "model spec: unknown architecture or dtype");
  if (s->vocab_size < 1 || s->hidden_size < 2 || s->intermediate_size < 1 || s->num_layers < 1 ||
      s->num_heads < 1 || s->num_kv_heads < 1 || s->max_position < 1 || s->shards < 1 ||
      s->shards > 99999)
    return ms__fail(MEMSLEEP_EINVAL, "model spec: sizes, layers, heads and shards must be >= 1");
  if (s->hidden_size % s->num_heads || (s->hidden_size / s->num_heads) % 2)
    return ms__fail(MEMSLEEP_EINVAL,
                    "model spec: hidden %d must be heads (%d) times an even head size",
                    s->hidden_size, s->num_heads);
  if (s->num_heads % s->num_kv_heads)
    return ms__fail(MEMSLEEP_EINVAL, "model spec: heads %d not a multiple of kv heads %d",
                    s->num_heads, s->num_kv_heads);
  if (!(s->rope_theta > 0) || !(s->rms_norm_eps > 0) || s->eos_token_id >= s->vocab_size)
    return ms__fail(MEMSLEEP_EINVAL, "model spec: bad rope_theta, rms_norm_eps or eos id");
  if ((double)s->hidden_size * ((double)s->vocab_size + 4.0 * s->intermediate_size) *
          s->num_layers >
      1e11)
    return ms__fail(MEMSLEEP_EINVAL, "model spec: absurdly large");
  return 0;
}

/* Lists the tensors as the loader would, splits them into shards, writes
 * config.json, then each shard (values from fill_tensor), then the index. */
int ms__model_write_random(const char *dir, const ms__model_spec_t *s, ms__progress_fn progress,
                           void *user, unsigned long long *params, unsigned long long *file_bytes) {
  if (!dir || !s)
    return ms__fail(MEMSLEEP_EINVAL, "ms__model_write_random: NULL argument");
  int rc = check_spec(s);
  if (rc)
    return rc;
  ms__model_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.arch = s->arch;
  cfg.vocab_size = s->vocab_size;
  cfg.hidden_size = s->hidden_size;
  cfg.intermediate_size = s->intermediate_size;
  cfg.num_layers = s->num_layers;
  cfg.num_heads = s->num_heads;
  cfg.num_kv_heads = s->num_kv_heads;
  cfg.head_dim = s->hidden_size / s->num_heads;
  cfg.tie_word_embeddings = s->tie_word_embeddings;
  cfg.qkv_bias = s->arch == MS__ARCH_QWEN2;

  ms__model_t dummy;
  memset(&dummy, 0, sizeof dummy);
  dummy.layers = calloc((size_t)s->num_layers, sizeof *dummy.layers);
  want_t *w = calloc(4 + 12 * (size_t)s->num_layers, sizeof *w);
  ms__st_spec_t *specs = calloc(4 + 12 * (size_t)s->num_layers, sizeof *specs);
  size_t *index = calloc(4 + 12 * (size_t)s->num_layers, sizeof *index);
  size_t *shard_of = calloc(4 + 12 * (size_t)s->num_layers, sizeof *shard_of);
  if (!dummy.layers || !w || !specs || !index || !shard_of) {
    rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory", dir);
    goto out;
  }
  size_t n = list_wants(&cfg, &dummy, w);
  if ((size_t)s->shards > n) {
    rc = ms__fail(MEMSLEEP_EINVAL, "model spec: %d shards but only %zu tensors", s->shards, n);
    goto out;
  }
  uint64_t total = 0, np = 0;
  for (size_t i = 0; i < n; i++) {
    np += want_numel(&w[i]);
    total += want_numel(&w[i]) * 4;
  }
  /* Contiguous runs of tensors, about total/shards bytes each, none empty. */
  size_t N = (size_t)s->shards;
  uint64_t cum = 0;
  long prev = -1;
  for (size_t i = 0; i < n; i++) {
    long target = (long)((double)cum * (double)N / (double)total);
    long need = (long)N - (long)(n - i); /* lowest shard leaving one tensor per later shard */
    long lo = prev > need ? prev : need;
    long hi = prev + 1 < (long)N - 1 ? prev + 1 : (long)N - 1;
    if (lo < 0)
      lo = 0;
    long sh = target < lo ? lo : target > hi ? hi : target;
    shard_of[i] = (size_t)sh;
    prev = sh;
    cum += want_numel(&w[i]) * 4;
  }
  rc = write_config(dir, s);
  if (rc)
    goto out;
  /* A loader prefers the index: never leave one that describes an older
   * model (nor a single file beside a new index). */
  char stale[4400];
  snprintf(stale, sizeof stale, "%s/%s", dir, N == 1 ? INDEX_FILE : SINGLE_FILE);
  if (unlink(stale) != 0 && errno != ENOENT) {
    rc = ms__fail(MEMSLEEP_EBACKEND, "%s: cannot remove: %s", stale, strerror(errno));
    goto out;
  }

  static const ms__st_dtype_t st_dtype[] = {MS__ST_F32, MS__ST_F16, MS__ST_BF16};
  writer_t wr = {s, w, index, progress, user, 0, (size_t)total};
  if (progress)
    progress(0, (size_t)total, user);
  json_t *map = N > 1 ? json_object() : NULL;
  uint64_t written = 0;
  for (size_t k = 0; k < N && rc == 0; k++) {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      if (shard_of[i] != k)
        continue;
      specs[m].name = w[i].name;
      specs[m].dtype = st_dtype[s->dtype];
      specs[m].ndim = w[i].ndim;
      specs[m].shape[0] = w[i].shape[0];
      specs[m].shape[1] = w[i].shape[1];
      index[m++] = i;
    }
    char fname[64], path[4400];
    if (N == 1)
      snprintf(fname, sizeof fname, SINGLE_FILE);
    else
      snprintf(fname, sizeof fname, "model-%05zu-of-%05zu.safetensors", k + 1, N);
    snprintf(path, sizeof path, "%s/%s", dir, fname);
    uint64_t fb = 0;
    rc = ms__st_write(path, specs, m, fill_tensor, &wr, &fb);
    written += fb;
    for (size_t j = 0; j < m && rc == 0 && map; j++)
      if (json_object_set_new(map, specs[j].name, json_string(fname)) != 0)
        rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory", dir);
  }
  if (rc == 0 && map) {
    uint64_t data = 0;
    for (size_t i = 0; i < n; i++)
      data += want_numel(&w[i]) * ms__st_dtype_bytes(st_dtype[s->dtype]);
    json_t *idx =
        json_pack("{s:{s:I},s:O}", "metadata", "total_size", (json_int_t)data, "weight_map", map);
    char path[4400];
    snprintf(path, sizeof path, "%s/" INDEX_FILE, dir);
    if (!idx || json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0)
      rc = ms__fail(MEMSLEEP_EBACKEND, "%s: cannot write: %s", path, strerror(errno));
    json_decref(idx);
  }
  json_decref(map);
  if (rc == 0) {
    if (params)
      *params = np;
    if (file_bytes)
      *file_bytes = written;
  }
out:
  free(dummy.layers);
  free(w);
  free(specs);
  free(index);
  free(shard_of);
  return rc;
}
