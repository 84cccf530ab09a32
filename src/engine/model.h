/*
 * model.h - a Llama-family decoder's configuration and weights.
 *
 * Reads a Hugging Face style directory: config.json (LlamaForCausalLM,
 * Qwen2ForCausalLM, MistralForCausalLM) and *.safetensors (one file, or
 * shards listed in model.safetensors.index.json; f32, f16 or bf16 on disk).
 * Weights live in memsleep memory under one tag (normally "weights",
 * MEMSLEEP_BACKUP) so that they can be put to sleep: converted to float32 in
 * host memory for the CPU engine, or to bfloat16 on a CUDA device for the
 * GPU engine (each tensor read into a host staging buffer, converted and
 * copied to its device allocation). The table of pointers to them
 * (ms__model_t, ms__layer_t) is ordinary heap memory and stays valid while
 * the weights sleep.
 *
 * Errors: functions return 0 or a negative MEMSLEEP_E* code; the message
 * (naming the file and the tensor) is in memsleep_last_error().
 */
#ifndef MEMSLEEP_ENGINE_MODEL_H
#define MEMSLEEP_ENGINE_MODEL_H

#include <stddef.h>

#define MS__EOS_MAX 8

typedef enum ms__arch {
  MS__ARCH_LLAMA,  /* LlamaForCausalLM */
  MS__ARCH_QWEN2,  /* Qwen2ForCausalLM: q/k/v projections have biases */
  MS__ARCH_MISTRAL /* MistralForCausalLM */
} ms__arch_t;

typedef struct ms__model_config {
  ms__arch_t arch;
  char arch_name[64]; /* as in config.json "architectures"[0] */
  int vocab_size;
  int hidden_size;                /* d_model */
  int intermediate_size;          /* SwiGLU hidden width */
  int num_layers;                 /* num_hidden_layers */
  int num_heads;                  /* num_attention_heads */
  int num_kv_heads;               /* num_key_value_heads (grouped-query attention) */
  int head_dim;                   /* hidden_size / num_heads unless config says */
  int max_position;               /* max_position_embeddings: the context length */
  float rope_theta;               /* RoPE base (default 10000) */
  float rms_norm_eps;             /* RMSNorm epsilon (default 1e-6) */
  int tie_word_embeddings;        /* lm_head shares embed_tokens */
  int qkv_bias;                   /* q/k/v projections have biases (Qwen2) */
  int bos_token_id;               /* -1 if none */
  int eos_token_ids[MS__EOS_MAX]; /* eos_token_id: one or a list */
  int n_eos;
} ms__model_config_t;

/* One decoder layer. Matrices are row-major [out_features][in_features], as
 * Hugging Face stores nn.Linear weights: y = W x. Each pointer holds the
 * model's elem_bytes elements (float32 on the host, bfloat16 on a device);
 * device addresses must not be dereferenced by host code. */
typedef struct ms__layer {
  void *attn_norm;    /* [hidden] input_layernorm */
  void *wq;           /* [num_heads*head_dim][hidden] */
  void *wk;           /* [num_kv_heads*head_dim][hidden] */
  void *wv;           /* [num_kv_heads*head_dim][hidden] */
  void *bq, *bk, *bv; /* biases when qkv_bias, else NULL */
  void *wo;           /* [hidden][num_heads*head_dim] */
  void *ffn_norm;     /* [hidden] post_attention_layernorm */
  void *w_gate;       /* [intermediate][hidden] */
  void *w_up;         /* [intermediate][hidden] */
  void *w_down;       /* [hidden][intermediate] */
} ms__layer_t;

typedef struct ms__model {
  ms__model_config_t cfg;
  void *embed;         /* [vocab][hidden] model.embed_tokens */
  ms__layer_t *layers; /* [num_layers], heap (never in a sleeping region) */
  void *final_norm;    /* [hidden] model.norm */
  void *lm_head;       /* [vocab][hidden]; == embed when tied */
  void *arena;         /* the memsleep allocation holding every tensor */
  size_t weight_bytes; /* bytes of weights in memsleep memory */
  int device;          /* MEMSLEEP_HOST, or the CUDA ordinal holding the weights */
  int elem_bytes;      /* 4: float32 (host), 2: bfloat16 (CUDA device) */
  char dir[4096];      /* the directory the weights came from */
  char tag[64];        /* memsleep tag of the weights */
} ms__model_t;

