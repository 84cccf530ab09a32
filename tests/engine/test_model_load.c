/*
 * test_model_load.c - loading model directories, good and broken.
 *
 * Proves that each architecture (Llama, Qwen2 with its q/k/v biases and tied
 * embeddings, Mistral) loads in each on-disk dtype with the configuration
 * and shapes config.json describes; that f16 and bf16 weights are exactly
 * the rounded f32 ones; that a sharded model loads the same values as a
 * single file; that memsleep-mkmodel's output loads and gives usable logits;
 * and that every broken directory (missing config.json, unsupported
 * architecture, missing tensor, wrong shape, bad dtype, truncated file,
 * missing shard) is refused with the documented code and a message naming
 * the file and the tensor, leaving no memsleep allocation behind.
 */
#include <math.h>
#include <sys/wait.h>

#include "engine/tokenizer.h"
#include "test_model_helpers.h"

static const char *const arch_flag[] = {"llama", "qwen2", "mistral"};

static void load_ok(const char *dir, ms__model_t *m) {
  int rc = ms__model_load(dir, "weights", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, m);
  if (rc)
    fail_msg("load %s: %d %s", dir, rc, memsleep_last_error());
}

static void rmsnorm(float *o, const float *x, const float *w, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++)
    ss += (double)x[i] * x[i];
  float s = 1.0f / sqrtf((float)(ss / n) + eps);
  for (int i = 0; i < n; i++)
    o[i] = x[i] * s * w[i];
}

static void matvec(float *o, const float *W, const float *x, const float *b, int rows, int cols) {
  for (int r = 0; r < rows; r++) {
    double acc = b ? b[r] : 0;
    for (int c = 0; c < cols; c++)
      acc += (double)W[(size_t)r * cols + c] * x[c];
    o[r] = (float)acc;
  }
}

/* Logits of one token at position 0 (attention attends to itself only, and
 * RoPE at position 0 is the identity): a reference independent of the
 * engine's compute code. logits holds vocab floats. */
static void forward_first_token(const ms__model_t *m, int token, float *logits) {
  const ms__model_config_t *c = &m->cfg;
  int h = c->hidden_size, qd = c->num_heads * c->head_dim, kvd = c->num_kv_heads * c->head_dim;
  int in = c->intermediate_size, group = c->num_heads / c->num_kv_heads;
  float *x = malloc(sizeof(float) * h), *xn = malloc(sizeof(float) * h);
  float *v = malloc(sizeof(float) * kvd), *att = malloc(sizeof(float) * qd);
  float *o = malloc(sizeof(float) * h), *g = malloc(sizeof(float) * in),
        *u = malloc(sizeof(float) * in);
  memcpy(x, (const float *)m->embed + (size_t)token * h, sizeof(float) * h);
  for (int l = 0; l < c->num_layers; l++) {
    const ms__layer_t *L = &m->layers[l];
    rmsnorm(xn, x, L->attn_norm, h, c->rms_norm_eps);
    matvec(v, L->wv, xn, L->bv, kvd, h);
    for (int hd = 0; hd < c->num_heads; hd++)
      memcpy(att + hd * c->head_dim, v + (hd / group) * c->head_dim, sizeof(float) * c->head_dim);
    matvec(o, L->wo, att, NULL, h, qd);
    for (int i = 0; i < h; i++)
      x[i] += o[i];
    rmsnorm(xn, x, L->ffn_norm, h, c->rms_norm_eps);
    matvec(g, L->w_gate, xn, NULL, in, h);
    matvec(u, L->w_up, xn, NULL, in, h);
    for (int i = 0; i < in; i++)
      g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    matvec(o, L->w_down, g, NULL, h, in);
    for (int i = 0; i < h; i++)
      x[i] += o[i];
  }
  rmsnorm(xn, x, m->final_norm, h, c->rms_norm_eps);
  matvec(logits, m->lm_head, xn, NULL, c->vocab_size, h);
  free(x);
  free(xn);
  free(v);
  free(att);
  free(o);
  free(g);
  free(u);
}

/* Every arch in every dtype: config, shapes, pointers, tag, bytes; and the
 * f16/bf16 values are the f32 values rounded. */
