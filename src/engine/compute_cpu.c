/*
 * compute_cpu.c - the float32 CPU compute backend.
 *
 * One forward pass of a Llama-family decoder over a batch of sequences:
 * every new token of every sequence is a row of the activations, so a
 * prompt chunk is processed in one pass and decode tokens of many requests
 * share each read of the weights. Per layer: RMSNorm, q/k/v projections
 * (with Qwen2's biases), RoPE in the Hugging Face "rotate_half" convention,
 * the new keys and values written into the paged KV pool, grouped-query
 * attention over the pool with a causal mask, the output projection,
 * RMSNorm, SwiGLU (silu(gate) * up) and the down projection; then the final
 * norm and lm_head for the tokens whose logits were asked for.
 *
 * The matrix work is split by output rows over a small pool of threads of
 * our own (the calling thread is one of them). Each output element is
 * always computed by the same code in the same order, whatever the batch
 * and however the rows are split, so a sequence's logits are bit-identical
 * alone or inside a busy batch: that is what makes seeded sampling
 * reproducible across batch compositions.
 *
 * Scratch buffers live in one allocation of memsleep tag "workspace"; small
 * per-token tables are ordinary heap memory.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/error.h"
#include "engine/compute.h"
#include "memsleep/memsleep.h"

#define CPU_THREADS_MAX 64

/* ---- thread pool ---------------------------------------------------- */

/* A task over [begin, end) of some index range, run by thread tid. */
typedef void (*task_fn)(void *arg, size_t begin, size_t end, int tid);

typedef struct pool {
  pthread_t threads[CPU_THREADS_MAX]; /* workers 1 .. n-1 (0 is the caller) */
  int n;                              /* threads in all, the caller included */
  int started;                        /* workers actually started */
  pthread_mutex_t mu;                 /* guards everything below */
  pthread_cond_t start_cv;            /* workers wait here for a new generation */
  pthread_cond_t done_cv;             /* the caller waits here for pending == 0 */
  uint64_t gen;                       /* bumped for each parallel run */
  int pending;                        /* workers not done with this generation */
  int stop;                           /* 1: workers exit */
  task_fn fn;                         /* the task of this generation */
  void *arg;                          /* its argument */
  size_t total;                       /* its index range is [0, total) */
} pool_t;

typedef struct worker_arg {
  pool_t *pool; /* the pool */
  int tid;      /* this worker's index (1 .. n-1) */
} worker_arg_t;

static void part_range(size_t total, int parts, int i, size_t *b, size_t *e) {
  *b = total * (size_t)i / (size_t)parts;
  *e = total * (size_t)(i + 1) / (size_t)parts;
}

static void *pool_worker(void *p) {
  worker_arg_t *wa = p;
  pool_t *pl = wa->pool;
  int tid = wa->tid;
  free(wa);
  uint64_t seen = 0;
  pthread_mutex_lock(&pl->mu);
  for (;;) {
    while (!pl->stop && pl->gen == seen)
      pthread_cond_wait(&pl->start_cv, &pl->mu);
    if (pl->stop)
      break;
    seen = pl->gen;
    task_fn fn = pl->fn;
    void *arg = pl->arg;
    size_t b, e;
    part_range(pl->total, pl->n, tid, &b, &e);
    pthread_mutex_unlock(&pl->mu);
    if (b < e)
      fn(arg, b, e, tid);
    pthread_mutex_lock(&pl->mu);
    if (--pl->pending == 0)
      pthread_cond_signal(&pl->done_cv);
  }
  pthread_mutex_unlock(&pl->mu);
  return NULL;
}

/* Runs fn over [0, total) split evenly over the pool's threads, the caller
 * taking part 0; returns when every part is done. Small ranges run on the
 * caller alone (waking threads costs more than the work). */
