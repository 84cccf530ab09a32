/*
 * config.c - a Hugging Face config.json into ms__model_config_t.
 *
 * Reads the architecture ("architectures"[0], or "model_type" when that list
 * is absent), the sizes, RoPE and RMSNorm constants and the special token
 * ids, with the defaults the Hugging Face config classes use when a field is
 * missing, and refuses what the engine would get silently wrong: another
 * architecture, an activation other than SiLU, RoPE scaling, attention or
 * MLP biases that Llama does not have, inconsistent head counts.
 */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/error.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

/* Largest size accepted for any one dimension: far above real models, low
 * enough that products of two fit comfortably in size_t. */
#define DIM_MAX (1 << 24)

typedef struct arch_info_t {
  const char *name;       /* architectures[0] */
  const char *model_type; /* model_type */
  ms__arch_t arch;
  int vocab, hidden, intermediate, layers, heads, kv_heads, max_position;
  int bos, eos;
} arch_info_t;

/* Defaults of LlamaConfig, Qwen2Config and MistralConfig (kv_heads 0:
 * the number of heads). */
static const arch_info_t archs[] = {
    {"LlamaForCausalLM", "llama", MS__ARCH_LLAMA, 32000, 4096, 11008, 32, 32, 0, 2048, 1, 2},
    {"Qwen2ForCausalLM", "qwen2", MS__ARCH_QWEN2, 151936, 4096, 22016, 32, 32, 32, 32768, -1, -1},
    {"MistralForCausalLM", "mistral", MS__ARCH_MISTRAL, 32000, 4096, 14336, 32, 32, 8, 131072, 1,
     2},
};

/* Reads integer field key of root into *out (default def when absent or
 * null). Accepts an integral JSON real too. */
static int get_int(const char *path, const json_t *root, const char *key, int def, int lo, int hi,
                   int *out) {
  const json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  double d;
  if (json_is_integer(v))
    d = (double)json_integer_value(v);
  else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)))
    d = json_real_value(v);
  else
    return ms__fail(MEMSLEEP_EINVAL, "%s: \"%s\" is not an integer", path, key);
  if (d < lo || d > hi)
    return ms__fail(MEMSLEEP_EINVAL, "%s: \"%s\" is %.0f, outside [%d, %d]", path, key, d, lo, hi);
  *out = (int)d;
  return 0;
}

/* Reads number field key (default def); must be finite and > 0. */
static int get_pos_number(const char *path, const json_t *root, const char *key, double def,
                          float *out) {
  const json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = (float)def;
    return 0;
  }
  if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)) ||
      !isfinite((float)json_number_value(v)))
    return ms__fail(MEMSLEEP_EINVAL, "%s: \"%s\" must be a positive number", path, key);
  *out = (float)json_number_value(v);
  return 0;
}

/* Reads boolean field key (default def). */
static int get_bool(const char *path, const json_t *root, const char *key, int def, int *out) {
  const json_t *v = json_object_get(root, key);
  if (!v || json_is_null(v)) {
    *out = def;
    return 0;
  }
  if (!json_is_boolean(v))
    return ms__fail(MEMSLEEP_EINVAL, "%s: \"%s\" is not true or false", path, key);
  *out = json_is_true(v);
  return 0;
}