static void test_load_each_arch_and_dtype(void **state) {
  (void)state;
  for (int a = 0; a < 3; a++) {
    ms__model_t ref;
    char *dirs[3];
    for (int d = 0; d < 3; d++) {
      dirs[d] = tm_mkdtemp();
      tm_write_model(dirs[d], (ms__arch_t)a, (ms__wdtype_t)d, 7, 1);
    }
    load_ok(dirs[0], &ref);
    for (int d = 0; d < 3; d++) {
      ms__model_t m;
      load_ok(dirs[d], &m);
      const ms__model_config_t *c = &m.cfg;
      assert_int_equal(c->arch, a);
      assert_string_equal(c->arch_name, a == 0   ? "LlamaForCausalLM"
                                        : a == 1 ? "Qwen2ForCausalLM"
                                                 : "MistralForCausalLM");
      assert_int_equal(c->vocab_size, 512);
      assert_int_equal(c->hidden_size, 256);
      assert_int_equal(c->intermediate_size, 688);
      assert_int_equal(c->num_layers, 4);
      assert_int_equal(c->num_heads, 8);
      assert_int_equal(c->num_kv_heads, 4);
      assert_int_equal(c->head_dim, 32);
      assert_int_equal(c->max_position, 2048);
      assert_true(c->rope_theta == 10000.0f);
      assert_true(c->rms_norm_eps == 1e-6f);
      assert_int_equal(c->qkv_bias, a == MS__ARCH_QWEN2);
      assert_int_equal(c->tie_word_embeddings, a == MS__ARCH_QWEN2);
      assert_int_equal(c->bos_token_id, -1);
      assert_int_equal(c->n_eos, 1);
      assert_int_equal(c->eos_token_ids[0], 509);
      assert_string_equal(m.tag, "weights");
      assert_string_equal(m.dir, dirs[d]);
      if (a == MS__ARCH_QWEN2) {
        assert_ptr_equal(m.lm_head, m.embed);
        assert_non_null(m.layers[3].bq);
        assert_non_null(m.layers[3].bk);
        assert_non_null(m.layers[3].bv);
      } else {
        assert_true(m.lm_head != m.embed);
        assert_null(m.layers[0].bq);
      }
      float *p[64], *rp[64];
      size_t len[64], rlen[64];
      size_t n = tm_tensors_of(&m, p, len);
      assert_int_equal(tm_tensors_of(&ref, rp, rlen), n);
      /* One allocation holds every tensor, each 256-byte aligned (the GPU
       * kernels read rows 16 bytes at a time) and apart from the others. */
      assert_non_null(m.arena);
      size_t bytes = 0;
      for (size_t i = 0; i < n; i++) {
        assert_non_null(p[i]);
        assert_int_equal((uintptr_t)p[i] % 256, 0);
        assert_true((char *)p[i] >= (char *)m.arena);
        for (size_t k = 0; k < i; k++)
          if (p[k] != p[i]) /* tied embeddings share a tensor */
            assert_true(p[i] + len[i] <= p[k] || p[k] + len[k] <= p[i]);
        bytes += len[i] * 4;
        for (size_t j = 0; j < len[i]; j++) {
          float want = d == 0   ? rp[i][j]
                       : d == 1 ? ms__f16_to_f32(ms__f32_to_f16(rp[i][j]))
                                : ms__bf16_to_f32(ms__f32_to_bf16(rp[i][j]));
          if (p[i][j] != want)
            fail_msg("%s %s: tensor %zu [%zu] = %g, want %g", arch_flag[a], dirs[d], i, j,
                     (double)p[i][j], (double)want);
        }
      }
      assert_int_equal(m.weight_bytes, bytes);
      memsleep_stats_t st;
      assert_int_equal(memsleep_stats("weights", &st), 0);
      assert_int_equal(st.allocations, 2); /* this model and ref */
      assert_true(st.reserved_bytes >= 2 * bytes);
      ms__model_free(&m);
      assert_null(m.layers);
    }
    ms__model_free(&ref);
    for (int d = 0; d < 3; d++)
      tm_rmdir(dirs[d]);
  }
  tm_assert_nothing_allocated();
}

