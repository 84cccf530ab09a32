/*
 * compute_cuda.c - the bf16 CUDA compute backend.
 *
 * The same forward pass as compute_cpu.c, on a GPU: weights and the paged
 * KV pool are bfloat16 on the device (the loader and the KV cache put them
 * there), activations float32 with every sum accumulated in float32. The
 * projections and the LM head are cuBLAS GEMMs (bfloat16 inputs, float32
 * output and compute; the attention output and down projections add into
 * the residual stream through beta = 1); everything else is our own
 * kernels (cuda_kernels.cu). Every new token of the batch is one row of
 * the activations, as on the CPU.
 *
 * Memory: nothing here calls cudaMalloc. The scratch - activations, the
 * per-token index tables, a chunk of logits rows, the sampled tokens and
 * the GEMMs' workspace - is one allocation of memsleep tag "workspace" on
 * the device, holding nothing between forward passes, so it can sleep
 * without a backup. The GEMMs are cuBLASLt's, not cuBLAS's: a cuBLAS
 * handle allocates device memory of its own when it is created (outside
 * any region, for the life of the handle), while cuBLASLt takes its
 * workspace with every call and its handle holds none. A batch entry gets
 * its logits row on the host, its next token sampled on the device
 * (cuda_kernels.cu), or both.
 *
 * Decode steps (every entry one token, sampled on the device) run at a
 * fixed set of batch sizes: n requests are padded to the smallest size >=
 * n with rows that read block 0 and store nothing. With at most
 * MS__CUDA_GEMV_T_MAX rows the projections are k_gemv launches (RMSNorm
 * and SwiGLU folded in, q/k/v in one launch: six kernels a layer), whose
 * result for a row does not depend on the batch; larger batches use
 * cuBLASLt at the padded size. Each decode size's step is captured once
 * into a CUDA graph over the same buffers (memsleep memory keeps its
 * addresses across sleep and wake, so the graph stays valid) and replayed
 * after; the graph's executable is device memory the driver allocates,
 * outside any region, so graphs_release destroys the executables and,
 * after graphs_resume, each is instantiated again from its kept graph
 * when next used, without a recapture. A graph replays exactly the kernels the step would launch,
 * so results are the same with and without graphs.
 *
 * Each forward pass ends with the stream drained, so between passes no
 * work is in flight over memory a release may take away.
 */
#include <cublasLt.h>
#include <cuda_runtime_api.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "engine/compute.h"
#include "engine/cuda_kernels.h"
#include "engine/device.h"
#include "memsleep/memsleep.h"

/* cuBLAS's workspace: what NVIDIA recommends for Hopper. */
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
/* Logits rows computed per LM-head GEMM. */
#define LOGIT_ROWS_MAX 64
/* GEMM shapes whose cuBLASLt plan is kept (7 per layer kind and batch). */
#define PLANS 96
/* The batch sizes decode steps run at (those up to max_tokens, and
 * max_tokens itself). */
static const int DECODE_SIZES[] = {1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256};
#define DECODE_SIZES_MAX ((int)(sizeof DECODE_SIZES / sizeof DECODE_SIZES[0]) + 1)

/* The graph of one decode batch size. */
typedef struct decode_graph {
  int rows;             /* the batch size */
  cudaGraph_t graph;    /* captured on first use; kept until destroy */
  cudaGraphExec_t exec; /* its executable, or NULL (not yet, or released) */
  size_t bytes;         /* device memory instantiating it last took (kept across a release) */
} decode_graph_t;

/* A GEMM shape's cuBLASLt descriptors and the algorithm chosen for it. */
typedef struct lt_plan {
  int out, in, T, accumulate; /* the shape; accumulate: beta 1 */
  uint64_t used;              /* last use (0: empty slot) */
  cublasLtMatmulDesc_t op;
  cublasLtMatrixLayout_t a, b, c;
  cublasLtMatmulAlgo_t algo;
} lt_plan_t;

