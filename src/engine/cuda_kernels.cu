/*
 * cuda_kernels.cu - the CUDA backend's kernels (see cuda_kernels.h).
 *
 * Plain, readable kernels: one block per token row (embedding, RMSNorm,
 * RoPE) or per (token row, head) pair (attention), grid-stride loops
 * elsewhere. Attention streams over a sequence's positions with an online
 * softmax - each of four warps keeps a running maximum, sum and weighted
 * value for the positions it takes, and the warps are merged at the end -
 * so its memory does not grow with the context. Matrix products are
 * cuBLAS's, in compute_cuda.c.
 */
#include <cuda_bf16.h>
#include <math.h>

#include "engine/cuda_kernels.h"

#define ATT_WARPS      4
#define SAMPLE_THREADS 512
#define ATT_PER_LANE   (MS__CUDA_HEAD_DIM_MAX / 32)

static __device__ __forceinline__ float bf2f(uint16_t b) {
  return __uint_as_float((unsigned)b << 16);
}

static __device__ __forceinline__ uint16_t f2bf(float f) {
  __nv_bfloat16 h = __float2bfloat16_rn(f);
  return *reinterpret_cast<uint16_t *>(&h);
}

static __device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

/* Sum of v over the block (blockDim.x a multiple of 32, at most 1024). */
static __device__ float block_sum(float v) {
  __shared__ float part[32];
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  v = warp_sum(v);
  if (lane == 0)
    part[warp] = v;
  __syncthreads();
  float s = 0.0f;
  for (int w = 0; w < nw; w++)
    s += part[w];
  __syncthreads(); /* part may be reused by the caller's next call */
  return s;
}

static __global__ void k_embed(float *x, const uint16_t *embed, const int *tokens, int H) {
  int t = blockIdx.x;
  const uint16_t *row = embed + (size_t)tokens[t] * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    x[(size_t)t * H + i] = bf2f(row[i]);
}

static __global__ void k_rmsnorm(uint16_t *out, const float *x, const int *rows_of,
                                 const uint16_t *w, int H, float eps) {
  int r = blockIdx.x;
  int row = rows_of ? rows_of[r] : r;
  const float *xr = x + (size_t)row * H;
  float ss = 0.0f;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    ss += xr[i] * xr[i];
  ss = block_sum(ss);
  float scale = rsqrtf(ss / (float)H + eps);
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    out[(size_t)r * H + i] = f2bf(xr[i] * scale * bf2f(w[i]));
}

static __global__ void k_rope_store(float *q, float *k, const float *v, const uint16_t *bq,
                                    const uint16_t *bk, const uint16_t *bv, const int *pos,
                                    const int64_t *slot, uint16_t *k_pool, uint16_t *v_pool, int nh,
                                    int nkv, int hd, double theta) {
  int t = blockIdx.x, half = hd / 2, qd = nh * hd, kvd = nkv * hd;
  int nq = nh * half, nk = nkv * half;
  float *qt = q + (size_t)t * qd;
  float *kt = k + (size_t)t * kvd;
  const float *vt = v + (size_t)t * kvd;
  uint16_t *kdst = k_pool + (size_t)slot[t] * kvd;
  uint16_t *vdst = v_pool + (size_t)slot[t] * kvd;
  double p = (double)pos[t];
  for (int j = threadIdx.x; j < nq + nk + kvd; j += blockDim.x) {
    if (j < nq + nk) {
      int is_k = j >= nq;
      int jj = is_k ? j - nq : j;
      int h = jj / half, i = jj % half;
      float *x = (is_k ? kt : qt) + h * hd;
      const uint16_t *b = is_k ? bk : bq;
      float x0 = x[i], x1 = x[i + half];
      if (b) {
        x0 += bf2f(b[h * hd + i]);
        x1 += bf2f(b[h * hd + i + half]);
      }
      double a = p * pow(theta, -2.0 * (double)i / (double)hd);
      float cs = (float)cos(a), sn = (float)sin(a);
      float r0 = x0 * cs - x1 * sn, r1 = x0 * sn + x1 * cs;
      if (is_k) {
        kdst[h * hd + i] = f2bf(r0);
        kdst[h * hd + i + half] = f2bf(r1);
      } else {
        x[i] = r0;
        x[i + half] = r1;
      }
    } else {
      int d = j - nq - nk;
      vdst[d] = f2bf(vt[d] + (bv ? bf2f(bv[d]) : 0.0f));
    }
  }
}

