/*
 * cuda_kernels.cu - the CUDA backend's kernels (see cuda_kernels.h).
 *
 * Plain, readable kernels: one block per token row (embedding, RMSNorm,
 * RoPE) or per (token row, head) pair (attention), grid-stride loops
 * elsewhere. Attention streams over a sequence's positions with an online
 * softmax - each of eight warps keeps a running maximum, sum and weighted
 * value for the positions it takes, and the warps are merged at the end -
 * so its memory does not grow with the context; each warp loads the keys
 * and values of several positions before it uses any of them, so one
 * memory latency covers several positions. The projections of batches of
 * more than MS__CUDA_GEMV_T_MAX rows are cuBLAS's, in compute_cuda.c; the
 * small batches of decoding use k_gemv: groups of warps take two output
 * rows at a time, read them once with 16-byte loads and apply them to
 * every token row, with the RMSNorm of the input, the SwiGLU of the output
 * or the q/k/v epilogue (bias, RoPE, KV store) folded in - a decode layer
 * is five launches. On Hopper every kernel is a programmatic dependent of
 * the one before (see below).
 */
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "engine/cuda_kernels.h"

namespace cg = cooperative_groups;

#define ATT_WARPS        8
#define ATT_SPREAD_PAIRS 64 /* (row, head) pairs up to which attention spreads over clusters */
#define GEMV_WARPS       8
#define GEMV_R           2 /* output rows a group of warps takes at once */
#define SAMPLE_THREADS   512
#define SAMPLE_SPLIT     MS__CUDA_SAMPLE_SPLIT

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

/* ---- programmatic dependent launch ------------------------------------ */

/* On Hopper and later every kernel here is launched with programmatic
 * stream serialization: the next kernel in the stream may be scheduled
 * as soon as all blocks of this one are running (pdl_release), and waits
 * in pdl_wait - before it reads or writes anything another kernel touches
 * - for this one to complete. What it does before the wait (k_gemv:
 * loading its first weight words) overlaps the end of the kernel before.
 * MEMSLEEP_CUDA_PDL=0 turns it off: the kernels are then launched as
 * usual and pdl_wait and pdl_release do nothing. */
static __device__ __forceinline__ void pdl_wait(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

static __device__ __forceinline__ void pdl_release(void) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;");
#endif
}

/* Both, at a kernel's start (kernels that prefetch nothing). */
static __device__ __forceinline__ void pdl_begin(void) {
  pdl_release();
  pdl_wait();
}

static int pdl_enabled(void) {
  static int on = -1;
  if (on < 0) {
    const char *e = getenv("MEMSLEEP_CUDA_PDL");
    int dev = 0, major = 0;
    on = !(e && strcmp(e, "0") == 0) && cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
         major >= 9;
  }
  return on;
}

/* Asks, once per kernel and device (a function's attributes are the
 * device's), for the largest shared memory carve-out: every kernel then
 * wants the same split of a multiprocessor's L1 and shared memory, so a
 * kernel that follows another on a multiprocessor (as programmatic
 * dependents do) never waits for it to drain to change the split. asked[i]
 * holds a bit per device (devices past 63, and kernels past the table's
 * 64, ask at every launch). */
static void prefer_smem(const void *kernel) {
  static const void *seen[64];
  static unsigned long long asked[64];
  static int nseen = 0;
  int dev = 0, i = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return;
  }
  while (i < nseen && seen[i] != kernel)
    i++;
  if (i == nseen && nseen < 64)
    seen[nseen++] = kernel;
  unsigned long long bit = dev >= 0 && dev < 64 ? 1ull << dev : 0;
  if (i < 64) {
    if (asked[i] & bit)
      return;
    asked[i] |= bit;
  }
  cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                       (int)cudaSharedmemCarveoutMaxShared);
  cudaGetLastError(); /* a hint: a GPU that refuses it runs as before */
}

/* Launches kernel with smem bytes of dynamic shared memory, in clusters
 * of cluster_z blocks along z (0: no clusters), as a programmatic
 * dependent of the kernel before when pdl_enabled. */
template <typename... K, typename... A>
static cudaError_t launch_ex(void (*kernel)(K...), dim3 grid, dim3 block, size_t smem,
                             unsigned cluster_z, cudaStream_t stream, A &&...args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster_z) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = 1;
    attr[n].val.clusterDim.y = 1;
    attr[n++].val.clusterDim.z = cluster_z;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  prefer_smem((const void *)kernel);
  return cudaLaunchKernelEx(&cfg, kernel, static_cast<A &&>(args)...);
}

template <typename... K, typename... A>
static cudaError_t launch(void (*kernel)(K...), dim3 grid, dim3 block, cudaStream_t stream,
                          A &&...args) {
  return launch_ex(kernel, grid, block, 0, 0, stream, static_cast<A &&>(args)...);
}

static __global__ void k_embed(float *x, const uint16_t *embed, const int *tokens, int H) {
  pdl_begin();
  int t = blockIdx.x;
  const uint16_t *row = embed + (size_t)tokens[t] * H;
  for (int i = threadIdx.x; i < H; i += blockDim.x)
    x[(size_t)t * H + i] = bf2f(row[i]);
}

static __global__ void k_rmsnorm(uint16_t *out, const float *x, const int *rows_of,
                                 const uint16_t *w, int H, float eps) {
  pdl_begin();
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
  pdl_begin();
  int t = blockIdx.x, half = hd / 2, qd = nh * hd, kvd = nkv * hd;
  int nq = nh * half, nk = nkv * half;
  float *qt = q + (size_t)t * qd;
  float *kt = k + (size_t)t * kvd;
  const float *vt = v + (size_t)t * kvd;
  /* A padding row (slot -1) of a decode step stores nothing. */
  int store = slot[t] >= 0;
  uint16_t *kdst = k_pool + (store ? (size_t)slot[t] * kvd : 0);
  uint16_t *vdst = v_pool + (store ? (size_t)slot[t] * kvd : 0);
  float p = (float)pos[t];
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
      /* In float32, as Hugging Face computes its rotary tables (double
       * precision would cost the decode step more than its whole attention
       * and agree less with the reference). */
      float a = p * powf((float)theta, -2.0f * (float)i / (float)hd), sn, cs;
      sincosf(a, &sn, &cs);
      float r0 = x0 * cs - x1 * sn, r1 = x0 * sn + x1 * cs;
      if (is_k) {
        if (store) {
          kdst[h * hd + i] = f2bf(r0);
          kdst[h * hd + i + half] = f2bf(r1);
        }
      } else {
        x[i] = r0;
        x[i + half] = r1;
      }
    } else if (store) {
      int d = j - nq - nk;
      vdst[d] = f2bf(vt[d] + (bv ? bf2f(bv[d]) : 0.0f));
    }
  }
}