typedef struct cuda_ctx {
  const ms__model_t *m; /* the model (bfloat16 weights on the device) */
  ms__kv_layout_t kv;   /* the KV pool (bfloat16 on the device) */
  int device;           /* CUDA ordinal */
  int max_tokens;       /* new tokens per forward pass at most */
  int max_context;      /* positions per sequence at most */
  size_t table_cap;     /* block-table entries per forward pass at most */
  int logit_rows;       /* rows of the logits buffer */
  int gemv;             /* 1: batches of <= MS__CUDA_GEMV_T_MAX rows use k_gemv */
  decode_graph_t graphs[DECODE_SIZES_MAX]; /* per decode batch size, ascending */
  int n_sizes;                             /* entries of graphs in use */
  int graphs_on;                           /* decode steps replay graphs */
  int graphs_asleep;                       /* executables released */
  uint64_t captures, instantiations, replays;
  char graph_error[200]; /* why graphs were turned off, or "" */
  /* What graph_stats answers: a copy made after each change, under its
   * own lock - a reader never waits for a forward pass (the engine holds
   * its step lock across each one, back to back under load). */
  pthread_mutex_t stats_mu;
  ms__graph_stats_t stats;
  cudaStream_t stream;    /* every kernel, copy and GEMM */
  cublasLtHandle_t lt;    /* cuBLASLt (holds no device memory) */
  lt_plan_t plans[PLANS]; /* kept GEMM plans, least recently used replaced */
  uint64_t plan_clock;    /* use counter for plans */
  void *ws;               /* the device workspace (tag "workspace") */
  size_t ws_bytes;        /* its size */
  /* Device buffers inside ws. */
  float *x;                 /* [max_tokens][hidden] residual stream */
  uint16_t *xh;             /* [max_tokens][hidden] normed input of a block (bf16) */
  float *q;                 /* [max_tokens][q_dim] */
  float *k;                 /* [max_tokens][kv_dim] */
  float *v;                 /* [max_tokens][kv_dim] */
  uint16_t *att;            /* [max_tokens][q_dim] attention output (bf16) */
  float *gate;              /* [max_tokens][intermediate] */
  float *up;                /* [max_tokens][intermediate] */
  uint16_t *hh;             /* [max_tokens][intermediate] silu(gate) * up (bf16) */
  float *logits;            /* [logit_rows][vocab] */
  int *d_next;              /* [max_tokens] tokens sampled on the device */
  ms__cuk_argmax_t *d_part; /* [logit_rows][MS__CUDA_SAMPLE_SPLIT] arg max parts */
  void *cublas_ws;          /* CUBLAS_WORKSPACE_BYTES for cuBLASLt */
  void *idx;                /* the index tables below, uploaded in one copy */
  int *d_tokens;            /* [max_tokens] */
  int *d_pos;               /* [max_tokens] */
  int *d_tab_off;           /* [max_tokens] start of each row's block table in d_tables */
  int *d_sel;               /* [max_tokens] rows whose logits are wanted */
  ms__cuk_sample_t *d_samp; /* [max_tokens] sampling of each selected row */
  int64_t *d_slot;          /* [max_tokens] pool slot each row's key and value go to */
  uint32_t *d_tables;       /* [table_cap] the batch's block tables, one after another */
  size_t idx_bytes;         /* size of the index region */
  /* The host copy of the index region (heap), same layout. */
  void *h_idx;
  float **outp; /* [max_tokens] host logits row of each selected row (heap) */
  int **tokp;   /* [max_tokens] host token of each selected row, or NULL (heap) */
  int *h_next;  /* [max_tokens] sampled tokens back on the host (heap) */
} cuda_ctx_t;

static void stats_publish(cuda_ctx_t *c);

/* Offsets of the index tables in the index region (same on both sides). */
typedef struct idx_layout {
  size_t tokens, pos, tab_off, sel, samp, slot, tables, total;
} idx_layout_t;

static idx_layout_t idx_layout(size_t T, size_t table_cap) {
  idx_layout_t l;
  l.slot = 0;
  l.samp = l.slot + T * sizeof(int64_t);
  l.tokens = l.samp + T * sizeof(ms__cuk_sample_t);
  l.pos = l.tokens + T * sizeof(int);
  l.tab_off = l.pos + T * sizeof(int);
  l.sel = l.tab_off + T * sizeof(int);
  l.tables = l.sel + T * sizeof(int);
  l.total = l.tables + table_cap * sizeof(uint32_t);
  return l;
}

/* The index tables at base: the host copy or the device region. */
typedef struct idx_view {
  int64_t *slot;
  ms__cuk_sample_t *samp;
  int *tokens, *pos, *tab_off, *sel;
  uint32_t *tables;
} idx_view_t;

static idx_view_t idx_view(size_t T, size_t table_cap, void *base) {
  idx_layout_t il = idx_layout(T, table_cap);
  char *b = base;
  idx_view_t v = {(int64_t *)(void *)(b + il.slot),   (ms__cuk_sample_t *)(void *)(b + il.samp),
                  (int *)(void *)(b + il.tokens),     (int *)(void *)(b + il.pos),
                  (int *)(void *)(b + il.tab_off),    (int *)(void *)(b + il.sel),
                  (uint32_t *)(void *)(b + il.tables)};
  return v;
}

static int cuda_err(cudaError_t e, const char *what) {
  cudaGetLastError();
  return ms__fail(MEMSLEEP_EBACKEND, "compute cuda: %s: %s (%s)", what, cudaGetErrorString(e),
                  cudaGetErrorName(e));
}

static int blas_err(cublasStatus_t s, const char *what) {
  return ms__fail(MEMSLEEP_EBACKEND, "compute cuda: %s: cuBLASLt status %d", what, (int)s);
}

static void plan_clear(lt_plan_t *p) {
  if (p->op)
    cublasLtMatmulDescDestroy(p->op);
  if (p->a)
    cublasLtMatrixLayoutDestroy(p->a);
  if (p->b)
    cublasLtMatrixLayoutDestroy(p->b);
  if (p->c)
    cublasLtMatrixLayoutDestroy(p->c);
  memset(p, 0, sizeof *p);
}

static void cuda_destroy(void *ctx) {
  cuda_ctx_t *c = ctx;
  if (!c)
    return;
  cudaSetDevice(c->device);
  if (c->stream)
    cudaStreamSynchronize(c->stream);
  for (int i = 0; i < c->n_sizes; i++) {
    if (c->graphs[i].exec)
      cudaGraphExecDestroy(c->graphs[i].exec);
    if (c->graphs[i].graph)
      cudaGraphDestroy(c->graphs[i].graph);
  }
  for (int i = 0; i < PLANS; i++)
    plan_clear(&c->plans[i]);
  if (c->lt)
    cublasLtDestroy(c->lt);
  if (c->stream)
    cudaStreamDestroy(c->stream);
  if (c->ws)
    memsleep_free(c->ws);
  free(c->h_idx);
  free(c->outp);
  free(c->tokp);
  free(c->h_next);
  pthread_mutex_destroy(&c->stats_mu);
  free(c);
}