static void pool_run(pool_t *pl, task_fn fn, void *arg, size_t total, size_t min_parallel) {
  if (pl->n <= 1 || total < min_parallel) {
    fn(arg, 0, total, 0);
    return;
  }
  pthread_mutex_lock(&pl->mu);
  pl->fn = fn;
  pl->arg = arg;
  pl->total = total;
  pl->pending = pl->n - 1;
  pl->gen++;
  pthread_cond_broadcast(&pl->start_cv);
  pthread_mutex_unlock(&pl->mu);
  size_t b, e;
  part_range(total, pl->n, 0, &b, &e);
  if (b < e)
    fn(arg, b, e, 0);
  pthread_mutex_lock(&pl->mu);
  while (pl->pending > 0)
    pthread_cond_wait(&pl->done_cv, &pl->mu);
  pthread_mutex_unlock(&pl->mu);
}

static void pool_stop(pool_t *pl) {
  pthread_mutex_lock(&pl->mu);
  pl->stop = 1;
  pthread_cond_broadcast(&pl->start_cv);
  pthread_mutex_unlock(&pl->mu);
  for (int i = 0; i < pl->started; i++)
    pthread_join(pl->threads[i], NULL);
  pthread_cond_destroy(&pl->start_cv);
  pthread_cond_destroy(&pl->done_cv);
  pthread_mutex_destroy(&pl->mu);
}

/* Starts n - 1 workers. On failure stops those started and returns the
 * error; the pool is then unusable. */
static int pool_start(pool_t *pl, int n) {
  memset(pl, 0, sizeof *pl);
  pl->n = n;
  pthread_mutex_init(&pl->mu, NULL);
  pthread_cond_init(&pl->start_cv, NULL);
  pthread_cond_init(&pl->done_cv, NULL);
  for (int i = 1; i < n; i++) {
    worker_arg_t *wa = malloc(sizeof *wa);
    if (!wa) {
      pool_stop(pl);
      return ms__fail(MEMSLEEP_ENOMEM, "compute: thread argument (%zu bytes)", sizeof *wa);
    }
    wa->pool = pl;
    wa->tid = i;
    int rc = pthread_create(&pl->threads[pl->started], NULL, pool_worker, wa);
    if (rc != 0) {
      free(wa);
      pool_stop(pl);
      return ms__fail(MEMSLEEP_ENOMEM, "compute: pthread_create (worker %d of %d): error %d", i, n,
                      rc);
    }
    pl->started++;
  }
  return 0;
}

/* ---- numerical kernels ---------------------------------------------- */

/* a . b over n floats. Eight partial sums, always added in the same order,
 * so the result depends only on the inputs. */
static float dot(const float *a, const float *b, int n) {
  float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; j++)
      s[j] += a[i + j] * b[i + j];
  float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
  for (; i < n; i++)
    r += a[i] * b[i];
  return r;
}

/* out = x / sqrt(mean(x^2) + eps) * w, over n floats. */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
  double ss = 0;
  for (int i = 0; i < n; i++)
    ss += (double)x[i] * x[i];
  float scale = (float)(1.0 / sqrt(ss / n + eps));
  for (int i = 0; i < n; i++)
    out[i] = x[i] * scale * w[i];
}

/* Rotates each head of v (nheads heads of head_dim) by the angles whose
 * cosines and sines are cs and sn ([head_dim / 2] each): pairs (i, i +
 * head_dim / 2), as Hugging Face's rotate_half. */
static void rope(float *v, int nheads, int head_dim, const float *cs, const float *sn) {
  int half = head_dim / 2;
  for (int h = 0; h < nheads; h++) {
    float *x = v + (size_t)h * head_dim;
    for (int i = 0; i < half; i++) {
      float x0 = x[i], x1 = x[i + half];
      x[i] = x0 * cs[i] - x1 * sn[i];
      x[i + half] = x0 * sn[i] + x1 * cs[i];
    }
  }
}

/* ---- the backend's state -------------------------------------------- */