/* How a row's positions are split into ranges: one range for up to
 * ATT_SPLIT_MIN positions, then one more per ATT_SPLIT_MIN, at most
 * MS__CUDA_ATT_SPLITS; the split depends on the row's position only. */
#define ATT_SPLIT_MIN 64

static __device__ __forceinline__ int att_splits(int n) {
  int S = (n + ATT_SPLIT_MIN - 1) / ATT_SPLIT_MIN;
  return S < MS__CUDA_ATT_SPLITS ? S : MS__CUDA_ATT_SPLITS;
}

/* The end of the range that starts at lo, ranges len positions long, of
 * n positions. */
static __device__ __forceinline__ int att_end(int lo, int len, int n) {
  return lo + len < n ? lo + len : n;
}

/* One range's part of a (row, head): the largest score m, the sum of the
 * weights exp(score - m) and the values weighted by them. */
typedef struct att_part {
  float m, l;
  float acc[MS__CUDA_HEAD_DIM_MAX];
} att_part_t;

/* Pool offsets of the CH positions from s0 (0 for those not below hi). */
template <int CH>
static __device__ __forceinline__ void att_bases(const uint32_t *table, int s0, int hi, int bt,
                                                 int kvd, int ghd, size_t (&base)[CH]) {
#pragma unroll
  for (int c = 0; c < CH; c++) {
    int s = s0 + c;
    base[c] = s < hi ? ((size_t)table[s / bt] * bt + (size_t)(s % bt)) * kvd + (size_t)ghd : 0;
  }
}

/* A warp's keys and values of the CH positions from s0 at the pool
 * offsets base, as float32 (0 for positions not below hi); positions
 * s0 .. s0 + from - 1 are left as they are. */
template <int PL, int CH>
static __device__ __forceinline__ void att_load(const uint16_t *k_pool, const uint16_t *v_pool,
                                                const size_t (&base)[CH], int s0, int from, int hi,
                                                int hd, float (&kc)[CH][PL], float (&vc)[CH][PL]) {
  int lane = threadIdx.x % 32;
#pragma unroll
  for (int c = 0; c < CH; c++) {
    if (c < from)
      continue;
#pragma unroll
    for (int j = 0; j < PL; j++) {
      int d = lane + 32 * j;
      int ok = s0 + c < hi && d < hd;
      kc[c][j] = ok ? bf2f(k_pool[base[c] + d]) : 0.0f;
      vc[c][j] = ok ? bf2f(v_pool[base[c] + d]) : 0.0f;
    }
  }
}

/* The block's part over positions lo .. hi - 1 (lo < hi) into *out: warp
 * w takes positions lo + w * CH .. + CH - 1, then the chunk ATT_WARPS
 * chunks further on, and so on; the warps' parts are then added in warp
 * order. base0 holds the warp's first chunk's pool offsets, and kc0 /
 * vc0 the keys and values of that chunk's first pre positions, loaded
 * already (the rest of theirs is overwritten). With nlo < nhi, the warp
 * then loads the next range's (nlo .. nhi - 1) first chunk the same way
 * - base0, kc0, vc0 and *npre - before the warps' parts are added, so
 * those loads overlap the adding. Ends with the block synchronised. */
template <int PL, int CH>
static __device__ void att_range(const float (&qr)[PL], const uint16_t *k_pool,
                                 const uint16_t *v_pool, const uint32_t *table, int lo, int hi,
                                 int bt, int kvd, int ghd, int hd, size_t (&base0)[CH],
                                 float (&kc0)[CH][PL], float (&vc0)[CH][PL], int pre,
                                 float (*sm_acc)[MS__CUDA_HEAD_DIM_MAX], float *sm_m, float *sm_l,
                                 att_part_t *out, int nlo, int nhi, int *npre) {
  int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float scale = rsqrtf((float)hd), acc[PL], m = -INFINITY, l = 0.0f;
#pragma unroll
  for (int j = 0; j < PL; j++)
    acc[j] = 0.0f;
  for (int s0 = lo + warp * CH; s0 < hi; s0 += ATT_WARPS * CH) {
    float kc[CH][PL], vc[CH][PL];
    if (s0 == lo + warp * CH) {
#pragma unroll
      for (int c = 0; c < CH; c++)
#pragma unroll
        for (int j = 0; j < PL; j++) {
          kc[c][j] = kc0[c][j];
          vc[c][j] = vc0[c][j];
        }
      att_load<PL, CH>(k_pool, v_pool, base0, s0, pre, hi, hd, kc, vc);
    } else {
      size_t base[CH];
      att_bases<CH>(table, s0, hi, bt, kvd, ghd, base);
      att_load<PL, CH>(k_pool, v_pool, base, s0, 0, hi, hd, kc, vc);
    }
    float sc[CH], mn = m;
#pragma unroll
    for (int c = 0; c < CH; c++) {
      float dot = 0.0f;
#pragma unroll
      for (int j = 0; j < PL; j++)
        dot += qr[j] * kc[c][j];
      float sum = warp_sum(dot); /* every lane takes part, whether s0 + c < hi or not */
      sc[c] = s0 + c < hi ? sum * scale : -INFINITY;
      mn = fmaxf(mn, sc[c]);
    }
    /* mn is finite: position s0 < hi is in the chunk. */
    float corr = expf(m - mn);
    l *= corr;
#pragma unroll
    for (int j = 0; j < PL; j++)
      acc[j] *= corr;
#pragma unroll
    for (int c = 0; c < CH; c++) {
      float e = expf(sc[c] - mn);
      l += e;
#pragma unroll
      for (int j = 0; j < PL; j++)
        acc[j] += e * vc[c][j];
    }
    m = mn;
  }
  if (nlo < nhi) {
    int ns0 = nlo + warp * CH, np = nhi - ns0;
    np = np < 0 ? 0 : np > CH ? CH : np;
    att_bases<CH>(table, ns0, nhi, bt, kvd, ghd, base0);
    att_load<PL, CH>(k_pool, v_pool, base0, ns0, 0, ns0 + np, hd, kc0, vc0);
    *npre = np;
  }
  if (lane == 0) {
    sm_m[warp] = m;
    sm_l[warp] = l;
  }
#pragma unroll
  for (int j = 0; j < PL; j++) {
    int d = lane + 32 * j;
    if (d < hd)
      sm_acc[warp][d] = acc[j];
  }
  __syncthreads();
  /* Warp 0 took position lo, so the largest maximum is finite; a warp
   * that took no position has m = -inf and weighs exp(-inf) = 0. */
  float mx = sm_m[0];
  for (int w = 1; w < ATT_WARPS; w++)
    mx = fmaxf(mx, sm_m[w]);
  float wsum = 0.0f, wt[ATT_WARPS];
  for (int w = 0; w < ATT_WARPS; w++) {
    wt[w] = expf(sm_m[w] - mx);
    wsum += sm_l[w] * wt[w];
  }
  if (threadIdx.x == 0) {
    out->m = mx;
    out->l = wsum;
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float s = 0.0f;
    for (int w = 0; w < ATT_WARPS; w++)
      s += sm_acc[w][d] * wt[w];
    out->acc[d] = s;
  }
  __syncthreads();
}