/* Carves ws into the buffers, each 256-byte aligned; returns the bytes
 * needed (ws NULL: only counts). */
static size_t carve(cuda_ctx_t *c, char *ws) {
  const ms__model_config_t *cfg = &c->m->cfg;
  size_t T = (size_t)c->max_tokens, H = (size_t)cfg->hidden_size;
  size_t qd = (size_t)cfg->num_heads * cfg->head_dim, kvd = (size_t)c->kv.kv_dim;
  size_t I = (size_t)cfg->intermediate_size, V = (size_t)cfg->vocab_size;
  idx_layout_t il = idx_layout(T, c->table_cap);
  struct {
    void **p;
    size_t bytes;
  } parts[] = {
      {(void **)&c->x, T * H * 4},
      {(void **)&c->xh, T * H * 2},
      {(void **)&c->q, T * qd * 4},
      {(void **)&c->k, T * kvd * 4},
      {(void **)&c->v, T * kvd * 4},
      {(void **)&c->att, T * qd * 2},
      {(void **)&c->gate, T * I * 4},
      {(void **)&c->up, T * I * 4},
      {(void **)&c->hh, T * I * 2},
      {(void **)&c->logits, (size_t)c->logit_rows * V * 4},
      {(void **)&c->d_next, T * sizeof(int)},
      {(void **)&c->d_part,
       (size_t)c->logit_rows * MS__CUDA_SAMPLE_SPLIT * sizeof(ms__cuk_argmax_t)},
      {&c->cublas_ws, CUBLAS_WORKSPACE_BYTES},
      {&c->idx, il.total},
  };
  size_t off = 0;
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    if (ws)
      *parts[i].p = ws + off;
    off += (parts[i].bytes + 255) / 256 * 256;
  }
  if (ws) {
    idx_view_t d = idx_view(T, c->table_cap, c->idx);
    c->d_slot = d.slot;
    c->d_tokens = d.tokens;
    c->d_pos = d.pos;
    c->d_tab_off = d.tab_off;
    c->d_sel = d.sel;
    c->d_samp = d.samp;
    c->d_tables = d.tables;
    c->idx_bytes = il.total;
  }
  return off;
}

/* 1 if k_gemv can take the model's projections: widths a multiple of 8,
 * the hidden size at most MS__CUDA_GEMV_NORM_IN_MAX, and every weight and
 * norm 16-byte aligned (MEMSLEEP_CUDA_GEMV=0 turns
 * it off, to compare). */
static int gemv_usable(const ms__model_t *m) {
  const ms__model_config_t *cfg = &m->cfg;
  const char *env = getenv("MEMSLEEP_CUDA_GEMV");
  if (env && strcmp(env, "0") == 0)
    return 0;
  if (cfg->hidden_size % 8 || (cfg->num_heads * cfg->head_dim) % 8 || cfg->intermediate_size % 8 ||
      cfg->hidden_size > MS__CUDA_GEMV_NORM_IN_MAX)
    return 0;
  uintptr_t bits = (uintptr_t)m->lm_head | (uintptr_t)m->final_norm;
  for (int l = 0; l < cfg->num_layers; l++) {
    const ms__layer_t *L = &m->layers[l];
    bits |= (uintptr_t)L->wq | (uintptr_t)L->wk | (uintptr_t)L->wv | (uintptr_t)L->wo |
            (uintptr_t)L->w_gate | (uintptr_t)L->w_up | (uintptr_t)L->w_down |
            (uintptr_t)L->attn_norm | (uintptr_t)L->ffn_norm;
  }
  return (bits & 15u) == 0;
}