typedef struct cpu_ctx {
  const ms__model_t *m; /* the model (weights owned by the caller) */
  ms__kv_layout_t kv;   /* the KV pool (owned by the caller) */
  int max_tokens;       /* new tokens per forward pass at most */
  int max_context;      /* positions per sequence at most */
  pool_t pool;          /* worker threads */
  int pool_ok;          /* pool started */
  void *ws;             /* the workspace allocation (tag "workspace") */
  float *x;             /* [max_tokens][hidden] residual stream */
  float *xb;            /* [max_tokens][hidden] normed input of a block */
  float *q;             /* [max_tokens][q_dim] queries */
  float *k;             /* [max_tokens][kv_dim] new keys */
  float *v;             /* [max_tokens][kv_dim] new values */
  float *att;           /* [max_tokens][q_dim] attention output */
  float *hb;            /* [max_tokens][intermediate] gate, then silu(gate) * up */
  float *hb2;           /* [max_tokens][intermediate] up */
  float *rcos;          /* [max_tokens][head_dim / 2] RoPE cosines per token */
  float *rsin;          /* [max_tokens][head_dim / 2] RoPE sines per token */
  float *scores;        /* [threads][max_context] attention scores per thread */
  double *inv_freq;     /* [head_dim / 2] theta^(-2i / head_dim) (heap) */
  int *pos;             /* [max_tokens] position of each token row (heap) */
  int *seq_of;          /* [max_tokens] batch entry of each token row (heap) */
  float **outp;         /* [max_tokens] logits row of each selected token (heap) */
  size_t ws_bytes;      /* size of ws */
} cpu_ctx_t;

/* Up to three matrices sharing one input, as one range of output rows. */
typedef struct matmul_job {
  int nmat;             /* matrices (1 to 3) */
  const float *w[3];    /* [rows[i]][in] each */
  const float *bias[3]; /* [rows[i]] or NULL */
  float *out[3];        /* [ntok][rows[i]] each, unless outp */
  int rows[3];          /* output rows of each matrix */
  int in;               /* input width */
  const float *x;       /* [ntok][in] input rows */
  int ntok;             /* input rows */
  float *const *outp;   /* with one matrix: output row of each token, or NULL */
} matmul_job_t;

static void matmul_task(void *arg, size_t begin, size_t end, int tid) {
  (void)tid;
  const matmul_job_t *j = arg;
  for (size_t r = begin; r < end; r++) {
    int mi = 0;
    size_t row = r;
    while (row >= (size_t)j->rows[mi]) {
      row -= (size_t)j->rows[mi];
      mi++;
    }
    const float *w = j->w[mi] + row * (size_t)j->in;
    float b = j->bias[mi] ? j->bias[mi][row] : 0.0f;
    for (int t = 0; t < j->ntok; t++) {
      float y = dot(w, j->x + (size_t)t * j->in, j->in) + b;
      if (j->outp)
        j->outp[t][row] = y;
      else
        j->out[mi][(size_t)t * j->rows[mi] + row] = y;
    }
  }
}

static void run_matmul(cpu_ctx_t *c, matmul_job_t *j) {
  size_t total = 0;
  for (int i = 0; i < j->nmat; i++)
    total += (size_t)j->rows[i];
  /* Below this many multiply-adds one thread is quicker than waking more. */
  size_t work = total * (size_t)j->in * (size_t)j->ntok;
  pool_run(&c->pool, matmul_task, j, total, work < 32768 ? SIZE_MAX : 2);
}

/* Attention of layer `layer` for every (token row, head) pair. */
typedef struct attn_job {
  cpu_ctx_t *c;                /* the backend */
  const ms__batch_seq_t *seqs; /* the batch */
  int layer;                   /* the layer */
} attn_job_t;