/* The output of a (row, head) from its S ranges' parts, added in range
 * order (the same arithmetic wherever the parts were made). */
static __device__ void att_combine(const att_part_t *pr, int S, int hd, uint16_t *o) {
  float M = pr[0].m;
  for (int r = 1; r < S; r++)
    M = fmaxf(M, pr[r].m);
  float W = 0.0f, e[MS__CUDA_ATT_SPLITS];
  for (int r = 0; r < S; r++) {
    e[r] = expf(pr[r].m - M);
    W = __fmaf_rn(pr[r].l, e[r], W);
  }
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float s = 0.0f;
    for (int r = 0; r < S; r++)
      s = __fmaf_rn(pr[r].acc[d], e[r], s);
    o[d] = f2bf(__fdiv_rn(s, W));
  }
}

/* PL: head elements per lane (head_dim <= 32 * PL); CH: positions a warp
 * loads at once (more for small heads: the same registers). A (row t,
 * head h) is split into att_splits ranges of its positions 0 .. pos[t].
 * SPREAD: block (t, h, z) of a cluster of MS__CUDA_ATT_SPLITS blocks
 * takes range z and writes its part into the shared memory of the
 * cluster's first block, which adds them after one cluster barrier. Else
 * block (t, h) takes the ranges one after another. Both give the same
 * bits. The block tables and positions are read before pdl_wait: they
 * come from the host before the pass starts. */
template <int PL, int CH, int SPREAD>
static __global__ void __launch_bounds__(ATT_WARPS * 32)
    k_attention(uint16_t *out, const float *q, const uint16_t *k_pool, const uint16_t *v_pool,
                const uint32_t *tables, const int *tab_off, const int *pos, int nh, int group,
                int hd, int bt, int past_ready) {
  __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
  __shared__ float sm_acc[ATT_WARPS][MS__CUDA_HEAD_DIM_MAX];
  __shared__ att_part_t parts[MS__CUDA_ATT_SPLITS];
  int t = blockIdx.x, h = blockIdx.y, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int kvd = nh / group * hd, ghd = h / group * hd;
  int n = pos[t] + 1, S = att_splits(n), len = (n + S - 1) / S;
  const uint32_t *table = tables + tab_off[t];
  int z0 = SPREAD ? blockIdx.z : 0, z1 = SPREAD ? (int)blockIdx.z + 1 : S;
  size_t base0[CH];
  float kc0[CH][PL] = {}, vc0[CH][PL] = {};
  int pre = 0;
  if (z0 < S) {
    int lo = z0 * len, hi = att_end(lo, len, n), s0 = lo + warp * CH;
    att_bases<CH>(table, s0, hi, bt, kvd, ghd, base0);
    /* Positions before the newest were stored by earlier passes when
     * past_ready: this warp's first ones are loaded before the wait. */
    if (SPREAD && past_ready) {
      pre = (hi < n - 1 ? hi : n - 1) - s0;
      pre = pre < 0 ? 0 : pre > CH ? CH : pre;
      att_load<PL, CH>(k_pool, v_pool, base0, s0, 0, s0 + pre, hd, kc0, vc0);
    }
  }
  pdl_release();
  pdl_wait();
  const float *qv = q + ((size_t)t * nh + h) * hd;
  float qr[PL];
#pragma unroll
  for (int j = 0; j < PL; j++) {
    int d = lane + 32 * j;
    qr[j] = d < hd ? qv[d] : 0.0f;
  }
  int ready = 1; /* base0, kc0, vc0 and pre hold range z's first chunk */
  for (int z = z0; z < z1 && z < S; z++) {
    int lo = z * len, hi = att_end(lo, len, n);
    if (!ready)
      att_bases<CH>(table, lo + warp * CH, hi, bt, kvd, ghd, base0);
    /* One block taking the ranges in turn: the next one's first keys
     * and values are loaded while this one's parts are added. */
    int nlo = 0, nhi = 0, npre = 0;
    if (!SPREAD && z + 1 < S) {
      nlo = hi;
      nhi = att_end(nlo, len, n);
    }
    /* Spread: the part goes straight into the cluster's first block. */
    att_part_t *dst = &parts[z];
    if (SPREAD)
      dst = cg::this_cluster().map_shared_rank(dst, 0u);
    att_range<PL, CH>(qr, k_pool, v_pool, table, lo, hi, bt, kvd, ghd, hd, base0, kc0, vc0,
                      ready ? pre : 0, sm_acc, sm_m, sm_l, dst, nlo, nhi, &npre);
    ready = nlo < nhi;
    pre = npre;
  }
  uint16_t *o = out + ((size_t)t * nh + h) * hd;
  if (SPREAD) {
    cg::cluster_group cl = cg::this_cluster();
    cl.sync(); /* every range's part is in the first block's shared memory */
    if (cl.block_rank() != 0)
      return;
  }
  att_combine(parts, S, hd, o);
}

static __global__ void k_swiglu(uint16_t *out, const float *gate, const float *up, size_t n) {
  pdl_begin();
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
  return launch(k_embed, dim3(T), dim3(row_threads(H)), stream, x, embed, tokens, H);
}

extern "C" cudaError_t ms__cuk_rmsnorm(uint16_t *out, const float *x, const int *rows_of,
                                       const uint16_t *w, int rows, int H, float eps,
                                       cudaStream_t stream) {
  return launch(k_rmsnorm, dim3(rows), dim3(row_threads(H)), stream, out, x, rows_of, w, H, eps);
}

extern "C" cudaError_t ms__cuk_rope_store(float *q, float *k, const float *v, const uint16_t *bq,
                                          const uint16_t *bk, const uint16_t *bv, const int *pos,
                                          const int64_t *slot, uint16_t *k_pool, uint16_t *v_pool,
                                          int T, int num_heads, int num_kv_heads, int head_dim,
                                          float theta, cudaStream_t stream) {
  int work = (num_heads + num_kv_heads) * (head_dim / 2) + num_kv_heads * head_dim;
  return launch(k_rope_store, dim3(T), dim3(row_threads(work)), stream, q, k, v, bq, bk, bv, pos,
                slot, k_pool, v_pool, num_heads, num_kv_heads, head_dim, (double)theta);
}