static int cuda_create(const ms__model_t *m, const ms__kv_layout_t *kv, int threads, int max_tokens,
                       int max_context, void **out) {
  (void)threads; /* the GPU sets its own parallelism */
  const ms__model_config_t *cfg = &m->cfg;
  if (!out || max_tokens < 1 || max_context < 1 || cfg->num_kv_heads < 1 ||
      cfg->num_heads % cfg->num_kv_heads != 0 || cfg->head_dim % 2 != 0 ||
      cfg->head_dim > MS__CUDA_HEAD_DIM_MAX || kv->kv_dim != cfg->num_kv_heads * cfg->head_dim ||
      kv->num_layers != cfg->num_layers || kv->block_tokens < 1)
    return ms__fail(MEMSLEEP_EINVAL,
                    "compute cuda: bad shapes (heads %d, kv heads %d, head_dim %d (at most %d), "
                    "kv_dim %d, max_tokens %d, max_context %d)",
                    cfg->num_heads, cfg->num_kv_heads, cfg->head_dim, MS__CUDA_HEAD_DIM_MAX,
                    kv->kv_dim, max_tokens, max_context);
  if (m->device < 0 || m->elem_bytes != 2 || kv->device != m->device || kv->elem_bytes != 2)
    return ms__fail(MEMSLEEP_EINVAL,
                    "compute cuda: the weights (device %d, %d-byte elements) and the KV pool "
                    "(device %d, %d-byte elements) must be bfloat16 on one CUDA device",
                    m->device, m->elem_bytes, kv->device, kv->elem_bytes);
  int rc = ms__device_check(m->device);
  if (rc != 0)
    return rc;
  cuda_ctx_t *c = calloc(1, sizeof *c);
  if (!c)
    return ms__fail(MEMSLEEP_ENOMEM, "compute cuda: context (%zu bytes)", sizeof *c);
  pthread_mutex_init(&c->stats_mu, NULL);
  c->m = m;
  c->kv = *kv;
  c->device = m->device;
  c->max_tokens = max_tokens;
  c->max_context = max_context;
  /* Each sequence has at least one new token, so at most max_tokens
   * sequences, each with a table covering at most max_context positions. */
  size_t per_seq = ((size_t)max_context + (size_t)kv->block_tokens - 1) / (size_t)kv->block_tokens;
  c->table_cap = (size_t)max_tokens * per_seq + 1; /* + the padding rows' block 0 */
  c->logit_rows = max_tokens < LOGIT_ROWS_MAX ? max_tokens : LOGIT_ROWS_MAX;
  c->ws_bytes = carve(c, NULL);
  cudaError_t e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    c->stream = NULL;
    rc = cuda_err(e, "cudaStreamCreateWithFlags");
    goto fail;
  }
  rc = memsleep_alloc(&c->ws, c->ws_bytes, c->device, "workspace", 0);
  if (rc != 0) {
    ms__fail_append(" (compute cuda: workspace of %zu bytes)", c->ws_bytes);
    goto fail;
  }
  carve(c, c->ws);
  c->h_idx = malloc(c->idx_bytes);
  c->outp = malloc(sizeof(float *) * (size_t)max_tokens);
  c->tokp = malloc(sizeof(int *) * (size_t)max_tokens);
  c->h_next = malloc(sizeof(int) * (size_t)max_tokens);
  if (!c->h_idx || !c->outp || !c->tokp || !c->h_next) {
    rc = ms__fail(MEMSLEEP_ENOMEM, "compute cuda: index tables (%zu bytes)", c->idx_bytes);
    goto fail;
  }
  cublasStatus_t s = cublasLtCreate(&c->lt);
  if (s != CUBLAS_STATUS_SUCCESS) {
    c->lt = NULL;
    rc = blas_err(s, "cublasLtCreate");
    goto fail;
  }
  for (size_t i = 0; i < sizeof DECODE_SIZES / sizeof DECODE_SIZES[0]; i++)
    if (DECODE_SIZES[i] <= max_tokens)
      c->graphs[c->n_sizes++].rows = DECODE_SIZES[i];
  if (c->graphs[c->n_sizes - 1].rows < max_tokens)
    c->graphs[c->n_sizes++].rows = max_tokens;
  c->graphs_on = 1;
  c->gemv = gemv_usable(m);
  stats_publish(c);
  *out = c;
  return 0;
fail:
  cuda_destroy(c);
  return rc;
}

/* The plan for a GEMM shape: a kept one, or a new one (descriptors and
 * the heuristic's first algorithm) in the least recently used slot. */
static int plan_for(cuda_ctx_t *c, int out, int in, int T, int accumulate, lt_plan_t **pp) {
  lt_plan_t *victim = &c->plans[0];
  for (int i = 0; i < PLANS; i++) {
    lt_plan_t *p = &c->plans[i];
    if (p->used && p->out == out && p->in == in && p->T == T && p->accumulate == accumulate) {
      p->used = ++c->plan_clock;
      *pp = p;
      return 0;
    }
    if (p->used < victim->used)
      victim = p;
  }
  lt_plan_t *p = victim;
  plan_clear(p);
  cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  cublasStatus_t s = cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutCreate(&p->a, CUDA_R_16BF, (uint64_t)in, (uint64_t)out, in);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutCreate(&p->b, CUDA_R_16BF, (uint64_t)in, (uint64_t)T, in);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32F, (uint64_t)out, (uint64_t)T, out);
  cublasLtMatmulPreference_t pref = NULL;
  size_t ws = CUBLAS_WORKSPACE_BYTES;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceCreate(&pref);
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                             sizeof ws);
  cublasLtMatmulHeuristicResult_t res;
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulAlgoGetHeuristic(c->lt, p->op, p->a, p->b, p->c, p->c, pref, 1, &res, &found);
  if (pref)
    cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS || found < 1) {
    plan_clear(p);
    return s != CUBLAS_STATUS_SUCCESS
               ? blas_err(s, "GEMM plan")
               : ms__fail(MEMSLEEP_EBACKEND,
                          "compute cuda: cuBLASLt has no algorithm for a %d x %d x %d GEMM", out,
                          in, T);
  }
  p->algo = res.algo;
  p->out = out;
  p->in = in;
  p->T = T;
  p->accumulate = accumulate;
  p->used = ++c->plan_clock;
  *pp = p;
  return 0;
}

/* Y[T][out] = X[T][in] . W[out][in]^T (+ Y when beta is 1): bfloat16
 * inputs, float32 output and accumulation. cuBLASLt is column-major: there
 * W is in x out (ld in), X in x T (ld in), Y out x T (ld out). */
static int gemm(cuda_ctx_t *c, const void *W, const uint16_t *X, float *Y, int out, int in, int T,
                float beta, const char *what) {
  const float alpha = 1.0f;
  lt_plan_t *p = NULL;
  int rc = plan_for(c, out, in, T, beta != 0.0f, &p);
  if (rc != 0)
    return rc;
  cublasStatus_t s = cublasLtMatmul(c->lt, p->op, &alpha, W, p->a, X, p->b, &beta, Y, p->c, Y, p->c,
                                    &p->algo, c->cublas_ws, CUBLAS_WORKSPACE_BYTES, c->stream);
  return s == CUBLAS_STATUS_SUCCESS ? 0 : blas_err(s, what);
}

