/*
 * compute.h - the compute backend of the engine: one forward pass over a
 * batch of sequences.
 *
 * The scheduler and the KV cache bookkeeping know nothing of how the
 * arithmetic is done; they hand a backend a batch (for each sequence: its
 * new tokens, their first position, its KV block table and where to put
 * logits) and get logits back. The CPU backend (compute_cpu.c, float32,
 * threads) is the first; the CUDA backend (compute_cuda.c, bf16 weights and
 * KV cache, cuBLAS) provides the same table of functions and the scheduler
 * does not change.
 *
 * The KV pool itself (memory in tag "kv_cache") is allocated by the KV
 * cache (kvcache.c) and described to the backend by ms__kv_layout_t; the
 * backend writes the keys and values of the new tokens into the blocks the
 * table names and reads the earlier ones from there.
 */
#ifndef MEMSLEEP_ENGINE_COMPUTE_H
#define MEMSLEEP_ENGINE_COMPUTE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/model.h"

/* Where the KV pool lives and how it is laid out. Keys of layer l, block b,
 * slot s (0 <= s < block_tokens) are element ((l * num_blocks + b) *
 * block_tokens + s) * kv_dim of k; values likewise in v. Elements are
 * float32 on the host and bfloat16 on a CUDA device (elem_bytes says
 * which); a device pool must not be touched by host code. */
typedef struct ms__kv_layout {
  void *k;           /* key pool: [layers][num_blocks][block_tokens][kv_dim] */
  void *v;           /* value pool, same shape */
  size_t num_blocks; /* blocks in the pool */
  int block_tokens;  /* token slots per block */
  int kv_dim;        /* num_kv_heads * head_dim */
  int num_layers;    /* decoder layers */
  int elem_bytes;    /* 4: float32, 2: bfloat16 */
  int device;        /* MEMSLEEP_HOST, or the CUDA ordinal holding the pool */
} ms__kv_layout_t;

/* One sequence's part of a batch: n_tokens new tokens at positions
 * start_pos .. start_pos + n_tokens - 1. Keys and values of positions
 * before start_pos are already in the blocks of block_table. */
typedef struct ms__batch_seq {
  const int *tokens;           /* the new tokens (a prompt chunk, or one decode token) */
  int n_tokens;                /* >= 1 */
  int start_pos;               /* position of tokens[0] */
  const uint32_t *block_table; /* blocks covering positions 0 .. start_pos + n_tokens - 1 */
  float *logits;               /* out: [vocab] for the last new token, or NULL for none */
  int all_logits;              /* 1: logits is [n_tokens][vocab], one row per new token */
  /* Sampling on the device (backends whose ops say .samples): with token
   * set, the next token after the last new one is drawn there - greedy
   * when temperature <= 0 or top_k is 1, else from softmax(logits /
   * temperature) over the top_k most likely (0: all), then over the
   * smallest such head holding top_p of the mass, with u (the request's
   * uniform draw in [0, 1)) picking among them - and written to *token.
   * logits may be NULL then. */
  int *token;        /* out: the sampled token, or NULL: sample nothing */
  float temperature; /* sampling of token */
  int top_k;
  float top_p;
  double u;
} ms__batch_seq_t;

/* The CUDA graphs of a backend's decode steps (see compute_cuda.c). */
typedef struct ms__graph_stats {
  int enabled;             /* decode steps replay graphs (on, and none failed) */
  int asleep;              /* the executables are released (the graphs are kept) */
  size_t graphs;           /* graphs captured and kept, one per decode batch size seen */
  size_t executables;      /* of them instantiated now */
  size_t exec_bytes;       /* device memory the executables hold (cudaMemGetInfo's view) */
  size_t reserved_bytes;   /* what they took when last instantiated (kept while asleep) */
  uint64_t captures;       /* graphs captured since the start */
  uint64_t instantiations; /* executables made since the start (captures + re-instantiations) */
  uint64_t replays;        /* decode steps run by a graph */
  char error[200];         /* why graphs were turned off, or "" */
} ms__graph_stats_t;

/* A compute backend. ctx is the backend's own state. */
typedef struct ms__compute_ops {
  const char *name; /* "cpu", ... */
  int samples;      /* 1: forward samples batch entries that set token */
  /* Prepares to run model m over the KV pool kv with threads workers (0:
   * one per core), for batches of at most max_tokens new tokens in all and
   * contexts of at most max_context positions. Scratch memory is taken
   * from memsleep tag "workspace". The model and the pool must outlive the
   * context. Returns 0 or a negative code; on failure nothing is left. */
  int (*create)(const ms__model_t *m, const ms__kv_layout_t *kv, int threads, int max_tokens,
                int max_context, void **ctx);
  /* Runs one forward pass over n sequences (their n_tokens together at
   * most max_tokens, each fitting in max_context): writes the new keys and
   * values into the pool and the requested logits. Sequences must not share
   * a block they write to. Returns 0 or a negative code. */
  int (*forward)(void *ctx, const ms__batch_seq_t *seqs, size_t n);
  /* Frees the context and its scratch memory. NULL is fine. */
  void (*destroy)(void *ctx);
  /* CUDA graphs of decode steps; NULL in a backend without them. None of
   * these may run beside forward. set_graphs turns them on (the default)
   * or off (on: 1); off, decode steps are launched kernel by kernel, with
   * the same results. graphs_release destroys the graphs' executables and
   * keeps the graphs; decode steps are launched kernel by kernel until
   * graphs_resume, after which each graph's executable is made again from
   * it (no recapture) when the graph is next used. */
  void (*set_graphs)(void *ctx, int on);
  int (*graphs_release)(void *ctx);
  int (*graphs_resume)(void *ctx);
  void (*graph_stats)(void *ctx, ms__graph_stats_t *out);
} ms__compute_ops_t;

/* The float32 CPU backend. */
extern const ms__compute_ops_t ms__compute_cpu;

/* The bf16 CUDA backend (compute_cuda.c): defined only in a build with the
 * CUDA engine (MEMSLEEP_CUDA_ENGINE); use ms__compute_for(). */
extern const ms__compute_ops_t ms__compute_cuda;

/* The backend for memory on device: ms__compute_cpu for MEMSLEEP_HOST,
 * ms__compute_cuda for a CUDA ordinal, NULL when this build has none. */
const ms__compute_ops_t *ms__compute_for(int device);

#endif /* MEMSLEEP_ENGINE_COMPUTE_H */
