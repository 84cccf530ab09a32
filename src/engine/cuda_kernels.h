/*
 * cuda_kernels.h - the CUDA backend's own kernels, callable from C.
 *
 * Everything the CUDA backend (compute_cuda.c) computes outside cuBLAS:
 * the embedding lookup, RMSNorm, RoPE with the new keys and values stored
 * into the paged KV pool, attention over that pool, SwiGLU, and sampling
 * the next token from a logits row. Weights
 * and the KV pool are bfloat16 (passed as uint16_t bit patterns: C has no
 * bfloat16 type), activations float32, and every sum is accumulated in
 * float32. Each launcher queues its kernel on stream and returns the
 * launch's error (cudaSuccess or a cudaError_t), never waiting for it.
 */
#ifndef MEMSLEEP_ENGINE_CUDA_KERNELS_H
#define MEMSLEEP_ENGINE_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Largest head_dim the attention kernel takes. */
#define MS__CUDA_HEAD_DIM_MAX 256

/* x[t][:] = embed[tokens[t]][:] as float32, for t < T rows of width H. */
cudaError_t ms__cuk_embed(float *x, const uint16_t *embed, const int *tokens, int T, int H,
                          cudaStream_t stream);

/* out[r][:] = bf16(x[row][:] / sqrt(mean(x[row]^2) + eps) * w) for r <
 * rows, where row = rows_of ? rows_of[r] : r; H wide. */
cudaError_t ms__cuk_rmsnorm(uint16_t *out, const float *x, const int *rows_of, const uint16_t *w,
                            int rows, int H, float eps, cudaStream_t stream);

/* For each of T token rows: adds the q/k/v biases (NULL: none), rotates
 * each head of q (num_heads) and k (num_kv_heads) by pos[t] * theta^(-2i /
 * head_dim) in Hugging Face's rotate_half convention (pairs (i, i +
 * head_dim / 2), angles in float32 as Hugging Face computes them), and
 * stores k and v as bfloat16 at slot slot[t] (block * block_tokens +
 * offset) of the layer's pools k_pool and v_pool ([slots][kv_dim]); a row
 * whose slot is negative (padding) stores nothing. q stays float32, in
 * place. */
cudaError_t ms__cuk_rope_store(float *q, float *k, const float *v, const uint16_t *bq,
                               const uint16_t *bk, const uint16_t *bv, const int *pos,
                               const int64_t *slot, uint16_t *k_pool, uint16_t *v_pool, int T,
                               int num_heads, int num_kv_heads, int head_dim, float theta,
                               cudaStream_t stream);

/* Most ranges one (token row, head) of attention is split into (see
 * ms__cuk_attention). */
#define MS__CUDA_ATT_SPLITS 8

/* Causal grouped-query attention for each (token row t, head h): query
 * q[t][h] against positions 0 .. pos[t] of its sequence, whose block table
 * is tables[tab_off[t] ..]; keys and values from the layer's pools. Writes
 * bfloat16 out[t][h * head_dim ..]. head_dim <= MS__CUDA_HEAD_DIM_MAX.
 * A row's positions are split into contiguous ranges - one more per 64
 * positions, at most MS__CUDA_ATT_SPLITS - whose parts are added in a
 * fixed order; for few rows each range gets its own block. The result
 * depends on pos[t] only, not on T nor on the rows beside it. past_ready
 * (1: every row's positions before pos[t] were stored before the kernels
 * of this pass began, as in a decode step) lets those be read while the
 * kernel before still runs. */
cudaError_t ms__cuk_attention(uint16_t *out, const float *q, const uint16_t *k_pool,
                              const uint16_t *v_pool, const uint32_t *tables, const int *tab_off,
                              const int *pos, int T, int num_heads, int num_kv_heads, int head_dim,
                              int block_tokens, int past_ready, cudaStream_t stream);

/* Decode projections (few token rows): most rows k_gemv takes, and most
 * weight matrices one launch covers. */
#define MS__CUDA_GEMV_T_MAX 2
#define MS__CUDA_GEMV_SEGS  3
/* Widest normed input (the norm weight sits in shared memory). */
#define MS__CUDA_GEMV_NORM_IN_MAX 16384

/* One weight matrix of a k_gemv launch: y[t][r] for r < rows. */
typedef struct ms__cuk_gemv_seg {
  const uint16_t *w; /* bf16 [rows][in], 16-byte aligned */
  float *y;          /* float32 [T][rows] */
  int rows;
} ms__cuk_gemv_seg_t;