/* Shards with an index load exactly the values of the single file. */
static void test_sharded_equals_single(void **state) {
  (void)state;
  char *one = tm_mkdtemp(), *many = tm_mkdtemp();
  tm_write_model(one, MS__ARCH_QWEN2, MS__WDTYPE_BF16, 3, 1);
  tm_write_model(many, MS__ARCH_QWEN2, MS__WDTYPE_BF16, 3, 4);
  assert_int_equal(access(tm_path(many, "model.safetensors.index.json"), F_OK), 0);
  assert_int_equal(access(tm_path(many, "model-00004-of-00004.safetensors"), F_OK), 0);
  assert_int_not_equal(access(tm_path(many, "model.safetensors"), F_OK), 0);
  ms__model_t a, b;
  load_ok(one, &a);
  load_ok(many, &b);
  float *pa[64], *pb[64];
  size_t la[64], lb[64];
  size_t n = tm_tensors_of(&a, pa, la);
  assert_int_equal(tm_tensors_of(&b, pb, lb), n);
  for (size_t i = 0; i < n; i++) {
    assert_int_equal(la[i], lb[i]);
    assert_memory_equal(pa[i], pb[i], la[i] * 4);
  }
  ms__model_free(&a);
  ms__model_free(&b);
  tm_rmdir(one);
  tm_rmdir(many);
  tm_assert_nothing_allocated();
}

typedef struct prog_t {
  size_t calls, last, total;
  int backwards;
} prog_t;

static void on_progress(size_t done, size_t total, void *user) {
  prog_t *p = user;
  if (done < p->last || (p->calls && total != p->total))
    p->backwards = 1;
  p->calls++;
  p->last = done;
  p->total = total;
}

static void test_progress_reaches_total(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F16, 1, 2);
  ms__model_t m;
  prog_t p = {0};
  assert_int_equal(
      ms__model_load(dir, "weights", MEMSLEEP_BACKUP, MEMSLEEP_HOST, on_progress, &p, &m), 0);
  assert_true(p.calls > 10);
  assert_false(p.backwards);
  assert_int_equal(p.last, m.weight_bytes);
  assert_int_equal(p.total, m.weight_bytes);
  ms__model_free(&m);
  tm_rmdir(dir);
}