/* Launches k_attention<PL, CH, *>: spread over clusters when the rows
 * and heads alone would leave most multiprocessors idle. */
template <int PL, int CH>
static cudaError_t attention_launch(int T, int nh, cudaStream_t stream, uint16_t *out,
                                    const float *q, const uint16_t *k_pool, const uint16_t *v_pool,
                                    const uint32_t *tables, const int *tab_off, const int *pos,
                                    int group, int hd, int bt, int past_ready) {
  dim3 block(ATT_WARPS * 32);
  if (T * nh <= ATT_SPREAD_PAIRS)
    return launch_ex(k_attention<PL, CH, 1>, dim3((unsigned)T, (unsigned)nh, MS__CUDA_ATT_SPLITS),
                     block, 0, MS__CUDA_ATT_SPLITS, stream, out, q, k_pool, v_pool, tables, tab_off,
                     pos, nh, group, hd, bt, past_ready);
  return launch(k_attention<PL, CH, 0>, dim3((unsigned)T, (unsigned)nh), block, stream, out, q,
                k_pool, v_pool, tables, tab_off, pos, nh, group, hd, bt, past_ready);
}

extern "C" cudaError_t ms__cuk_attention(uint16_t *out, const float *q, const uint16_t *k_pool,
                                         const uint16_t *v_pool, const uint32_t *tables,
                                         const int *tab_off, const int *pos, int T, int num_heads,
                                         int num_kv_heads, int head_dim, int block_tokens,
                                         int past_ready, cudaStream_t stream) {
  if (head_dim > MS__CUDA_HEAD_DIM_MAX || num_heads % num_kv_heads != 0)
    return cudaErrorInvalidValue;
  int group = num_heads / num_kv_heads;
  if (head_dim <= 64)
    return attention_launch<2, 8>(T, num_heads, stream, out, q, k_pool, v_pool, tables, tab_off,
                                  pos, group, head_dim, block_tokens, past_ready);
  if (head_dim <= 128)
    return attention_launch<4, 4>(T, num_heads, stream, out, q, k_pool, v_pool, tables, tab_off,
                                  pos, group, head_dim, block_tokens, past_ready);
  return attention_launch<8, 2>(T, num_heads, stream, out, q, k_pool, v_pool, tables, tab_off, pos,
                                group, head_dim, block_tokens, past_ready);
}

extern "C" cudaError_t ms__cuk_swiglu(uint16_t *out, const float *gate, const float *up, size_t n,
                                      cudaStream_t stream) {
  size_t blocks = (n + 255) / 256;
  if (blocks > 4096)
    blocks = 4096;
  if (blocks == 0)
    return cudaSuccess;
  return launch(k_swiglu, dim3((unsigned)blocks), dim3(256), stream, out, gate, up, n);
}

/* ---- decode projections: k_gemv ---------------------------------------- */

/* The eight bfloat16 of a 16-byte word as float32. */
static __device__ __forceinline__ void unpack8(uint4 u, float f[8]) {
  unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
  for (int i = 0; i < 4; i++) {
    f[2 * i] = __uint_as_float(w[i] << 16);
    f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
  }
}

/* A 16-byte copy from global to shared memory that does not hold the
 * thread up; cp_async_wait waits for this thread's copies. */
static __device__ __forceinline__ void cp_async16(uint4 *dst, const uint4 *src) {
  unsigned d = (unsigned)__cvta_generic_to_shared(dst);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d), "l"(src) : "memory");
}

static __device__ __forceinline__ void cp_async_commit(void) {
  asm volatile("cp.async.commit_group;" ::: "memory");
}

static __device__ __forceinline__ void cp_async_wait(void) {
  asm volatile("cp.async.wait_group 0;" ::: "memory");
}

/* A weight word, read once: not kept in L1. */
static __device__ __forceinline__ uint4 load_stream(const uint4 *p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}

/* What the q/k/v kernel does after its dot products (ms__cuk_gemv_qkv). */
typedef struct gemv_rope {
  const uint16_t *bq, *bk, *bv; /* biases, or NULL */
  const int *pos;               /* position of row t */
  const int64_t *slot;          /* KV-pool slot of row t; -1: store nothing */
  uint16_t *k_pool, *v_pool;    /* this layer's pools */
  int qd, kvd, hd;
  float theta;
} gemv_rope_t;

/* What k_gemv computes; see ms__cuk_gemv in cuda_kernels.h. */
typedef struct gemv_args {
  ms__cuk_gemv_seg_t seg[MS__CUDA_GEMV_SEGS];
  int nseg, T, in, accumulate;
  const uint16_t *X;    /* bf16 input rows [T][in], or NULL: normed x */
  const float *x;       /* float32 rows, normed with norm_w on the way in */
  const int *rows_of;   /* row of x for input row t, or NULL: t */
  const uint16_t *nw;   /* the RMSNorm weight [in] */
  float eps;            /* the RMSNorm epsilon */
  uint16_t *swiglu_out; /* non-NULL: seg 0 is gate, seg 1 up; out[t][r] = bf16(silu(g) * u) */
  int rope;             /* segs are q, k, v: bias, RoPE and the KV store (rp) on the way out */
  gemv_rope_t rp;
} gemv_args_t;

/* The input of row t, elements 8v .. 8v + 7, as float32: the bf16 input,
 * or x's row scaled by its RMS factor and the norm weight and rounded to
 * bf16 exactly as k_rmsnorm rounds it. */