/* Called while loading: bytes done of bytes total (for a progress line). */
typedef void (*ms__progress_fn)(size_t done_bytes, size_t total_bytes, void *user);

/* Parses dir/config.json into *cfg. */
int ms__config_load(const char *dir, ms__model_config_t *cfg);

/* Loads the model in dir into memsleep memory under tag (flags: normally
 * MEMSLEEP_BACKUP), on device: MEMSLEEP_HOST (float32, the CPU engine) or
 * a CUDA ordinal (bfloat16, the GPU engine; ms__device_check says whether
 * this build and machine can). On failure nothing stays allocated.
 * progress may be NULL. */
int ms__model_load(const char *dir, const char *tag, unsigned flags, int device,
                   ms__progress_fn progress, void *user, ms__model_t *out);

/* Reads the weights of dir into m's existing memory, in place (addresses
 * unchanged, converted as at load): for update_weights_from_disk. dir's config must match m's
 * shapes exactly, else MEMSLEEP_EINVAL and m is unchanged (every file is
 * checked before a byte is written). The weights' tag must be awake. */
int ms__model_reload(ms__model_t *m, const char *dir, ms__progress_fn progress, void *user);

/* Frees the weights and the tables. Safe on a zeroed or failed model. */
void ms__model_free(ms__model_t *m);

/* Error codes of ms__config_load, ms__model_load and ms__model_reload:
 * MEMSLEEP_ENOTFOUND: a file is missing (config.json, model.safetensors, a
 *   shard named in model.safetensors.index.json);
 * MEMSLEEP_EINVAL: a file is malformed or truncated, a tensor is missing or
 *   has the wrong shape or an unsupported dtype, the architecture or a
 *   feature is unsupported, reload's shapes differ from the loaded model's;
 * MEMSLEEP_ESTATE: reload while the weights' tag is asleep;
 * MEMSLEEP_EUNAVAIL: a CUDA device, and this build has no CUDA engine or
 *   the machine no CUDA driver or device (ms__device_check);
 * MEMSLEEP_ENOMEM / MEMSLEEP_EBACKEND: no memory, a read failed.
 * Reload also takes the new rope_theta, rms_norm_eps and BOS/EOS ids;
 * max_position stays the loaded model's (the KV cache was sized by it). A
 * read error after every check passed (a disk failing, a file rewritten
 * meanwhile) can leave the weights partly new: the message says so, and a
 * later reload repairs them.
 * Refused as unsupported rather than computed wrongly: hidden_act other
 * than silu, rope_scaling (other than "default"), Llama's attention_bias /
 * mlp_bias. Sliding-window attention (Mistral, Qwen2 with
 * use_sliding_window) caps max_position at the window instead. */

/* ---- writing a model with random weights (memsleep-mkmodel, tests) ---- */

typedef enum ms__wdtype { MS__WDTYPE_F32, MS__WDTYPE_F16, MS__WDTYPE_BF16 } ms__wdtype_t;

typedef struct ms__model_spec {
  ms__arch_t arch;
  int vocab_size;
  int hidden_size;
  int intermediate_size;
  int num_layers;
  int num_heads;
  int num_kv_heads;
  int max_position;
  float rope_theta;
  float rms_norm_eps;
  int tie_word_embeddings;
  int eos_token_id;   /* -1: none */
  ms__wdtype_t dtype; /* on disk */
  unsigned long long seed;
  int shards; /* 1: model.safetensors; N: model-0000k-of-0000N + index */
} ms__model_spec_t;

/* memsleep-mkmodel's defaults for arch: 4 layers, hidden 256, 8 heads, 4
 * KV heads, intermediate 688, vocab 512, max position 2048, f32, seed 1,
 * one shard, untied (Qwen2: tied). */
void ms__model_spec_default(ms__model_spec_t *s, ms__arch_t arch);

/* Writes config.json and the safetensors file(s) of a model with seeded
 * random weights into the existing directory dir (files of the same names
 * are replaced, a stale index or single file removed). Values depend only
 * on the seed and the tensor's name and shape, not on the dtype or the
 * sharding. progress (may be NULL) gets bytes written of bytes total.
 * *params and *file_bytes (may be NULL) get the parameter count and the
 * bytes of weight files written. */
int ms__model_write_random(const char *dir, const ms__model_spec_t *s, ms__progress_fn progress,
                           void *user, unsigned long long *params, unsigned long long *file_bytes);

#endif /* MEMSLEEP_ENGINE_MODEL_H */