/* Fills cfg from the parsed root of path. */
static int parse_config(const char *path, const json_t *root, ms__model_config_t *cfg) {
  if (!json_is_object(root))
    return ms__fail(MEMSLEEP_EINVAL, "%s: not a JSON object", path);
  const json_t *as = json_object_get(root, "architectures");
  const json_t *mt = json_object_get(root, "model_type");
  const char *name = NULL;
  if (json_is_array(as) && json_array_size(as) > 0) {
    if (!json_is_string(json_array_get(as, 0)))
      return ms__fail(MEMSLEEP_EINVAL, "%s: \"architectures\"[0] is not a string", path);
    name = json_string_value(json_array_get(as, 0));
  }
  const arch_info_t *ai = NULL;
  for (size_t i = 0; i < sizeof archs / sizeof archs[0]; i++) {
    if (name && strcmp(name, archs[i].name) == 0)
      ai = &archs[i];
    if (!name && json_is_string(mt) && strcmp(json_string_value(mt), archs[i].model_type) == 0)
      ai = &archs[i];
  }
  if (!ai) {
    const char *what = name ? name : json_is_string(mt) ? json_string_value(mt) : "(none given)";
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: unsupported architecture \"%.64s\" (supported: LlamaForCausalLM, "
                    "Qwen2ForCausalLM, MistralForCausalLM)",
                    path, what);
  }
  memset(cfg, 0, sizeof *cfg);
  cfg->arch = ai->arch;
  snprintf(cfg->arch_name, sizeof cfg->arch_name, "%s", ai->name);

  int rc;
  if ((rc = get_int(path, root, "vocab_size", ai->vocab, 1, DIM_MAX, &cfg->vocab_size)) ||
      (rc = get_int(path, root, "hidden_size", ai->hidden, 1, DIM_MAX, &cfg->hidden_size)) ||
      (rc = get_int(path, root, "intermediate_size", ai->intermediate, 1, DIM_MAX,
                    &cfg->intermediate_size)) ||
      (rc = get_int(path, root, "num_hidden_layers", ai->layers, 1, 4096, &cfg->num_layers)) ||
      (rc = get_int(path, root, "num_attention_heads", ai->heads, 1, 65536, &cfg->num_heads)) ||
      (rc = get_int(path, root, "num_key_value_heads", ai->kv_heads ? ai->kv_heads : cfg->num_heads,
                    1, 65536, &cfg->num_kv_heads)) ||
      (rc = get_int(path, root, "max_position_embeddings", ai->max_position, 1, INT_MAX,
                    &cfg->max_position)) ||
      (rc = get_pos_number(path, root, "rope_theta", 10000.0, &cfg->rope_theta)) ||
      (rc = get_pos_number(path, root, "rms_norm_eps", 1e-6, &cfg->rms_norm_eps)) ||
      (rc = get_bool(path, root, "tie_word_embeddings", 0, &cfg->tie_word_embeddings)) ||
      (rc = get_int(path, root, "bos_token_id", ai->bos, -1, INT_MAX, &cfg->bos_token_id)))
    return rc;
  /* An explicit null means "no BOS"; absent means the class default. */
  if (json_is_null(json_object_get(root, "bos_token_id")) || cfg->bos_token_id >= cfg->vocab_size)
    cfg->bos_token_id = -1;

  /* head_dim: given (Mistral, some Qwen) or hidden / heads. */
  if (cfg->hidden_size % cfg->num_heads != 0 && !json_is_integer(json_object_get(root, "head_dim")))
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: hidden_size %d is not a multiple of num_attention_heads %d", path,
                    cfg->hidden_size, cfg->num_heads);
  if ((rc = get_int(path, root, "head_dim", cfg->hidden_size / cfg->num_heads, 2, 65536,
                    &cfg->head_dim)))
    return rc;
  if (cfg->head_dim % 2 != 0)
    return ms__fail(MEMSLEEP_EINVAL, "%s: head_dim %d is odd (RoPE rotates pairs)", path,
                    cfg->head_dim);
  if (cfg->num_heads % cfg->num_kv_heads != 0)
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                    cfg->num_heads, cfg->num_kv_heads);
  if ((long long)cfg->num_heads * cfg->head_dim > DIM_MAX)
    return ms__fail(MEMSLEEP_EINVAL, "%s: num_attention_heads * head_dim too large", path);

  /* eos_token_id: an integer, a list of them, or absent. */
  const json_t *eos = json_object_get(root, "eos_token_id");
  if (!eos) {
    if (ai->eos >= 0 && ai->eos < cfg->vocab_size)
      cfg->eos_token_ids[cfg->n_eos++] = ai->eos;
  } else if (json_is_integer(eos)) {
    json_int_t id = json_integer_value(eos);
    if (id < 0 || id >= cfg->vocab_size)
      return ms__fail(MEMSLEEP_EINVAL, "%s: eos_token_id %lld outside the vocabulary (%d)", path,
                      (long long)id, cfg->vocab_size);
    cfg->eos_token_ids[cfg->n_eos++] = (int)id;
  } else if (json_is_array(eos)) {
    if (json_array_size(eos) > MS__EOS_MAX)
      return ms__fail(MEMSLEEP_EINVAL, "%s: %zu eos_token_id values (at most %d)", path,
                      json_array_size(eos), MS__EOS_MAX);
    for (size_t i = 0; i < json_array_size(eos); i++) {
      const json_t *e = json_array_get(eos, i);
      if (!json_is_integer(e) || json_integer_value(e) < 0 ||
          json_integer_value(e) >= cfg->vocab_size)
        return ms__fail(MEMSLEEP_EINVAL, "%s: eos_token_id[%zu] is not a token id", path, i);
      cfg->eos_token_ids[cfg->n_eos++] = (int)json_integer_value(e);
    }
  } else if (!json_is_null(eos)) {
    return ms__fail(MEMSLEEP_EINVAL, "%s: eos_token_id is neither an integer nor a list", path);
  }

  /* What the engine does not implement is refused, not approximated. */
  const json_t *act = json_object_get(root, "hidden_act");
  if (act && !json_is_null(act) &&
      (!json_is_string(act) || strcmp(json_string_value(act), "silu") != 0))
    return ms__fail(MEMSLEEP_EINVAL, "%s: hidden_act must be \"silu\" (SwiGLU)", path);
  const json_t *rs = json_object_get(root, "rope_scaling");
  if (rs && !json_is_null(rs)) {
    const json_t *ty = json_is_object(rs) ? json_object_get(rs, "rope_type") : NULL;
    if (!ty && json_is_object(rs))
      ty = json_object_get(rs, "type");
    if (!json_is_string(ty) || strcmp(json_string_value(ty), "default") != 0)
      return ms__fail(MEMSLEEP_EINVAL, "%s: rope_scaling \"%s\" is not supported", path,
                      json_is_string(ty) ? json_string_value(ty) : "?");
  }
  int attention_bias = 0, mlp_bias = 0;
  if ((rc = get_bool(path, root, "attention_bias", 0, &attention_bias)) ||
      (rc = get_bool(path, root, "mlp_bias", 0, &mlp_bias)))
    return rc;
  if (ai->arch != MS__ARCH_QWEN2 && (attention_bias || mlp_bias))
    return ms__fail(MEMSLEEP_EINVAL, "%s: attention_bias / mlp_bias are not supported", path);
  cfg->qkv_bias = ai->arch == MS__ARCH_QWEN2;

  /* Sliding-window attention is exact full attention within the window:
   * cap the context at the window instead of implementing it. */
  int window = 0, use_window = ai->arch == MS__ARCH_MISTRAL;
  if (ai->arch == MS__ARCH_QWEN2 &&
      (rc = get_bool(path, root, "use_sliding_window", 0, &use_window)))
    return rc;
  if ((rc = get_int(path, root, "sliding_window", 0, 0, INT_MAX, &window)))
    return rc;
  if (use_window && window > 0 && window < cfg->max_position)
    cfg->max_position = window;
  return 0;
}

/* Parses dir/config.json: ENOTFOUND when there is none, EINVAL when it is
 * malformed or describes something unsupported (the message says what). */
int ms__config_load(const char *dir, ms__model_config_t *cfg) {
  if (!dir || !cfg)
    return ms__fail(MEMSLEEP_EINVAL, "ms__config_load: NULL argument");
  char path[4200];
  if ((size_t)snprintf(path, sizeof path, "%s/config.json", dir) >= sizeof path)
    return ms__fail(MEMSLEEP_EINVAL, "%s: path too long", dir);
  FILE *fp = fopen(path, "rb");
  if (!fp)
    return ms__fail(MEMSLEEP_ENOTFOUND, "%s: cannot open: %s", path, strerror(errno));
  json_error_t jerr;
  json_t *root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
  fclose(fp);
  if (!root)
    return ms__fail(MEMSLEEP_EINVAL, "%s: malformed JSON: %s (line %d)", path, jerr.text,
                    jerr.line);
  ms__model_config_t tmp;
  int rc = parse_config(path, root, &tmp);
  json_decref(root);
  if (rc == 0)
    *cfg = tmp;
  return rc;
}