static __device__ __forceinline__ void gemv_input(const gemv_args_t &a, const float *scale,
                                                  const uint4 *nw, int t, int v, float f[8]) {
  if (a.X) {
    unpack8(__ldg((const uint4 *)(a.X + (size_t)t * a.in) + v), f);
    return;
  }
  int row = a.rows_of ? a.rows_of[t] : t;
  const float4 *xr = (const float4 *)(a.x + (size_t)row * a.in) + 2 * v;
  float4 x0 = xr[0], x1 = xr[1];
  float w[8];
  unpack8(nw[v], w);
  float xs[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
  for (int i = 0; i < 8; i++)
    f[i] = bf2f(f2bf(xs[i] * scale[t] * w[i]));
}

/* The segment of output row r (of all segments' rows together) and r's
 * row within it. */
static __device__ __forceinline__ int gemv_seg(const gemv_args_t &a, int r, int *rr) {
  int s = 0;
  while (!a.swiglu_out && s < a.nseg - 1 && r >= a.seg[s].rows)
    r -= a.seg[s++].rows;
  *rr = r;
  return s;
}

/* The output row that k_gemv's row index n stands for: n itself, or for
 * the q/k/v kernel the two halves of a RoPE pair side by side - index 2P
 * and 2P + 1 are elements i and i + hd / 2 of a q or k head - so that one
 * group holds both values it rotates together. Returns the segment. */
static __device__ __forceinline__ int gemv_row(const gemv_args_t &a, int n, int *rr) {
  int r = n;
  if (a.rope) {
    int P = n / 2, j = n % 2, half = a.rp.hd / 2;
    if (2 * P < a.rp.qd + a.rp.kvd)
      r = P / half * a.rp.hd + P % half + j * half;
  }
  return gemv_seg(a, r, rr);
}

/* What a thread's epilogue reads besides the dot products: for the q/k/v
 * kernel the pair's biases, the row's position and slot (weights and
 * host-made tables: read before pdl_wait), for an accumulating launch the
 * values added to (read just after it). */
typedef struct gemv_pre {
  float b0, b1;
  int pos;
  int64_t slot;
  float res[GEMV_R];
} gemv_pre_t;

/* The q/k/v epilogue's inputs for the pair rr0, rr1 of segment sg, row t. */
static __device__ __forceinline__ void gemv_rope_pre(const gemv_args_t &a, int sg, int rr0, int rr1,
                                                     int t, gemv_pre_t *pre) {
  const gemv_rope_t &p = a.rp;
  const uint16_t *b = sg == 0 ? p.bq : sg == 1 ? p.bk : p.bv;
  pre->b0 = b ? bf2f(b[rr0]) : 0.0f;
  pre->b1 = b ? bf2f(b[rr1]) : 0.0f;
  pre->pos = p.pos[t];
  pre->slot = p.slot[t];
}

/* Bias, RoPE and the KV store of one pair (rows rr0 and rr1 of segment
 * sg) of input row t, as k_rope_store does it: q rotated into its float
 * rows, k rotated and v into the pools at the row's slot. */
static __device__ void gemv_rope_out(const gemv_args_t &a, int sg, int rr0, int rr1, int t,
                                     float y0, float y1, const gemv_pre_t &pre) {
  const gemv_rope_t &p = a.rp;
  int64_t slot = pre.slot;
  if (sg == 2) {
    if (slot >= 0) {
      uint16_t *vd = p.v_pool + (size_t)slot * p.kvd;
      vd[rr0] = f2bf(y0 + pre.b0);
      vd[rr1] = f2bf(y1 + pre.b1);
    }
    return;
  }
  y0 += pre.b0;
  y1 += pre.b1;
  int i = rr0 % p.hd;
  float ang = (float)pre.pos * powf(p.theta, -2.0f * (float)i / (float)p.hd), sn, cs;
  sincosf(ang, &sn, &cs);
  float r0 = y0 * cs - y1 * sn, r1 = y0 * sn + y1 * cs;
  if (sg == 0) {
    float *q = a.seg[0].y + (size_t)t * a.seg[0].rows;
    q[rr0] = r0;
    q[rr1] = r1;
  } else if (slot >= 0) {
    uint16_t *kd = p.k_pool + (size_t)slot * p.kvd;
    kd[rr0] = f2bf(r0);
    kd[rr1] = f2bf(r1);
  }
}

/* A group's rows from row index n0: their weight rows (the last row again
 * past the end). */
static __device__ __forceinline__ void gemv_ptrs(const gemv_args_t &a, int n0, int rows,
                                                 const uint4 *w0[GEMV_R], const uint4 *w1[GEMV_R]) {
#pragma unroll
  for (int j = 0; j < GEMV_R; j++) {
    int n = n0 + j < rows ? n0 + j : rows - 1, rr;
    int sg = gemv_row(a, n, &rr);
    w0[j] = (const uint4 *)(a.seg[sg].w + (size_t)rr * a.in);
    w1[j] = a.swiglu_out ? (const uint4 *)(a.seg[1].w + (size_t)rr * a.in) : w0[j];
  }
}

/* A lane's words v0, v0 + S * 32, ... (NV of them, those below nv) of the
 * group's rows, all loads issued before any is used. */
template <int S, int NV>
static __device__ __forceinline__ void
gemv_load(const uint4 *const w0[GEMV_R], const uint4 *const w1[GEMV_R], int swiglu, int v0, int nv,
          uint4 (&u0)[GEMV_R][NV], uint4 (&u1)[GEMV_R][NV]) {
#pragma unroll
  for (int n = 0; n < NV; n++) {
    int v = v0 + n * S * 32;
    if (v < nv) {
#pragma unroll
      for (int j = 0; j < GEMV_R; j++) {
        u0[j][n] = load_stream(w0[j] + v);
        if (swiglu)
          u1[j][n] = load_stream(w1[j] + v);
      }
    }
  }
}

/* Asks L2 for the words of a group's rows from row index n0 that this
 * lane would load (one request per 128-byte line). */
template <int S, int NV>
static __device__ __forceinline__ void gemv_l2(const gemv_args_t &a, int n0, int rows, int swiglu,
                                               int v0, int nv) {
  const uint4 *p0[GEMV_R], *p1[GEMV_R];
  gemv_ptrs(a, n0, rows, p0, p1);
#pragma unroll
  for (int n = 0; n < NV; n++) {
    int v = v0 + n * S * 32;
    if (v < nv && (v & 7) == 0)
#pragma unroll
      for (int j = 0; j < GEMV_R; j++) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(p0[j] + v));
        if (swiglu)
          asm volatile("prefetch.global.L2 [%0];" ::"l"(p1[j] + v));
      }
  }
}

/* Blocks of k_gemv a multiprocessor should hold (the registers' bound):
 * four, but two for SwiGLU with four words a lane (gate and up rows held
 * at once would spill). */
constexpr int gemv_min_blocks(int sw, int nv) {
  return sw && nv > 2 ? 2 : 4;
}

/* GEMV_R output rows go together. A block's GEMV_WARPS warps form
 * GEMV_WARPS / S groups of S warps; a group takes GEMV_R rows at a time
 * (grid-stride), its S warps splitting the rows' 16-byte words between
 * them (word v to warp (v / 32) % S, lane v % 32). A lane holds NV words
 * of each row at once, loaded before any is used; the first of them are
 * loaded before the kernel waits for the one before it (pdl_wait), so
 * with programmatic dependent launch the weight reads of this kernel
 * overlap the end of the last. Each word meets every input row (TM: a
 * compile-time bound of T). A warp's lanes are summed by shuffles, the
 * group's warps in warp order through shared memory - a fixed order that
 * depends on the width only, so a row's result does not depend on T nor
 * on the rows beside it. S is chosen by the width: wide rows (down_proj)
 * are split over more warps, so that there are enough loads in flight. */