#define CK(call, what)                                                                             \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess)                                                                         \
      return cuda_err(e_, what);                                                                   \
  } while (0)
#define CB(call)                                                                                   \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_ != 0)                                                                                  \
      return rc_;                                                                                  \
  } while (0)

/* Lays the batch out as token rows in the host index tables; *T_out gets
 * the rows, *nsel the rows whose logits are wanted (their host rows in
 * c->outp). */
static int layout_batch(cuda_ctx_t *c, const ms__batch_seq_t *seqs, size_t n, int *T_out,
                        int *nsel_out, size_t *ntab_out) {
  const ms__model_config_t *cfg = &c->m->cfg;
  idx_view_t h = idx_view((size_t)c->max_tokens, c->table_cap, c->h_idx);
  int64_t *slot = h.slot;
  int *tokens = h.tokens, *pos = h.pos, *tab_off = h.tab_off, *sel = h.sel;
  uint32_t *tables = h.tables;
  ms__cuk_sample_t *samp = h.samp;
  int bt = c->kv.block_tokens, T = 0, nsel = 0;
  size_t ntab = 0;
  for (size_t s = 0; s < n; s++) {
    const ms__batch_seq_t *sq = &seqs[s];
    if (sq->n_tokens < 1 || sq->start_pos < 0 || !sq->tokens || !sq->block_table ||
        sq->start_pos + sq->n_tokens > c->max_context || T + sq->n_tokens > c->max_tokens)
      return ms__fail(MEMSLEEP_EINVAL,
                      "compute cuda: batch entry %zu (n_tokens %d at %d) does not fit "
                      "(max_tokens %d, max_context %d)",
                      s, sq->n_tokens, sq->start_pos, c->max_tokens, c->max_context);
    size_t nblk = ((size_t)sq->start_pos + (size_t)sq->n_tokens + (size_t)bt - 1) / (size_t)bt;
    for (size_t b = 0; b < nblk; b++) {
      if (sq->block_table[b] >= c->kv.num_blocks)
        return ms__fail(MEMSLEEP_EINVAL, "compute cuda: batch entry %zu names block %u of %zu", s,
                        sq->block_table[b], c->kv.num_blocks);
      tables[ntab + b] = sq->block_table[b];
    }
    int first = sq->all_logits ? 0 : sq->n_tokens - 1;
    for (int i = 0; i < sq->n_tokens; i++) {
      int tok = sq->tokens[i];
      if (tok < 0 || tok >= cfg->vocab_size)
        return ms__fail(MEMSLEEP_EINVAL, "compute cuda: token %d out of [0, %d)", tok,
                        cfg->vocab_size);
      int p = sq->start_pos + i;
      tokens[T] = tok;
      pos[T] = p;
      tab_off[T] = (int)ntab;
      slot[T] = (int64_t)sq->block_table[p / bt] * bt + p % bt;
      int last = i == sq->n_tokens - 1;
      if ((sq->logits && i >= first) || (sq->token && last)) {
        sel[nsel] = T;
        c->outp[nsel] = sq->logits && i >= first
                            ? sq->logits + (size_t)(sq->all_logits ? i : 0) * cfg->vocab_size
                            : NULL;
        c->tokp[nsel] = sq->token && last ? sq->token : NULL;
        ms__cuk_sample_t sp = {0.0f, 0, 1.0f, 0.0f};
        if (c->tokp[nsel]) {
          sp.temperature = sq->temperature;
          sp.top_k = sq->top_k;
          sp.top_p = sq->top_p;
          sp.u = (float)sq->u;
        }
        samp[nsel] = sp;
        nsel++;
      }
      T++;
    }
    ntab += nblk;
  }
  *T_out = T;
  *nsel_out = nsel;
  *ntab_out = ntab;
  return 0;
}

/* Copies logits rows [0, rows) of the device buffer to the host rows
 * c->outp[first ..], one copy per run of rows adjacent in host memory. */
static int copy_logits(cuda_ctx_t *c, int first, int rows) {
  size_t V = (size_t)c->m->cfg.vocab_size;
  for (int r = 0; r < rows;) {
    if (!c->outp[first + r]) {
      r++;
      continue;
    }
    int run = 1;
    while (r + run < rows && c->outp[first + r + run] == c->outp[first + r] + (size_t)run * V)
      run++;
    CK(cudaMemcpyAsync(c->outp[first + r], c->logits + (size_t)r * V,
                       (size_t)run * V * sizeof(float), cudaMemcpyDeviceToHost, c->stream),
       "cudaMemcpyAsync (logits to the host)");
    r += run;
  }
  return 0;
}

/* RoPE, the new keys and values into the pool, and attention: c->att
 * from c->q, c->k, c->v of T rows. decode: the pass is a decode step (one
 * new token a sequence; see ms__cuk_attention's past_ready). */
static int rope_attention(cuda_ctx_t *c, const ms__layer_t *L, uint16_t *kl, uint16_t *vl, int T,
                          int decode) {
  const ms__model_config_t *cfg = &c->m->cfg;
  int hd = cfg->head_dim, nh = cfg->num_heads, nkv = cfg->num_kv_heads;
  CK(ms__cuk_rope_store(c->q, c->k, c->v, L->bq, L->bk, L->bv, c->d_pos, c->d_slot, kl, vl, T, nh,
                        nkv, hd, cfg->rope_theta, c->stream),
     "rope kernel");
  CK(ms__cuk_attention(c->att, c->q, kl, vl, c->d_tables, c->d_tab_off, c->d_pos, T, nh, nkv, hd,
                       c->kv.block_tokens, decode, c->stream),
     "attention kernel");
  return 0;
}