static void attn_task(void *arg, size_t begin, size_t end, int tid) {
  const attn_job_t *j = arg;
  cpu_ctx_t *c = j->c;
  const ms__model_config_t *cfg = &c->m->cfg;
  int nh = cfg->num_heads, hd = cfg->head_dim, kvd = c->kv.kv_dim, bt = c->kv.block_tokens;
  int group = cfg->num_heads / cfg->num_kv_heads;
  size_t q_dim = (size_t)nh * hd;
  const float *kbase = (const float *)c->kv.k + (size_t)j->layer * c->kv.num_blocks * bt * kvd;
  const float *vbase = (const float *)c->kv.v + (size_t)j->layer * c->kv.num_blocks * bt * kvd;
  float *sc = c->scores + (size_t)tid * c->max_context;
  float scale = 1.0f / sqrtf((float)hd);
  for (size_t idx = begin; idx < end; idx++) {
    size_t t = idx / (size_t)nh;
    int h = (int)(idx % (size_t)nh);
    int g = h / group;
    int p = c->pos[t];
    const uint32_t *table = j->seqs[c->seq_of[t]].block_table;
    const float *qv = c->q + t * q_dim + (size_t)h * hd;
    float mx = -INFINITY;
    for (int s = 0; s <= p; s++) {
      size_t slot = (size_t)table[s / bt] * bt + (size_t)(s % bt);
      float a = dot(qv, kbase + slot * kvd + (size_t)g * hd, hd) * scale;
      sc[s] = a;
      if (a > mx)
        mx = a;
    }
    float sum = 0;
    for (int s = 0; s <= p; s++) {
      sc[s] = expf(sc[s] - mx);
      sum += sc[s];
    }
    float inv = 1.0f / sum;
    float *o = c->att + t * q_dim + (size_t)h * hd;
    for (int i = 0; i < hd; i++)
      o[i] = 0;
    for (int s = 0; s <= p; s++) {
      size_t slot = (size_t)table[s / bt] * bt + (size_t)(s % bt);
      const float *vv = vbase + slot * kvd + (size_t)g * hd;
      float a = sc[s] * inv;
      for (int i = 0; i < hd; i++)
        o[i] += a * vv[i];
    }
  }
}

/* ---- create / forward / destroy ------------------------------------- */

static void cpu_destroy(void *ctx) {
  cpu_ctx_t *c = ctx;
  if (!c)
    return;
  if (c->pool_ok)
    pool_stop(&c->pool);
  if (c->ws)
    memsleep_free(c->ws);
  free(c->inv_freq);
  free(c->pos);
  free(c->seq_of);
  free(c->outp);
  free(c);
}

static int cpu_create(const ms__model_t *m, const ms__kv_layout_t *kv, int threads, int max_tokens,
                      int max_context, void **out) {
  const ms__model_config_t *cfg = &m->cfg;
  if (!out || max_tokens < 1 || max_context < 1 || cfg->num_kv_heads < 1 ||
      cfg->num_heads % cfg->num_kv_heads != 0 || cfg->head_dim % 2 != 0 ||
      kv->kv_dim != cfg->num_kv_heads * cfg->head_dim || kv->num_layers != cfg->num_layers ||
      kv->block_tokens < 1)
    return ms__fail(MEMSLEEP_EINVAL,
                    "compute cpu: bad shapes (heads %d, kv heads %d, head_dim %d, kv_dim %d, "
                    "max_tokens %d, max_context %d)",
                    cfg->num_heads, cfg->num_kv_heads, cfg->head_dim, kv->kv_dim, max_tokens,
                    max_context);
  if (m->device != MEMSLEEP_HOST || m->elem_bytes != 4 || kv->device != MEMSLEEP_HOST ||
      kv->elem_bytes != 4)
    return ms__fail(MEMSLEEP_EINVAL,
                    "compute cpu: the weights (device %d) and the KV pool (device %d) must be "
                    "float32 in host memory",
                    m->device, kv->device);
  if (threads <= 0) {
    long nc = sysconf(_SC_NPROCESSORS_ONLN);
    threads = nc > 0 ? (int)nc : 1;
  }
  if (threads > CPU_THREADS_MAX)
    threads = CPU_THREADS_MAX;
  cpu_ctx_t *c = calloc(1, sizeof *c);
  if (!c)
    return ms__fail(MEMSLEEP_ENOMEM, "compute cpu: context (%zu bytes)", sizeof *c);
  c->m = m;
  c->kv = *kv;
  c->max_tokens = max_tokens;
  c->max_context = max_context;
  size_t T = (size_t)max_tokens, H = (size_t)cfg->hidden_size;
  size_t qd = (size_t)cfg->num_heads * cfg->head_dim, kvd = (size_t)kv->kv_dim;
  size_t I = (size_t)cfg->intermediate_size, half = (size_t)cfg->head_dim / 2;
  size_t counts[] = {T * H,
                     T * H,
                     T * qd,
                     T * kvd,
                     T * kvd,
                     T * qd,
                     T * I,
                     T * I,
                     T * half,
                     T * half,
                     (size_t)threads * (size_t)max_context};
  float **ptrs[] = {&c->x,  &c->xb,  &c->q,    &c->k,    &c->v,     &c->att,
                    &c->hb, &c->hb2, &c->rcos, &c->rsin, &c->scores};
  size_t nbuf = sizeof counts / sizeof counts[0], total = 0;
  for (size_t i = 0; i < nbuf; i++)
    total += (counts[i] + 15) / 16 * 16; /* keep every buffer 64-byte aligned */
  c->ws_bytes = total * sizeof(float);
  int rc = memsleep_alloc(&c->ws, c->ws_bytes, MEMSLEEP_HOST, "workspace", 0);
  if (rc != 0) {
    free(c);
    return rc;
  }
  float *p = c->ws;
  for (size_t i = 0; i < nbuf; i++) {
    *ptrs[i] = p;
    p += (counts[i] + 15) / 16 * 16;
  }
  c->inv_freq = malloc(sizeof(double) * (half ? half : 1));
  c->pos = malloc(sizeof(int) * T);
  c->seq_of = malloc(sizeof(int) * T);
  c->outp = malloc(sizeof(float *) * T);
  if (!c->inv_freq || !c->pos || !c->seq_of || !c->outp) {
    cpu_destroy(c);
    return ms__fail(MEMSLEEP_ENOMEM, "compute cpu: per-token tables for %d tokens", max_tokens);
  }
  for (size_t i = 0; i < half; i++)
    c->inv_freq[i] = pow((double)cfg->rope_theta, -2.0 * (double)i / (double)cfg->head_dim);
  rc = pool_start(&c->pool, threads);
  if (rc != 0) {
    cpu_destroy(c);
    return rc;
  }
  c->pool_ok = 1;
  *out = c;
  return 0;
}