/* Runs memsleep-mkmodel with args; returns its exit status. */
static int run_mkmodel(const char *args) {
  char cmd[8192];
  snprintf(cmd, sizeof cmd, "'%s/tools/memsleep-mkmodel' %s >/dev/null 2>&1", MEMSLEEP_BINARY_DIR,
           args);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The tool's model: loads, its tokenizer has the config's vocabulary, EOS
 * is "<|endoftext|>", and the logits of a token are finite and varied. */
static void test_mkmodel_output_loads_and_gives_logits(void **state) {
  (void)state;
  char *base = tm_mkdtemp();
  for (int a = 0; a < 3; a++) {
    char out[4096], args[4400];
    snprintf(out, sizeof out, "%s/%s", base, arch_flag[a]);
    snprintf(args, sizeof args, "--out '%s' --arch %s --dtype %s --shards %d", out, arch_flag[a],
             a == 1 ? "bf16" : "f32", a + 1);
    assert_int_equal(run_mkmodel(args), 0);
    ms__model_t m;
    load_ok(out, &m);
    assert_int_equal(m.cfg.vocab_size, 512);
    ms__tokenizer_t *tok = NULL;
    char tp[4200];
    snprintf(tp, sizeof tp, "%s/tokenizer.json", out);
    assert_int_equal(ms__tokenizer_load(tp, &tok), 0);
    assert_int_equal(ms__tokenizer_vocab_size(tok), m.cfg.vocab_size);
    char *text = NULL;
    size_t tl = 0;
    assert_int_equal(ms__tokenizer_decode(tok, m.cfg.eos_token_ids, 1, &text, &tl), 0);
    assert_string_equal(text, "<|endoftext|>");
    free(text);
    ms__tokenizer_free(tok);

    float *logits = malloc(sizeof(float) * 512);
    int argmax_seen[512] = {0}, distinct = 0;
    for (int t = 0; t < 512; t += 37) {
      forward_first_token(&m, t, logits);
      double mean = 0, var = 0;
      int best = 0;
      for (int i = 0; i < 512; i++) {
        assert_true(isfinite(logits[i]));
        mean += logits[i];
        if (logits[i] > logits[best])
          best = i;
      }
      mean /= 512;
      for (int i = 0; i < 512; i++)
        var += (logits[i] - mean) * (logits[i] - mean);
      double sd = sqrt(var / 512);
      if (sd < 0.1 || sd > 100)
        fail_msg("%s token %d: logits' standard deviation %g", arch_flag[a], t, sd);
      distinct += !argmax_seen[best]++;
    }
    assert_true(distinct > 1); /* the input token matters */
    free(logits);
    ms__model_free(&m);
  }
  tm_rmdir(base);
  tm_assert_nothing_allocated();
}

static void test_mkmodel_arguments(void **state) {
  (void)state;
  char *base = tm_mkdtemp();
  char args[4400];
  assert_int_equal(run_mkmodel("--help"), 0);
  assert_int_equal(run_mkmodel(""), 2); /* no --out */
  snprintf(args, sizeof args, "--out '%s/x' --arch gpt2", base);
  assert_int_equal(run_mkmodel(args), 2);
  snprintf(args, sizeof args, "--out '%s/x' --layers 0", base);
  assert_int_equal(run_mkmodel(args), 2);
  snprintf(args, sizeof args, "--out '%s/x' --heads 8 --kv-heads 3", base);
  assert_int_equal(run_mkmodel(args), 2);
  snprintf(args, sizeof args, "--out '%s/x' --dtype f8", base);
  assert_int_equal(run_mkmodel(args), 2);
  snprintf(args, sizeof args, "--out '%s/x' --bogus", base);
  assert_int_equal(run_mkmodel(args), 2);
  /* A non-empty directory is not overwritten without --force. */
  snprintf(args, sizeof args, "--out '%s'", base);
  tm_write_file(tm_path(base, "keep.txt"), "mine", 4);
  assert_int_equal(run_mkmodel(args), 1);
  assert_int_not_equal(access(tm_path(base, "config.json"), F_OK), 0);
  /* --force replaces stale shards, keeps other files. */
  snprintf(args, sizeof args,
           "--out '%s' --force --shards 3 --layers 2 --hidden 64 --heads 4 "
           "--kv-heads 2 --intermediate 96",
           base);
  assert_int_equal(run_mkmodel(args), 0);
  snprintf(args, sizeof args, "--out '%s' --force --layers 2 --hidden 64 --heads 4", base);
  assert_int_equal(run_mkmodel(args), 0);
  assert_int_not_equal(access(tm_path(base, "model.safetensors.index.json"), F_OK), 0);
  assert_int_not_equal(access(tm_path(base, "model-00001-of-00003.safetensors"), F_OK), 0);
  assert_int_equal(access(tm_path(base, "keep.txt"), F_OK), 0);
  ms__model_t m;
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", base);
  load_ok(dir, &m);
  assert_int_equal(m.cfg.hidden_size, 64);
  assert_int_equal(m.cfg.num_kv_heads, 4); /* default 4 divides 4 heads */
  ms__model_free(&m);
  tm_rmdir(base);
}

/* ---- broken directories ---- */

static void test_error_missing_config(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  char cfgpath[4200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
  assert_int_equal(unlink(cfgpath), 0);
  tm_assert_load_fails(dir, MEMSLEEP_ENOTFOUND);
  tm_assert_error_names(cfgpath, NULL);
  tm_rmdir(dir);
}

static void test_error_unsupported_architecture(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  char cfgpath[4200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
  tm_patch_file(cfgpath, "LlamaForCausalLM", "GPT2LMHeadModel");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "unsupported architecture", "GPT2LMHeadModel", NULL);
  /* Malformed JSON in config.json. */
  tm_write_file(cfgpath, "{\"architectures\": [", 19);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "malformed", NULL);
  tm_rmdir(dir);
}

static void test_error_unsupported_features(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  char cfgpath[4200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
  tm_patch_file(cfgpath, "\"silu\"", "\"gelu\"");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "hidden_act", NULL);
  tm_patch_file(cfgpath, "\"gelu\"", "\"silu\", \"rope_scaling\": {\"rope_type\": \"llama3\"}");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "rope_scaling", "llama3", NULL);
  tm_patch_file(cfgpath, "\"rope_type\": \"llama3\"", "\"rope_type\": \"default\"");
  tm_patch_file(cfgpath, "\"num_key_value_heads\": 4", "\"num_key_value_heads\": 3");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "num_key_value_heads 3", NULL);
  tm_patch_file(cfgpath, "\"num_key_value_heads\": 3", "\"num_key_value_heads\": 4");
  tm_patch_file(cfgpath, "\"eos_token_id\": 509", "\"eos_token_id\": [509, 2, 600]");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(cfgpath, "eos_token_id[2]", NULL);
  tm_patch_file(cfgpath, "[509, 2, 600]", "[509, 2]");
  ms__model_t m;
  load_ok(dir, &m);
  assert_int_equal(m.cfg.n_eos, 2);
  assert_int_equal(m.cfg.eos_token_ids[1], 2);
  ms__model_free(&m);
  tm_rmdir(dir);
}