static __global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attention(uint16_t *out, const float *q, const uint16_t *k_pool, const uint16_t *v_pool,
                const uint32_t *tables, const int *tab_off, const int *pos, int nh, int group,
                int hd, int bt) {
  __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
  __shared__ float sm_acc[ATT_WARPS][MS__CUDA_HEAD_DIM_MAX];
  int t = blockIdx.x, h = blockIdx.y, g = h / group;
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int kvd = nh / group * hd;
  int p = pos[t];
  const uint32_t *table = tables + tab_off[t];
  const float *qv = q + ((size_t)t * nh + h) * hd;
  float scale = rsqrtf((float)hd);
  float qr[ATT_PER_LANE], acc[ATT_PER_LANE];
#pragma unroll
  for (int j = 0; j < ATT_PER_LANE; j++) {
    int d = lane + 32 * j;
    qr[j] = d < hd ? qv[d] : 0.0f;
    acc[j] = 0.0f;
  }
  float m = -INFINITY, l = 0.0f;
  for (int s = warp; s <= p; s += ATT_WARPS) {
    size_t base = ((size_t)table[s / bt] * bt + (size_t)(s % bt)) * kvd + (size_t)g * hd;
    float dot = 0.0f;
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; j++) {
      int d = lane + 32 * j;
      if (d < hd)
        dot += qr[j] * bf2f(k_pool[base + d]);
    }
    float sc = warp_sum(dot) * scale;
    float mn = fmaxf(m, sc);
    float corr = expf(m - mn), e = expf(sc - mn);
    l = l * corr + e;
#pragma unroll
    for (int j = 0; j < ATT_PER_LANE; j++) {
      int d = lane + 32 * j;
      if (d < hd)
        acc[j] = acc[j] * corr + e * bf2f(v_pool[base + d]);
    }
    m = mn;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < ATT_PER_LANE; j++) {
    int d = lane + 32 * j;
    if (d < hd)
      sm_acc[warp][d] = acc[j];
  }
  __syncthreads();
  /* Warp 0 took position 0, so the largest maximum is finite; a warp that
   * took no position has m = -inf and weighs exp(-inf) = 0. */
  float mx = sm_m[0];
  for (int w = 1; w < ATT_WARPS; w++)
    mx = fmaxf(mx, sm_m[w]);
  float wsum = 0.0f, wt[ATT_WARPS];
  for (int w = 0; w < ATT_WARPS; w++) {
    wt[w] = expf(sm_m[w] - mx);
    wsum += sm_l[w] * wt[w];
  }
  uint16_t *o = out + ((size_t)t * nh + h) * hd;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float s = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
      s += sm_acc[w][d] * wt[w];
    o[d] = f2bf(s / wsum);
  }
}

static __global__ void k_swiglu(uint16_t *out, const float *gate, const float *up, size_t n) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    float g = gate[i];
    out[i] = f2bf(g / (1.0f + expf(-g)) * up[i]);
  }
}

/* Threads per block for a row of width n: a multiple of 32, 32 to 256. */
static int row_threads(int n) {
  int t = (n + 31) / 32 * 32;
  return t < 32 ? 32 : t > 256 ? 256 : t;
}

extern "C" cudaError_t ms__cuk_embed(float *x, const uint16_t *embed, const int *tokens, int T,
                                     int H, cudaStream_t stream) {
  k_embed<<<T, row_threads(H), 0, stream>>>(x, embed, tokens, H);
  return cudaGetLastError();
}

extern "C" cudaError_t ms__cuk_rmsnorm(uint16_t *out, const float *x, const int *rows_of,
                                       const uint16_t *w, int rows, int H, float eps,
                                       cudaStream_t stream) {
  k_rmsnorm<<<rows, row_threads(H), 0, stream>>>(out, x, rows_of, w, H, eps);
  return cudaGetLastError();
}

extern "C" cudaError_t ms__cuk_rope_store(float *q, float *k, const float *v, const uint16_t *bq,
                                          const uint16_t *bk, const uint16_t *bv, const int *pos,
                                          const int64_t *slot, uint16_t *k_pool, uint16_t *v_pool,
                                          int T, int num_heads, int num_kv_heads, int head_dim,
                                          float theta, cudaStream_t stream) {
  int work = (num_heads + num_kv_heads) * (head_dim / 2) + num_kv_heads * head_dim;
  k_rope_store<<<T, row_threads(work), 0, stream>>>(q, k, v, bq, bk, bv, pos, slot, k_pool, v_pool,
                                                    num_heads, num_kv_heads, head_dim,
                                                    (double)theta);
  return cudaGetLastError();
}

extern "C" cudaError_t ms__cuk_attention(uint16_t *out, const float *q, const uint16_t *k_pool,
                                         const uint16_t *v_pool, const uint32_t *tables,
                                         const int *tab_off, const int *pos, int T, int num_heads,
                                         int num_kv_heads, int head_dim, int block_tokens,
                                         cudaStream_t stream) {
  if (head_dim > MS__CUDA_HEAD_DIM_MAX || num_heads % num_kv_heads != 0)
    return cudaErrorInvalidValue;
  dim3 grid((unsigned)T, (unsigned)num_heads);
  k_attention<<<grid, ATT_WARPS * 32, 0, stream>>>(out, q, k_pool, v_pool, tables, tab_off, pos,
                                                   num_heads, num_heads / num_kv_heads, head_dim,
                                                   block_tokens);
  return cudaGetLastError();
}

extern "C" cudaError_t ms__cuk_swiglu(uint16_t *out, const float *gate, const float *up, size_t n,
                                      cudaStream_t stream) {
  size_t blocks = (n + 255) / 256;
  if (blocks > 4096)
    blocks = 4096;
  if (blocks == 0)
    return cudaSuccess;
  k_swiglu<<<(unsigned)blocks, 256, 0, stream>>>(out, gate, up, n);
  return cudaGetLastError();
}