static int cpu_forward(void *ctx, const ms__batch_seq_t *seqs, size_t n) {
  cpu_ctx_t *c = ctx;
  const ms__model_t *m = c->m;
  const ms__model_config_t *cfg = &m->cfg;
  int H = cfg->hidden_size, hd = cfg->head_dim, half = hd / 2;
  int qd = cfg->num_heads * hd, kvd = c->kv.kv_dim, I = cfg->intermediate_size;
  int bt = c->kv.block_tokens;
  float eps = cfg->rms_norm_eps;

  /* Lay the batch out as token rows. */
  int T = 0;
  for (size_t s = 0; s < n; s++) {
    const ms__batch_seq_t *sq = &seqs[s];
    if (sq->n_tokens < 1 || sq->start_pos < 0 || !sq->tokens || !sq->block_table ||
        sq->start_pos + sq->n_tokens > c->max_context || T + sq->n_tokens > c->max_tokens)
      return ms__fail(MEMSLEEP_EINVAL,
                      "compute cpu: batch entry %zu (n_tokens %d at %d) does not fit "
                      "(max_tokens %d, max_context %d)",
                      s, sq->n_tokens, sq->start_pos, c->max_tokens, c->max_context);
    for (int i = 0; i < sq->n_tokens; i++) {
      int tok = sq->tokens[i];
      if (tok < 0 || tok >= cfg->vocab_size)
        return ms__fail(MEMSLEEP_EINVAL, "compute cpu: token %d out of [0, %d)", tok,
                        cfg->vocab_size);
      c->pos[T] = sq->start_pos + i;
      c->seq_of[T] = (int)s;
      memcpy(c->x + (size_t)T * H, (const float *)m->embed + (size_t)tok * H,
             sizeof(float) * (size_t)H);
      T++;
    }
  }
  if (T == 0)
    return 0;
  for (int t = 0; t < T; t++)
    for (int i = 0; i < half; i++) {
      double a = (double)c->pos[t] * c->inv_freq[i];
      c->rcos[(size_t)t * half + i] = (float)cos(a);
      c->rsin[(size_t)t * half + i] = (float)sin(a);
    }

  for (int l = 0; l < cfg->num_layers; l++) {
    const ms__layer_t *L = &m->layers[l];
    for (int t = 0; t < T; t++)
      rmsnorm(c->xb + (size_t)t * H, c->x + (size_t)t * H, L->attn_norm, H, eps);
    matmul_job_t qkv = {.nmat = 3,
                        .w = {L->wq, L->wk, L->wv},
                        .bias = {L->bq, L->bk, L->bv},
                        .out = {c->q, c->k, c->v},
                        .rows = {qd, kvd, kvd},
                        .in = H,
                        .x = c->xb,
                        .ntok = T};
    run_matmul(c, &qkv);
    /* RoPE, then the new keys and values into their slots of the pool. */
    float *kl = (float *)c->kv.k + (size_t)l * c->kv.num_blocks * bt * kvd;
    float *vl = (float *)c->kv.v + (size_t)l * c->kv.num_blocks * bt * kvd;
    for (int t = 0; t < T; t++) {
      const float *cs = c->rcos + (size_t)t * half, *sn = c->rsin + (size_t)t * half;
      rope(c->q + (size_t)t * qd, cfg->num_heads, hd, cs, sn);
      rope(c->k + (size_t)t * kvd, cfg->num_kv_heads, hd, cs, sn);
      int p = c->pos[t];
      size_t slot = (size_t)seqs[c->seq_of[t]].block_table[p / bt] * bt + (size_t)(p % bt);
      memcpy(kl + slot * kvd, c->k + (size_t)t * kvd, sizeof(float) * (size_t)kvd);
      memcpy(vl + slot * kvd, c->v + (size_t)t * kvd, sizeof(float) * (size_t)kvd);
    }
    attn_job_t aj = {.c = c, .seqs = seqs, .layer = l};
    size_t pairs = (size_t)T * cfg->num_heads;
    pool_run(&c->pool, attn_task, &aj, pairs, T == 1 && c->pos[0] < 64 ? SIZE_MAX : 2);
    matmul_job_t wo = {
        .nmat = 1, .w = {L->wo}, .out = {c->xb}, .rows = {H}, .in = qd, .x = c->att, .ntok = T};
    run_matmul(c, &wo);
    for (size_t i = 0; i < (size_t)T * H; i++)
      c->x[i] += c->xb[i];
    for (int t = 0; t < T; t++)
      rmsnorm(c->xb + (size_t)t * H, c->x + (size_t)t * H, L->ffn_norm, H, eps);
    matmul_job_t gu = {.nmat = 2,
                       .w = {L->w_gate, L->w_up},
                       .out = {c->hb, c->hb2},
                       .rows = {I, I},
                       .in = H,
                       .x = c->xb,
                       .ntok = T};
    run_matmul(c, &gu);
    for (size_t i = 0; i < (size_t)T * I; i++) {
      float g = c->hb[i];
      c->hb[i] = g / (1.0f + expf(-g)) * c->hb2[i];
    }
    matmul_job_t down = {
        .nmat = 1, .w = {L->w_down}, .out = {c->xb}, .rows = {H}, .in = I, .x = c->hb, .ntok = T};
    run_matmul(c, &down);
    for (size_t i = 0; i < (size_t)T * H; i++)
      c->x[i] += c->xb[i];
  }

  /* Final norm and lm_head for the rows whose logits were asked for,
   * gathered into xb so one pass over lm_head serves them all. */
  int nsel = 0, t0 = 0;
  for (size_t s = 0; s < n; s++) {
    const ms__batch_seq_t *sq = &seqs[s];
    if (sq->logits) {
      int first = sq->all_logits ? 0 : sq->n_tokens - 1;
      for (int i = first; i < sq->n_tokens; i++) {
        rmsnorm(c->xb + (size_t)nsel * H, c->x + (size_t)(t0 + i) * H, m->final_norm, H, eps);
        c->outp[nsel] = sq->logits + (size_t)(sq->all_logits ? i : 0) * cfg->vocab_size;
        nsel++;
      }
    }
    t0 += sq->n_tokens;
  }
  if (nsel > 0) {
    matmul_job_t head = {.nmat = 1,
                         .w = {m->lm_head},
                         .rows = {cfg->vocab_size},
                         .in = H,
                         .x = c->xb,
                         .ntok = nsel,
                         .outp = c->outp};
    run_matmul(c, &head);
  }
  return 0;
}

const ms__compute_ops_t ms__compute_cpu = {
    .name = "cpu",
    .create = cpu_create,
    .forward = cpu_forward,
    .destroy = cpu_destroy,
};