/* Absent fields take the Hugging Face defaults; a sliding window caps the
 * context; an explicit head_dim is used. */
static void test_config_defaults_and_sliding_window(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_MISTRAL, MS__WDTYPE_F32, 1, 1);
  char cfgpath[4200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", dir);
  tm_patch_file(cfgpath, "\"rope_theta\": 10000.0,", "");
  tm_patch_file(cfgpath, "\"rms_norm_eps\": 1e-6,", "");
  tm_patch_file(cfgpath, "\"bos_token_id\": null,", "");
  tm_patch_file(cfgpath, "\"eos_token_id\": 509,", "\"head_dim\": 32,");
  tm_patch_file(cfgpath, "\"sliding_window\": null", "\"sliding_window\": 512");
  ms__model_config_t c;
  assert_int_equal(ms__config_load(dir, &c), 0);
  assert_true(c.rope_theta == 10000.0f);
  assert_true(c.rms_norm_eps == 1e-6f);
  assert_int_equal(c.bos_token_id, 1); /* MistralConfig's default */
  assert_int_equal(c.n_eos, 1);
  assert_int_equal(c.eos_token_ids[0], 2);
  assert_int_equal(c.head_dim, 32);
  assert_int_equal(c.max_position, 512);
  ms__model_t m;
  load_ok(dir, &m);
  assert_int_equal(m.cfg.max_position, 512);
  ms__model_free(&m);
  /* head_dim that does not match the weights is a shape error. */
  tm_patch_file(cfgpath, "\"head_dim\": 32", "\"head_dim\": 16");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names("model.layers.0.self_attn.q_proj.weight", "[128, 256]", NULL);
  tm_rmdir(dir);
}

/* config.json asks for a fifth layer the weights do not have. */
static void test_error_missing_tensor(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  tm_patch_file(tm_path(dir, "config.json"), "\"num_hidden_layers\": 4",
                "\"num_hidden_layers\": 5");
  char st[4200];
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "model.layers.4.input_layernorm.weight", "missing", NULL);
  tm_rmdir(dir);
  /* Untied in config.json, but the weights have no lm_head. */
  dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_QWEN2, MS__WDTYPE_F32, 1, 1); /* tied: no lm_head */
  tm_patch_file(tm_path(dir, "config.json"), "\"tie_word_embeddings\": true",
                "\"tie_word_embeddings\": false");
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "lm_head.weight", "missing", NULL);
  tm_rmdir(dir);
}

static void test_error_wrong_shape(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_MISTRAL, MS__WDTYPE_F16, 1, 1);
  tm_patch_file(tm_path(dir, "config.json"), "\"intermediate_size\": 688",
                "\"intermediate_size\": 690");
  char st[4200];
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "model.layers.0.mlp.gate_proj.weight", "[688, 256]", "[690, 256]",
                        NULL);
  tm_rmdir(dir);
}