/* One decoder layer for T <= MS__CUDA_GEMV_T_MAX rows: five launches
 * (q/k/v with RoPE and the KV store, attention, o_proj, gate/up with
 * SwiGLU, down_proj). decode as for rope_attention. */
static int layer_small(cuda_ctx_t *c, const ms__layer_t *L, uint16_t *kl, uint16_t *vl, int T,
                       int decode) {
  const ms__model_config_t *cfg = &c->m->cfg;
  int H = cfg->hidden_size, qd = cfg->num_heads * cfg->head_dim;
  int I = cfg->intermediate_size;
  float eps = cfg->rms_norm_eps;
  cudaStream_t st = c->stream;
  ms__cuk_qkv_t qkv = {.wq = L->wq,
                       .wk = L->wk,
                       .wv = L->wv,
                       .bq = L->bq,
                       .bk = L->bk,
                       .bv = L->bv,
                       .q = c->q,
                       .pos = c->d_pos,
                       .slot = c->d_slot,
                       .k_pool = kl,
                       .v_pool = vl,
                       .num_heads = cfg->num_heads,
                       .num_kv_heads = cfg->num_kv_heads,
                       .head_dim = cfg->head_dim,
                       .theta = cfg->rope_theta};
  CK(ms__cuk_gemv_qkv(&qkv, c->x, L->attn_norm, eps, T, H, st), "q/k/v kernel");
  CK(ms__cuk_attention(c->att, c->q, kl, vl, c->d_tables, c->d_tab_off, c->d_pos, T, cfg->num_heads,
                       cfg->num_kv_heads, cfg->head_dim, c->kv.block_tokens, decode, st),
     "attention kernel");
  ms__cuk_gemv_seg_t o = {L->wo, c->x, H};
  CK(ms__cuk_gemv(&o, 1, c->att, NULL, NULL, NULL, 0.0f, T, qd, 1, st), "o_proj kernel");
  CK(ms__cuk_gemv_swiglu(c->hh, L->w_gate, L->w_up, I, c->x, L->ffn_norm, eps, T, H, st),
     "gate/up kernel");
  ms__cuk_gemv_seg_t down = {L->w_down, c->x, H};
  CK(ms__cuk_gemv(&down, 1, c->hh, NULL, NULL, NULL, 0.0f, T, I, 1, st), "down_proj kernel");
  return 0;
}

/* One decoder layer for any T: cuBLASLt GEMMs between our kernels. */
static int layer_large(cuda_ctx_t *c, const ms__layer_t *L, uint16_t *kl, uint16_t *vl, int T,
                       int decode) {
  const ms__model_config_t *cfg = &c->m->cfg;
  int H = cfg->hidden_size, qd = cfg->num_heads * cfg->head_dim, kvd = c->kv.kv_dim;
  int I = cfg->intermediate_size;
  float eps = cfg->rms_norm_eps;
  cudaStream_t st = c->stream;
  CK(ms__cuk_rmsnorm(c->xh, c->x, NULL, L->attn_norm, T, H, eps, st), "rmsnorm kernel");
  CB(gemm(c, L->wq, c->xh, c->q, qd, H, T, 0.0f, "q_proj"));
  CB(gemm(c, L->wk, c->xh, c->k, kvd, H, T, 0.0f, "k_proj"));
  CB(gemm(c, L->wv, c->xh, c->v, kvd, H, T, 0.0f, "v_proj"));
  CB(rope_attention(c, L, kl, vl, T, decode));
  CB(gemm(c, L->wo, c->att, c->x, H, qd, T, 1.0f, "o_proj"));
  CK(ms__cuk_rmsnorm(c->xh, c->x, NULL, L->ffn_norm, T, H, eps, st), "rmsnorm kernel");
  CB(gemm(c, L->w_gate, c->xh, c->gate, I, H, T, 0.0f, "gate_proj"));
  CB(gemm(c, L->w_up, c->xh, c->up, I, H, T, 0.0f, "up_proj"));
  CK(ms__cuk_swiglu(c->hh, c->gate, c->up, (size_t)T * I, st), "swiglu kernel");
  CB(gemm(c, L->w_down, c->hh, c->x, H, I, T, 1.0f, "down_proj"));
  return 0;
}

/* Queues the forward pass of T rows (index tables already on the device):
 * logits of the nsel selected rows, copied to the host rows that want
 * them, and the next token of those that want one (all of them when
 * sample_all: a decode step, whose work must not depend on the host
 * tables so that a graph of it can be replayed). Copies nothing to the
 * host when sample_all. */