template <int TM, int S, int NV, int SW>
static __global__ void __launch_bounds__(GEMV_WARPS * 32, gemv_min_blocks(SW, NV))
    k_gemv(gemv_args_t a) {
  constexpr int G = GEMV_WARPS / S; /* groups per block */
  __shared__ float scale[MS__CUDA_GEMV_T_MAX];
  __shared__ float part[GEMV_WARPS][GEMV_R][TM][2];
  extern __shared__ uint4 nw_s[]; /* the norm weight (normed input only): in / 8 words */
  int lane = threadIdx.x % 32, warp = threadIdx.x / 32, g = warp / S, k = warp % S;
  constexpr int swiglu = SW;
  int nv = a.in / 8, vl = k * 32 + lane;
  int rows = swiglu ? a.seg[0].rows : 0;
  if (!swiglu)
    for (int s = 0; s < a.nseg; s++)
      rows += a.seg[s].rows;
  int first = blockIdx.x * G * GEMV_R;
  const uint4 *w0[GEMV_R], *w1[GEMV_R];
  uint4 u0[GEMV_R][NV], u1[GEMV_R][NV];
  /* The norm weight into shared memory, before the wait (a weight). */
  if (!a.X) {
    for (int i = threadIdx.x; i < nv; i += blockDim.x)
      cp_async16(nw_s + i, (const uint4 *)a.nw + i);
    cp_async_commit();
  }
  gemv_ptrs(a, first + g * GEMV_R, rows, w0, w1);
  gemv_load<S, NV>(w0, w1, swiglu, vl, nv, u0, u1);
  pdl_release();
  /* The grid is no larger than the GPU holds at once: the rows of a
   * block's next pass are asked of L2 while this one runs. */
  int stride = gridDim.x * G * GEMV_R;
  if (first + stride < rows)
    gemv_l2<S, NV>(a, first + stride + g * GEMV_R, rows, swiglu, vl, nv);
  /* The q/k/v epilogue's biases, position and slot of this thread's first
   * pair, before the wait too (thread q < G * TM finishes group q / TM's
   * rows for input row q % TM). */
  int qt = threadIdx.x % TM, qn0 = first + (int)threadIdx.x / TM * GEMV_R;
  int q_live = (int)threadIdx.x < G * TM && qt < a.T && qn0 < rows;
  gemv_pre_t pre;
  if (!swiglu && a.rope && q_live) {
    int rr0, rr1, sg = gemv_row(a, qn0, &rr0);
    gemv_row(a, qn0 + 1, &rr1);
    gemv_rope_pre(a, sg, rr0, rr1, qt, &pre);
  }
  pdl_wait();
  /* After it: the values an accumulating launch adds to. */
  if (!swiglu && a.accumulate && q_live)
#pragma unroll
    for (int j = 0; j < GEMV_R; j++) {
      int rr, sg = gemv_row(a, qn0 + j < rows ? qn0 + j : qn0, &rr);
      pre.res[j] = a.seg[sg].y[(size_t)qt * a.seg[sg].rows + rr];
    }
  if (!a.X) {
    cp_async_wait();
    for (int t = 0; t < a.T; t++) {
      int row = a.rows_of ? a.rows_of[t] : t;
      const float *xr = a.x + (size_t)row * a.in;
      float ss = 0.0f;
      for (int i = threadIdx.x; i < a.in; i += blockDim.x)
        ss += xr[i] * xr[i];
      ss = block_sum(ss);
      if (threadIdx.x == 0)
        scale[t] = rsqrtf(ss / (float)a.in + a.eps);
    }
  }
  __syncthreads();
  /* The loop runs the same number of times in every thread of the block
   * (it holds __syncthreads). */
  for (int base = first; base < rows; base += stride) {
    if (base != first) {
      gemv_ptrs(a, base + g * GEMV_R, rows, w0, w1);
      gemv_load<S, NV>(w0, w1, swiglu, vl, nv, u0, u1);
      if (base + stride < rows)
        gemv_l2<S, NV>(a, base + stride + g * GEMV_R, rows, swiglu, vl, nv);
    }
    float acc0[GEMV_R][TM], acc1[GEMV_R][TM];
#pragma unroll
    for (int j = 0; j < GEMV_R; j++)
#pragma unroll
      for (int t = 0; t < TM; t++)
        acc0[j][t] = acc1[j][t] = 0.0f;
    for (int c0 = 0; c0 < nv; c0 += S * 32 * NV) {
      if (c0)
        gemv_load<S, NV>(w0, w1, swiglu, c0 + vl, nv, u0, u1);
#pragma unroll
      for (int n = 0; n < NV; n++) {
        int v = c0 + vl + n * S * 32;
        if (v >= nv)
          break;
#pragma unroll
        for (int t = 0; t < TM; t++) {
          if (t < a.T) {
            float in[8];
            gemv_input(a, scale, nw_s, t, v, in);
#pragma unroll
            for (int j = 0; j < GEMV_R; j++) {
              float f[8];
              unpack8(u0[j][n], f);
#pragma unroll
              for (int i = 0; i < 8; i++)
                acc0[j][t] += f[i] * in[i];
              if (swiglu) {
                unpack8(u1[j][n], f);
#pragma unroll
                for (int i = 0; i < 8; i++)
                  acc1[j][t] += f[i] * in[i];
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int j = 0; j < GEMV_R; j++)
#pragma unroll
      for (int t = 0; t < TM; t++) {
        float s0 = warp_sum(acc0[j][t]), s1 = swiglu ? warp_sum(acc1[j][t]) : 0.0f;
        if (lane == 0) {
          part[warp][j][t][0] = s0;
          part[warp][j][t][1] = s1;
        }
      }
    __syncthreads();
    /* One thread per (group, input row) adds the group's warps for its
     * rows. */
    for (int q = threadIdx.x; q < G * TM; q += blockDim.x) {
      int gq = q / TM, t = q % TM, n0 = base + gq * GEMV_R;
      if (t >= a.T || n0 >= rows)
        continue;
      float y0[GEMV_R], y1[GEMV_R];
      int sg[GEMV_R], rr[GEMV_R];
#pragma unroll
      for (int j = 0; j < GEMV_R; j++) {
        y0[j] = y1[j] = 0.0f;
        for (int w = 0; w < S; w++) {
          y0[j] += part[gq * S + w][j][t][0];
          y1[j] += part[gq * S + w][j][t][1];
        }
        sg[j] = gemv_row(a, n0 + j, &rr[j]);
      }
      /* The first pass uses what was read ahead (pre); later ones read it
       * here. */
      if (a.rope) { /* rows come in pairs: n0 + 1 < rows */
        if (base != first)
          gemv_rope_pre(a, sg[0], rr[0], rr[1], t, &pre);
        gemv_rope_out(a, sg[0], rr[0], rr[1], t, y0[0], y0[1], pre);
        continue;
      }
#pragma unroll
      for (int j = 0; j < GEMV_R; j++) {
        if (n0 + j >= rows)
          break;
        if (swiglu) {
          a.swiglu_out[(size_t)t * rows + rr[j]] = f2bf(y0[j] / (1.0f + expf(-y0[j])) * y1[j]);
        } else {
          float *y = a.seg[sg[j]].y + (size_t)t * a.seg[sg[j]].rows + rr[j];
          *y = a.accumulate ? (base == first ? pre.res[j] : *y) + y0[j] : y0[j];
        }
      }
    }
    __syncthreads();
  }
}

/* Blocks of kernel (GEMV_WARPS * 32 threads, smem bytes of dynamic shared
 * memory) the current GPU holds at once; 2112 when it cannot be told. The
 * answers are kept per kernel, device and smem (every k_gemv has the same
 * type, so a per-type cache would mix them up). */
static int gemv_resident(void (*kernel)(gemv_args_t), size_t smem) {
  static struct {
    void (*kernel)(gemv_args_t);
    int dev;
    size_t smem;
    int blocks;
  } seen[64];
  static int nseen = 0;
  int dev = 0, per_sm = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess)
    return 2112;
  for (int i = 0; i < nseen; i++)
    if (seen[i].kernel == kernel && seen[i].dev == dev && seen[i].smem == smem)
      return seen[i].blocks;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, GEMV_WARPS * 32, smem) !=
          cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
      per_sm < 1) {
    cudaGetLastError();
    return 2112;
  }
  if (nseen < 64) {
    seen[nseen].kernel = kernel;
    seen[nseen].dev = dev;
    seen[nseen].smem = smem;
    seen[nseen++].blocks = per_sm * sms;
  }
  return per_sm * sms;
}

/* Launches kernel (a k_gemv<TM, S, NV, *>) over rows output rows: as many
 * blocks as the rows need, but no more than the GPU holds at once (the
 * rest go round the grid, their weights asked of L2 a pass ahead). */
template <int S>
static void gemv_launch_k(void (*kernel)(gemv_args_t), const gemv_args_t &a, int rows,
                          cudaStream_t stream) {
  int per_block = GEMV_WARPS / S * GEMV_R;
  int b = (rows + per_block - 1) / per_block;
  size_t smem = a.X ? 0 : (size_t)a.in * 2; /* the norm weight */
  int cap = gemv_resident(kernel, smem);
  dim3 grid((unsigned)(b < 1 ? 1 : b > cap ? cap : b)), block(GEMV_WARPS * 32);
  launch_ex(kernel, grid, block, smem, 0, stream, a);
}

template <int TM, int S, int NV>
static void gemv_launch_s(const gemv_args_t &a, int rows, cudaStream_t stream) {
  if (a.swiglu_out)
    gemv_launch_k<S>(k_gemv<TM, S, NV, 1>, a, rows, stream);
  else
    gemv_launch_k<S>(k_gemv<TM, S, NV, 0>, a, rows, stream);
}

/* NV: a lane's words of a row - the fewest of two, three or four that
 * take the row in one chunk (words a lane holds past the row's end are
 * registers spent for nothing; fewer registers keep more blocks
 * resident), else four a chunk. */
template <int TM, int S>
static void gemv_launch_v(const gemv_args_t &a, int rows, cudaStream_t stream) {
  if (a.in / 8 <= S * 32 * 2)
    gemv_launch_s<TM, S, 2>(a, rows, stream);
  else if (a.in / 8 <= S * 32 * 3)
    gemv_launch_s<TM, S, 3>(a, rows, stream);
  else
    gemv_launch_s<TM, S, 4>(a, rows, stream);
}

template <int TM> static void gemv_launch_t(const gemv_args_t &a, int rows, cudaStream_t stream) {
  /* Each lane gets about two words of a row or more (896 wide: 1.75). */
  int nv = a.in / 8;
  if (nv >= 8 * 32 * 2)
    gemv_launch_v<TM, 8>(a, rows, stream);
  else if (nv >= 4 * 32 * 2)
    gemv_launch_v<TM, 4>(a, rows, stream);
  else if (nv >= 2 * 32 * 1.5)
    gemv_launch_v<TM, 2>(a, rows, stream);
  else
    gemv_launch_v<TM, 1>(a, rows, stream);
}

/* Launches k_gemv with the smallest compile-time bound that holds T. */
static cudaError_t gemv_launch(const gemv_args_t &a, int rows, cudaStream_t stream) {
  if (a.T == 1)
    gemv_launch_t<1>(a, rows, stream);
  else
    gemv_launch_t<MS__CUDA_GEMV_T_MAX>(a, rows, stream);
  return cudaGetLastError();
}

/* The arguments of a k_gemv launch over nseg matrices (checked by the
 * callers). */
static gemv_args_t gemv_args(const ms__cuk_gemv_seg_t *segs, int nseg, const uint16_t *X,
                             const float *x, const int *rows_of, const uint16_t *norm_w, float eps,
                             int T, int in, int accumulate) {
  gemv_args_t a;
  memset(&a, 0, sizeof a);
  for (int i = 0; i < nseg; i++)
    a.seg[i] = segs[i];
  a.nseg = nseg;
  a.T = T;
  a.in = in;
  a.accumulate = accumulate;
  a.X = X;
  a.x = x;
  a.rows_of = rows_of;
  a.nw = norm_w;
  a.eps = eps;
  return a;
}

extern "C" cudaError_t ms__cuk_gemv(const ms__cuk_gemv_seg_t *segs, int nseg, const uint16_t *X,
                                    const float *x, const int *rows_of, const uint16_t *norm_w,
                                    float eps, int T, int in, int accumulate, cudaStream_t stream) {
  if (nseg < 1 || nseg > MS__CUDA_GEMV_SEGS || T < 1 || T > MS__CUDA_GEMV_T_MAX || in % 8 != 0 ||
      (!X && (!x || !norm_w || in > MS__CUDA_GEMV_NORM_IN_MAX)))
    return cudaErrorInvalidValue;
  int rows = 0;
  for (int i = 0; i < nseg; i++)
    rows += segs[i].rows;
  return gemv_launch(gemv_args(segs, nseg, X, x, rows_of, norm_w, eps, T, in, accumulate), rows,
                     stream);
}

extern "C" cudaError_t ms__cuk_gemv_qkv(const ms__cuk_qkv_t *p, const float *x,
                                        const uint16_t *norm_w, float eps, int T, int in,
                                        cudaStream_t stream) {
  int qd = p->num_heads * p->head_dim, kvd = p->num_kv_heads * p->head_dim;
  if (T < 1 || T > MS__CUDA_GEMV_T_MAX || in % 8 != 0 || in > MS__CUDA_GEMV_NORM_IN_MAX || !x ||
      !norm_w || p->head_dim % 2 != 0 || p->head_dim < 2)
    return cudaErrorInvalidValue;
  ms__cuk_gemv_seg_t segs[3] = {{p->wq, p->q, qd}, {p->wk, NULL, kvd}, {p->wv, NULL, kvd}};
  gemv_args_t a = gemv_args(segs, 3, NULL, x, NULL, norm_w, eps, T, in, 0);
  a.rope = 1;
  a.rp.bq = p->bq;
  a.rp.bk = p->bk;
  a.rp.bv = p->bv;
  a.rp.pos = p->pos;
  a.rp.slot = p->slot;
  a.rp.k_pool = p->k_pool;
  a.rp.v_pool = p->v_pool;
  a.rp.qd = qd;
  a.rp.kvd = kvd;
  a.rp.hd = p->head_dim;
  a.rp.theta = p->theta;
  return gemv_launch(a, qd + 2 * kvd, stream);
}

extern "C" cudaError_t ms__cuk_gemv_swiglu(uint16_t *out, const uint16_t *w_gate,
                                           const uint16_t *w_up, int rows, const float *x,
                                           const uint16_t *norm_w, float eps, int T, int in,
                                           cudaStream_t stream) {
  if (T < 1 || T > MS__CUDA_GEMV_T_MAX || in % 8 != 0 || in > MS__CUDA_GEMV_NORM_IN_MAX || !x ||
      !norm_w)
    return cudaErrorInvalidValue;
  ms__cuk_gemv_seg_t segs[2] = {{w_gate, NULL, rows}, {w_up, NULL, rows}};
  gemv_args_t a = gemv_args(segs, 2, NULL, x, NULL, norm_w, eps, T, in, 0);
  a.swiglu_out = out;
  return gemv_launch(a, rows, stream);
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
  int n = blockDim.x;
  for (int i0 = threadIdx.x; i0 < V; i0 += 4 * n) {
    float x[4];
#pragma unroll
    for (int u = 0; u < 4; u++) /* four loads in flight before any is used */
      x[u] = i0 + u * n < V ? l[i0 + u * n] : -INFINITY;
#pragma unroll
    for (int u = 0; u < 4; u++)
      if (i0 + u * n < V && fkey(x[u]) >= t)
        s += mass ? expf((x[u] - m) / temp) : 1.0f;
  }
  return block_sum(s);
}

/* The arg max (lowest id on ties) of part blockIdx.y of SAMPLE_SPLIT of
 * logits row blockIdx.x: many blocks a row, so that reading a large
 * vocabulary is not one block's work. */
static __global__ void __launch_bounds__(SAMPLE_THREADS)
    k_row_max(ms__cuk_argmax_t *part, const float *logits, int V) {
  pdl_begin();
  __shared__ float sm_v[32];
  __shared__ int sm_i[32];
  const float *l = logits + (size_t)blockIdx.x * V;
  int chunk = (V + SAMPLE_SPLIT - 1) / SAMPLE_SPLIT;
  int lo = blockIdx.y * chunk, hi = lo + chunk < V ? lo + chunk : V, n = blockDim.x;
  float bv = -INFINITY;
  int bi = V;
  for (int i0 = lo + threadIdx.x; i0 < hi; i0 += 4 * n) {
    float x[4];
#pragma unroll
    for (int u = 0; u < 4; u++)
      x[u] = i0 + u * n < hi ? l[i0 + u * n] : -INFINITY;
#pragma unroll
    for (int u = 0; u < 4; u++) /* ids upwards: a tie keeps the lower */
      if (i0 + u * n < hi && (bi == V || x[u] > bv)) {
        bv = x[u];
        bi = i0 + u * n;
      }
  }
  for (int o = 16; o > 0; o >>= 1) {
    float ov = __shfl_xor_sync(0xffffffffu, bv, o);
    int oi = __shfl_xor_sync(0xffffffffu, bi, o);
    if (oi < V && (bi == V || ov > bv || (ov == bv && oi < bi))) {
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
  if (threadIdx.x == 0) {
    for (int w = 1; w < nw; w++)
      if (sm_i[w] < V && (bi == V || sm_v[w] > bv || (sm_v[w] == bv && sm_i[w] < bi))) {
        bv = sm_v[w];
        bi = sm_i[w];
      }
    part[(size_t)blockIdx.x * SAMPLE_SPLIT + blockIdx.y] = (ms__cuk_argmax_t){bv, bi};
  }
}

static __global__ void __launch_bounds__(SAMPLE_THREADS)
    k_sample(int *out, const float *logits, const ms__cuk_sample_t *params, int V,
             const ms__cuk_argmax_t *part_in) {
  pdl_begin();
  __shared__ float part[SAMPLE_THREADS];
  __shared__ int owner;
  __shared__ float rest;
  const float *l = logits + (size_t)blockIdx.x * V;
  ms__cuk_sample_t sp = params[blockIdx.x];
  /* The arg max, lowest id on ties, from k_row_max's parts. */
  float bv = -INFINITY;
  int bi = V;
  for (int k = 0; k < SAMPLE_SPLIT; k++) {
    ms__cuk_argmax_t pk = part_in[(size_t)blockIdx.x * SAMPLE_SPLIT + k];
    if (pk.index < V && (bi == V || pk.value > bv || (pk.value == bv && pk.index < bi))) {
      bv = pk.value;
      bi = pk.index;
    }
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
                                      int rows, int vocab, ms__cuk_argmax_t *part,
                                      cudaStream_t stream) {
  if (rows <= 0)
    return cudaSuccess;
  cudaError_t e = launch(k_row_max, dim3((unsigned)rows, SAMPLE_SPLIT), dim3(SAMPLE_THREADS),
                         stream, part, logits, vocab);
  if (e != cudaSuccess)
    return e;
  return launch(k_sample, dim3((unsigned)rows), dim3(SAMPLE_THREADS), stream, out, logits, params,
                vocab, (const ms__cuk_argmax_t *)part);
}