/* A tensor stored as I32 (same byte count as F32): named, with its dtype. */
static void test_error_bad_dtype(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  char st[4200];
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  size_t n;
  char *raw = tm_read_file(st, &n);
  char *at = strstr(raw + 8, "\"model.norm.weight\":{\"data_offsets\":[");
  assert_non_null(at);
  char *dt = strstr(at, "\"dtype\":\"F32\"");
  assert_non_null(dt);
  memcpy(dt + 9, "I32", 3);
  tm_write_file(st, raw, n);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "model.norm.weight", "I32", NULL);
  memcpy(dt + 9, "I8\" ", 4); /* "dtype":"I8" ,: breaks the byte count, still named */
  tm_write_file(st, raw, n);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "model.norm.weight", NULL);
  free(raw);
  tm_rmdir(dir);
}

static void test_error_truncated_weights(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_BF16, 1, 1);
  char st[4200];
  snprintf(st, sizeof st, "%s/model.safetensors", dir);
  struct stat sb;
  assert_int_equal(stat(st, &sb), 0);
  assert_int_equal(truncate(st, sb.st_size - 100), 0);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  /* Data is laid out in name order: the last tensor is model.norm.weight. */
  tm_assert_error_names(st, "model.norm.weight", "past the end", NULL);
  assert_int_equal(truncate(st, 5), 0);
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(st, "truncated", NULL);
  tm_rmdir(dir);
}

static void test_error_shards(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_QWEN2, MS__WDTYPE_F32, 1, 3);
  char p[4200];
  snprintf(p, sizeof p, "%s/model-00002-of-00003.safetensors", dir);
  assert_int_equal(unlink(p), 0);
  tm_assert_load_fails(dir, MEMSLEEP_ENOTFOUND);
  tm_assert_error_names(p, NULL);
  /* A tensor the index does not map. */
  tm_write_model(dir, MS__ARCH_QWEN2, MS__WDTYPE_F32, 1, 3);
  snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
  tm_patch_file(p, "\"model.norm.weight\"", "\"model.norm.weightX\"");
  tm_assert_load_fails(dir, MEMSLEEP_EINVAL);
  tm_assert_error_names(p, "model.norm.weight", NULL);
  /* No weights at all. */
  assert_int_equal(unlink(p), 0);
  tm_assert_load_fails(dir, MEMSLEEP_ENOTFOUND);
  tm_assert_error_names(dir, "model.safetensors", NULL);
  tm_rmdir(dir);
}

static void test_error_bad_arguments(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  tm_write_model(dir, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  ms__model_t m;
  assert_int_equal(ms__model_load(dir, "weights", MEMSLEEP_BACKUP, -5, NULL, NULL, &m),
                   MEMSLEEP_EINVAL);
  assert_int_equal(ms__model_load(dir, "bad tag!", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, &m),
                   MEMSLEEP_EINVAL);
  assert_int_equal(ms__model_load(NULL, "weights", 0, MEMSLEEP_HOST, NULL, NULL, &m),
                   MEMSLEEP_EINVAL);
  tm_assert_nothing_allocated();
  ms__model_free(&m); /* zeroed by the failed load: safe */
  ms__model_free(NULL);
  tm_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_load_each_arch_and_dtype),
      cmocka_unit_test(test_sharded_equals_single),
      cmocka_unit_test(test_progress_reaches_total),
      cmocka_unit_test(test_mkmodel_output_loads_and_gives_logits),
      cmocka_unit_test(test_mkmodel_arguments),
      cmocka_unit_test(test_error_missing_config),
      cmocka_unit_test(test_error_unsupported_architecture),
      cmocka_unit_test(test_error_unsupported_features),
      cmocka_unit_test(test_config_defaults_and_sliding_window),
      cmocka_unit_test(test_error_missing_tensor),
      cmocka_unit_test(test_error_wrong_shape),
      cmocka_unit_test(test_error_bad_dtype),
      cmocka_unit_test(test_error_truncated_weights),
      cmocka_unit_test(test_error_shards),
      cmocka_unit_test(test_error_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