static int forward_queue(cuda_ctx_t *c, int T, int nsel, int sample_all) {
  const ms__model_t *m = c->m;
  const ms__model_config_t *cfg = &m->cfg;
  int H = cfg->hidden_size, V = cfg->vocab_size;
  float eps = cfg->rms_norm_eps;
  size_t layer_elems = c->kv.num_blocks * (size_t)c->kv.block_tokens * (size_t)c->kv.kv_dim;
  cudaStream_t st = c->stream;
  int small = c->gemv && T <= MS__CUDA_GEMV_T_MAX;

  CK(ms__cuk_embed(c->x, m->embed, c->d_tokens, T, H, st), "embedding kernel");
  for (int l = 0; l < cfg->num_layers; l++) {
    const ms__layer_t *L = &m->layers[l];
    uint16_t *kl = (uint16_t *)c->kv.k + (size_t)l * layer_elems;
    uint16_t *vl = (uint16_t *)c->kv.v + (size_t)l * layer_elems;
    CB(small ? layer_small(c, L, kl, vl, T, sample_all) : layer_large(c, L, kl, vl, T, sample_all));
  }
  /* Final norm and LM head for the selected rows, a chunk at a time. */
  for (int r0 = 0; r0 < nsel; r0 += c->logit_rows) {
    int rows = nsel - r0 < c->logit_rows ? nsel - r0 : c->logit_rows;
    if (c->gemv && rows <= MS__CUDA_GEMV_T_MAX) {
      ms__cuk_gemv_seg_t head = {m->lm_head, c->logits, V};
      CK(ms__cuk_gemv(&head, 1, NULL, c->x, c->d_sel + r0, m->final_norm, eps, rows, H, 0, st),
         "lm_head kernel");
    } else {
      CK(ms__cuk_rmsnorm(c->xh, c->x, c->d_sel + r0, m->final_norm, rows, H, eps, st),
         "rmsnorm kernel");
      CB(gemm(c, m->lm_head, c->xh, c->logits, V, H, rows, 0.0f, "lm_head"));
    }
    int want_tokens = sample_all;
    if (!sample_all) {
      CB(copy_logits(c, r0, rows));
      for (int r = 0; r < rows; r++)
        want_tokens |= c->tokp[r0 + r] != NULL;
    }
    if (want_tokens)
      CK(ms__cuk_sample(c->d_next + r0, c->logits, c->d_samp + r0, rows, V, c->d_part, st),
         "sampling kernel");
  }
  return 0;
}

/* 1 if the batch is a decode step: every entry one token, sampled on the
 * device, no logits wanted on the host. */
static int is_decode(const ms__batch_seq_t *seqs, size_t n) {
  for (size_t s = 0; s < n; s++)
    if (seqs[s].n_tokens != 1 || seqs[s].logits || !seqs[s].token)
      return 0;
  return n > 0;
}

/* Index of the decode size a step of n rows runs at. */
static int decode_size(const cuda_ctx_t *c, int n) {
  int i = 0;
  while (i < c->n_sizes - 1 && c->graphs[i].rows < n)
    i++;
  return i;
}

/* Pads the host index tables of a decode step of T rows to B rows: token
 * 0 at position 0 over block 0, storing nothing, sampled greedily (and
 * thrown away). */
static void pad_batch(cuda_ctx_t *c, int T, int B, size_t *ntab) {
  idx_view_t h = idx_view((size_t)c->max_tokens, c->table_cap, c->h_idx);
  h.tables[*ntab] = 0;
  for (int t = T; t < B; t++) {
    h.tokens[t] = 0;
    h.pos[t] = 0;
    h.tab_off[t] = (int)*ntab;
    h.slot[t] = -1;
    h.sel[t] = t;
    h.samp[t] = (ms__cuk_sample_t){0.0f, 0, 1.0f, 0.0f};
    c->outp[t] = NULL;
    c->tokp[t] = NULL;
  }
  (*ntab)++;
}

/* Copies the graphs' state for graph_stats. */
static void stats_publish(cuda_ctx_t *c) {
  ms__graph_stats_t s;
  memset(&s, 0, sizeof s);
  s.enabled = c->graphs_on;
  s.asleep = c->graphs_asleep;
  for (int i = 0; i < c->n_sizes; i++) {
    s.graphs += c->graphs[i].graph != NULL;
    s.executables += c->graphs[i].exec != NULL;
    s.exec_bytes += c->graphs[i].exec ? c->graphs[i].bytes : 0;
    s.reserved_bytes += c->graphs[i].bytes;
  }
  s.captures = c->captures;
  s.instantiations = c->instantiations;
  s.replays = c->replays;
  snprintf(s.error, sizeof s.error, "%s", c->graph_error);
  pthread_mutex_lock(&c->stats_mu);
  c->stats = s;
  pthread_mutex_unlock(&c->stats_mu);
}

/* Turns graphs off for good after a failure, saying why once. */
static void graphs_fail(cuda_ctx_t *c, const char *what, cudaError_t e) {
  snprintf(c->graph_error, sizeof c->graph_error, "%s: %s (%s)", what, cudaGetErrorString(e),
           cudaGetErrorName(e));
  c->graphs_on = 0;
  fprintf(stderr, "compute cuda: CUDA graphs turned off, decode steps run without them: %s\n",
          c->graph_error);
  cudaGetLastError();
  stats_publish(c);
}

/* Instantiates g's executable, noting the device memory it took. */
static cudaError_t graph_instantiate(cuda_ctx_t *c, decode_graph_t *g) {
  size_t free0 = 0, free1 = 0, total = 0;
  cudaMemGetInfo(&free0, &total);
  cudaError_t e = cudaGraphInstantiate(&g->exec, g->graph, 0);
  if (e != cudaSuccess) {
    g->exec = NULL;
    return e;
  }
  cudaMemGetInfo(&free1, &total);
  g->bytes = free0 > free1 ? free0 - free1 : 0;
  c->instantiations++;
  return cudaSuccess;
}

/* Runs the decode step of g->rows rows by its graph, capturing and
 * instantiating it first when needed. 1: graphs cannot be used (turned
 * off; the caller launches the step itself); 0 or a negative code. */