/* An order-preserving key of a float: a < b exactly when key(a) < key(b). */
static __device__ __forceinline__ unsigned fkey(float f) {
  unsigned u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Over the row: how many keys are >= t (mass 0), or the mass
 * exp((l - m) / temp) of those whose key is >= t (mass 1). */
static __device__ float over(const float *l, int V, unsigned t, int mass, float m, float temp) {
  float s = 0.0f;
  for (int i = threadIdx.x; i < V; i += blockDim.x)
    if (fkey(l[i]) >= t)
      s += mass ? expf((l[i] - m) / temp) : 1.0f;
  return block_sum(s);
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
    k_sample(int *out, const float *logits, const ms__cuk_sample_t *params, int V) {
  __shared__ float sm_v[32];
  __shared__ int sm_i[32];
  __shared__ float part[SAMPLE_THREADS];
  __shared__ int owner;
  __shared__ float rest;
  const float *l = logits + (size_t)blockIdx.x * V;
  ms__cuk_sample_t sp = params[blockIdx.x];
  /* The arg max, lowest id on ties: each thread scans ids upwards. */
  float bv = -INFINITY;
  int bi = V;
  for (int i = threadIdx.x; i < V; i += blockDim.x)
    if (bi == V || l[i] > bv) {
      bv = l[i];
      bi = i;
    }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (ov > bv || (ov == bv && oi < bi)) {
      bv = ov;
      bi = oi;
    }
  }
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  if (lane == 0) {
    sm_v[warp] = bv;
    sm_i[warp] = bi;
  }
  __syncthreads();
  bv = sm_v[0];
  bi = sm_i[0];
  for (int w = 1; w < nw; w++)
    if (sm_v[w] > bv || (sm_v[w] == bv && sm_i[w] < bi)) {
      bv = sm_v[w];
      bi = sm_i[w];
    }
  if (sp.temperature <= 0.0f || sp.top_k == 1 || !(bv > -INFINITY)) {
    if (threadIdx.x == 0)
      out[blockIdx.x] = bi < V ? bi : 0;
    return;
  }
  float m = bv, temp = sp.temperature;
  /* top_k: the largest threshold keeping at least top_k tokens. */
  unsigned tk = 0;
  if (sp.top_k > 0 && sp.top_k < V)
    for (int bit = 31; bit >= 0; bit--) {
      unsigned cand = tk | (1u << bit);
      if (over(l, V, cand, 0, m, temp) >= (float)sp.top_k)
        tk = cand;
    }
  /* top_p: the largest threshold (at least tk) keeping top_p of the mass. */
  unsigned tp = tk;
  if (sp.top_p < 1.0f) {
    float want = sp.top_p * over(l, V, tk, 1, m, temp);
    unsigned t = 0;
    for (int bit = 31; bit >= 0; bit--) {
      unsigned cand = t | (1u << bit);
      if (over(l, V, cand > tk ? cand : tk, 1, m, temp) >= want)
        t = cand;
    }
    tp = t > tk ? t : tk;
  }
  /* The draw: each thread owns a run of ids; the run holding u times the
   * kept mass is found from the runs' sums, then walked. */
  int chunk = (V + (int)blockDim.x - 1) / (int)blockDim.x;
  int lo = threadIdx.x * chunk, hi = lo + chunk < V ? lo + chunk : V;
  float s = 0.0f;
  for (int i = lo; i < hi; i++)
    if (fkey(l[i]) >= tp)
      s += expf((l[i] - m) / temp);
  part[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.0f;
    for (int w = 0; w < (int)blockDim.x; w++)
      total += part[w];
    float target = sp.u * total, acc = 0.0f;
    owner = -1;
    for (int w = 0; w < (int)blockDim.x; w++) {
      if (part[w] > 0.0f && target < acc + part[w]) {
        owner = w;
        rest = target - acc;
        break;
      }
      acc += part[w];
    }
    if (owner < 0) /* rounding: the last run that keeps anything */
      for (int w = (int)blockDim.x - 1; w >= 0 && owner < 0; w--)
        if (part[w] > 0.0f) {
          owner = w;
          rest = part[w];
        }
  }
  __syncthreads();
  if ((int)threadIdx.x == owner) {
    float acc = 0.0f;
    int pick = -1;
    for (int i = lo; i < hi; i++)
      if (fkey(l[i]) >= tp) {
        pick = i;
        acc += expf((l[i] - m) / temp);
        if (rest < acc)
          break;
      }
    out[blockIdx.x] = pick;
  }
}

extern "C" cudaError_t ms__cuk_sample(int *out, const float *logits, const ms__cuk_sample_t *params,
                                      int rows, int vocab, cudaStream_t stream) {
  if (rows <= 0)
    return cudaSuccess;
  k_sample<<<rows, SAMPLE_THREADS, 0, stream>>>(out, logits, params, vocab);
  return cudaGetLastError();
}
