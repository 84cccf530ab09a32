/*
 * model.h - a Llama-family decoder's configuration and weights.
 *
 * Reads a Hugging Face style directory: config.json (LlamaForCausalLM,
 * Qwen2ForCausalLM, MistralForCausalLM) and *.safetensors (one file, or
 * shards listed in model.safetensors.index.json; f32, f16 or bf16 on disk).
 * Weights are converted to float32 and live in memsleep memory under one tag
 * (normally "weights", MEMSLEEP_BACKUP) so that they can be put to sleep;
 * the table of pointers to them (ms__model_t, ms__layer_t) is ordinary heap
 * memory and stays valid while the weights sleep.
 *
 * Errors: functions return 0 or a negative MEMSLEEP_E* code; the message
 * (naming the file and the tensor) is in memsleep_last_error().
 */
#ifndef MEMSLEEP_ENGINE_MODEL_H
#define MEMSLEEP_ENGINE_MODEL_H

#include <stddef.h>

#define MS__EOS_MAX 8

typedef enum ms__arch {
  MS__ARCH_LLAMA,   /* LlamaForCausalLM */
  MS__ARCH_QWEN2,   /* Qwen2ForCausalLM: q/k/v projections have biases */
  MS__ARCH_MISTRAL  /* MistralForCausalLM */
} ms__arch_t;

typedef struct ms__model_config {
  ms__arch_t arch;
  char arch_name[64];         /* as in config.json "architectures"[0] */
  int vocab_size;
  int hidden_size;            /* d_model */
  int intermediate_size;      /* SwiGLU hidden width */
  int num_layers;             /* num_hidden_layers */
  int num_heads;              /* num_attention_heads */
  int num_kv_heads;           /* num_key_value_heads (grouped-query attention) */
  int head_dim;               /* hidden_size / num_heads unless config says */
  int max_position;           /* max_position_embeddings: the context length */
  float rope_theta;           /* RoPE base (default 10000) */
  float rms_norm_eps;         /* RMSNorm epsilon (default 1e-6) */
  int tie_word_embeddings;    /* lm_head shares embed_tokens */
  int qkv_bias;               /* q/k/v projections have biases (Qwen2) */
  int bos_token_id;           /* -1 if none */
  int eos_token_ids[MS__EOS_MAX]; /* eos_token_id: one or a list */
  int n_eos;
} ms__model_config_t;

/* One decoder layer. Matrices are row-major [out_features][in_features], as
 * Hugging Face stores nn.Linear weights: y = W x. */
typedef struct ms__layer {
  float *attn_norm;          /* [hidden] input_layernorm */
  float *wq;                 /* [num_heads*head_dim][hidden] */
  float *wk;                 /* [num_kv_heads*head_dim][hidden] */
  float *wv;                 /* [num_kv_heads*head_dim][hidden] */
  float *bq, *bk, *bv;       /* biases when qkv_bias, else NULL */
  float *wo;                 /* [hidden][num_heads*head_dim] */
  float *ffn_norm;           /* [hidden] post_attention_layernorm */
  float *w_gate;             /* [intermediate][hidden] */
  float *w_up;               /* [intermediate][hidden] */
  float *w_down;             /* [hidden][intermediate] */
} ms__layer_t;

typedef struct ms__model {
  ms__model_config_t cfg;
  float *embed;              /* [vocab][hidden] model.embed_tokens */
  ms__layer_t *layers;       /* [num_layers], heap (never in a sleeping region) */
  float *final_norm;         /* [hidden] model.norm */
  float *lm_head;            /* [vocab][hidden]; == embed when tied */
  void **allocs;             /* the memsleep allocations holding the weights */
  size_t nallocs;
  size_t weight_bytes;       /* bytes of float32 weights in memsleep memory */
  char dir[4096];            /* the directory the weights came from */
  char tag[64];              /* memsleep tag of the weights */
} ms__model_t;

/* Called while loading: bytes done of bytes total (for a progress line). */
typedef void (*ms__progress_fn)(size_t done_bytes, size_t total_bytes, void *user);

/* Parses dir/config.json into *cfg. */
int ms__config_load(const char *dir, ms__model_config_t *cfg);

/* Loads the model in dir into memsleep memory under tag (flags: normally
 * MEMSLEEP_BACKUP), on device (MEMSLEEP_HOST for the CPU engine). On
 * failure nothing stays allocated. progress may be NULL. */
int ms__model_load(const char *dir, const char *tag, unsigned flags, int device,
                   ms__progress_fn progress, void *user, ms__model_t *out);

/* Reads the weights of dir into m's existing memory, in place (addresses
 * unchanged): for update_weights_from_disk. dir's config must match m's
 * shapes exactly, else MEMSLEEP_EINVAL and m is unchanged (every file is
 * checked before a byte is written). The weights' tag must be awake. */
int ms__model_reload(ms__model_t *m, const char *dir, ms__progress_fn progress, void *user);

/* Frees the weights and the tables. Safe on a zeroed or failed model. */
void ms__model_free(ms__model_t *m);

#endif /* MEMSLEEP_ENGINE_MODEL_H */