/* For each of nseg matrices: y[t][r] = W[r] . in[t] (+ y[t][r] when
 * accumulate), t < T <= MS__CUDA_GEMV_T_MAX, in % 8 == 0. The input rows
 * in[t] are X[t] (bf16 [T][in]) or, with X NULL, the RMSNorm of x's row
 * rows_of[t] (t when rows_of is NULL) with weight norm_w, rounded to bf16
 * as ms__cuk_rmsnorm rounds it (then in <= MS__CUDA_GEMV_NORM_IN_MAX). A
 * row's result does not depend on T. */
cudaError_t ms__cuk_gemv(const ms__cuk_gemv_seg_t *segs, int nseg, const uint16_t *X,
                         const float *x, const int *rows_of, const uint16_t *norm_w, float eps,
                         int T, int in, int accumulate, cudaStream_t stream);

/* The q/k/v projections of a decoder layer with what follows them: bias,
 * RoPE at each row's position and the new keys and values into this
 * layer's pools at each row's slot (ms__cuk_rope_store's work). */
typedef struct ms__cuk_qkv {
  const uint16_t *wq, *wk, *wv; /* bf16 [num_heads * head_dim][in], [kv dim][in] twice */
  const uint16_t *bq, *bk, *bv; /* biases, or NULL */
  float *q;                     /* out: float32 [T][num_heads * head_dim], rotated */
  const int *pos;               /* position of row t */
  const int64_t *slot;          /* pool slot of row t; -1: stores nothing (padding) */
  uint16_t *k_pool, *v_pool;
  int num_heads, num_kv_heads, head_dim;
  float theta;
} ms__cuk_qkv_t;

/* q/k/v of the RMSNorm of x's rows (as ms__cuk_gemv with rows_of NULL)
 * for t < T <= MS__CUDA_GEMV_T_MAX, in one launch; the results are those
 * of ms__cuk_gemv followed by ms__cuk_rope_store. */
cudaError_t ms__cuk_gemv_qkv(const ms__cuk_qkv_t *p, const float *x, const uint16_t *norm_w,
                             float eps, int T, int in, cudaStream_t stream);

/* out[t][r] = bf16(silu(g) * u) with g = W_gate[r] . in[t], u = W_up[r] .
 * in[t], in[t] the RMSNorm of x[t] with norm_w (as ms__cuk_gemv), for r <
 * rows and t < T <= MS__CUDA_GEMV_T_MAX. */
cudaError_t ms__cuk_gemv_swiglu(uint16_t *out, const uint16_t *w_gate, const uint16_t *w_up,
                                int rows, const float *x, const uint16_t *norm_w, float eps, int T,
                                int in, cudaStream_t stream);

/* out[i] = bf16(silu(gate[i]) * up[i]) for i < n. */
cudaError_t ms__cuk_swiglu(uint16_t *out, const float *gate, const float *up, size_t n,
                           cudaStream_t stream);

/* How a row's next token is drawn (see ms__cuk_sample). */
typedef struct ms__cuk_sample {
  float temperature; /* <= 0: greedy */
  int top_k;         /* keep the k most likely (0: all); 1: greedy */
  float top_p;       /* then the smallest head with this share of the mass (1: all) */
  float u;           /* the request's uniform draw in [0, 1) */
} ms__cuk_sample_t;

/* Blocks that find a logits row's arg max together before it is sampled. */
#define MS__CUDA_SAMPLE_SPLIT 32

/* One block's arg max over its part of a row. */
typedef struct ms__cuk_argmax {
  float value;
  int index; /* vocab: none */
} ms__cuk_argmax_t;

/* For r < rows: out[r] = the token drawn from logits row r ([rows][vocab],
 * float32) as params[r] says. Greedy is the arg max, lowest id on ties (as
 * the CPU sampler). Otherwise probabilities are softmax(logits /
 * temperature); the top_k and top_p cuts are thresholds on the logit, so
 * tokens tied with the last one kept are all kept; u times the kept mass
 * picks a token walking the kept ones in id order. Every sum runs in a
 * fixed order: the same row and u give the same token. part is scratch
 * of rows * MS__CUDA_SAMPLE_SPLIT entries on the device. */
cudaError_t ms__cuk_sample(int *out, const float *logits, const ms__cuk_sample_t *params, int rows,
                           int vocab, ms__cuk_argmax_t *part, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* MEMSLEEP_ENGINE_CUDA_KERNELS_H */