static int graph_run(cuda_ctx_t *c, decode_graph_t *g) {
  if (!g->graph) {
    cudaError_t e = cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
      graphs_fail(c, "cudaStreamBeginCapture", e);
      return 1;
    }
    int rc = forward_queue(c, g->rows, g->rows, 1);
    cudaGraph_t graph = NULL;
    e = cudaStreamEndCapture(c->stream, &graph);
    if (rc != 0 || e != cudaSuccess) {
      if (graph)
        cudaGraphDestroy(graph);
      graphs_fail(c, rc != 0 ? memsleep_last_error() : "cudaStreamEndCapture",
                  e != cudaSuccess ? e : cudaErrorStreamCaptureInvalidated);
      return 1;
    }
    g->graph = graph;
    c->captures++;
  }
  if (!g->exec) {
    /* No room for the executable (or another refusal): this step runs
     * without its graph, and the next one tries again. */
    cudaError_t e = graph_instantiate(c, g);
    if (e != cudaSuccess) {
      snprintf(c->graph_error, sizeof c->graph_error,
               "instantiating the decode graph of %d rows: %s (%s); the step ran without it",
               g->rows, cudaGetErrorString(e), cudaGetErrorName(e));
      cudaGetLastError();
      stats_publish(c);
      return 1;
    }
  }
  cudaError_t e = cudaGraphLaunch(g->exec, c->stream);
  if (e != cudaSuccess)
    return cuda_err(e, "cudaGraphLaunch (decode step)");
  c->replays++;
  stats_publish(c);
  return 0;
}

static int cuda_forward(void *ctx, const ms__batch_seq_t *seqs, size_t n) {
  cuda_ctx_t *c = ctx;
  int T = 0, nsel = 0;
  size_t ntab = 0;
  int rc = layout_batch(c, seqs, n, &T, &nsel, &ntab);
  if (rc != 0 || T == 0)
    return rc;
  cudaError_t e = cudaSetDevice(c->device);
  if (e != cudaSuccess)
    return cuda_err(e, "cudaSetDevice");
  int decode = is_decode(seqs, n), rows = T, wanted = nsel;
  decode_graph_t *g = NULL;
  if (decode) {
    g = &c->graphs[decode_size(c, T)];
    pad_batch(c, T, g->rows, &ntab);
    rows = nsel = g->rows;
  }
  /* Only the used part of the tables region travels. */
  idx_layout_t il = idx_layout((size_t)c->max_tokens, c->table_cap);
  size_t bytes = il.tables + ntab * sizeof(uint32_t);
  e = cudaMemcpyAsync(c->idx, c->h_idx, bytes, cudaMemcpyHostToDevice, c->stream);
  if (e != cudaSuccess)
    return cuda_err(e, "cudaMemcpyAsync (index tables)");
  rc = 1;
  if (decode && c->graphs_on && !c->graphs_asleep)
    rc = graph_run(c, g);
  if (rc == 1)
    rc = forward_queue(c, rows, nsel, decode);
  if (rc == 0 && wanted > 0) {
    e = cudaMemcpyAsync(c->h_next, c->d_next, sizeof(int) * (size_t)wanted, cudaMemcpyDeviceToHost,
                        c->stream);
    if (e != cudaSuccess)
      rc = cuda_err(e, "cudaMemcpyAsync (sampled tokens to the host)");
  }
  /* Drain the stream whatever happened: nothing may still run over the
   * pool or the workspace when the scheduler reports the step done. */
  e = cudaStreamSynchronize(c->stream);
  if (rc == 0 && e != cudaSuccess)
    rc = cuda_err(e, "forward pass");
  for (int i = 0; rc == 0 && i < wanted; i++)
    if (c->tokp[i])
      *c->tokp[i] = c->h_next[i];
  return rc;
}

static void cuda_set_graphs(void *ctx, int on) {
  cuda_ctx_t *c = ctx;
  c->graphs_on = on != 0;
  if (on)
    c->graph_error[0] = '\0';
  stats_publish(c);
}

static int cuda_graphs_release(void *ctx) {
  cuda_ctx_t *c = ctx;
  cudaSetDevice(c->device);
  cudaStreamSynchronize(c->stream);
  for (int i = 0; i < c->n_sizes; i++)
    if (c->graphs[i].exec) {
      cudaGraphExecDestroy(c->graphs[i].exec);
      c->graphs[i].exec = NULL;
    }
  c->graphs_asleep = 1;
  stats_publish(c);
  return 0;
}

/* The executables come back when each graph is next used (graph_run):
 * the driver checks the addresses the kernels take, so they are made once
 * the memory is awake, and a wake does not wait for the ones unused. */
static int cuda_graphs_resume(void *ctx) {
  cuda_ctx_t *c = ctx;
  c->graphs_asleep = 0;
  stats_publish(c);
  return 0;
}

static void cuda_graph_stats(void *ctx, ms__graph_stats_t *out) {
  cuda_ctx_t *c = ctx;
  pthread_mutex_lock(&c->stats_mu);
  *out = c->stats;
  pthread_mutex_unlock(&c->stats_mu);
}

const ms__compute_ops_t ms__compute_cuda = {
    .name = "cuda",
    .samples = 1,
    .create = cuda_create,
    .forward = cuda_forward,
    .destroy = cuda_destroy,
    .set_graphs = cuda_set_graphs,
    .graphs_release = cuda_graphs_release,
    .graphs_resume = cuda_graphs_resume,
    .graph_stats = cuda_graph_stats,
};
