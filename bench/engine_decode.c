/*
 * engine_decode.c - how long one decode step of the GPU compute backend
 * takes, next to the time a device-to-device copy needs to read the
 * weights once (the batch-1 bound), in the same process.
 *
 * The model directory's weights are loaded as memsleep-serve loads them
 * (bfloat16, tag "weights", CUDA device 0); a prompt of 16 tokens is
 * prefilled for each of B sequences, then decode steps run (every
 * sequence one token, greedy, sampled on the device) - with CUDA graphs,
 * and again without - each step timed on the host from the call to the
 * end of the drained stream, as the scheduler sees it. Printed per batch
 * size: the median step, tokens/s, and for batch 1 the ratio to the bound.
 *
 * Bound: a cudaMemcpyAsync of weight_bytes from device to device, timed
 * with events (best of 5), reads and writes weight_bytes each: its rate is
 * 2 * weight_bytes / time (the figure bandwidth tests print), and reading
 * the weights once at that rate takes weight_bytes / rate.
 *
 *   bench_engine_decode MODEL_DIR [--steps N] [--batches 1,16,64] [--graphs both|on|off]
 *
 * (--graphs on or off runs only that half: for a profiler.)
 *
 * Exits 0, 1 (error) or 77 (no usable CUDA device).
 */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine/compute.h"
#include "engine/device.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define PROMPT   16
#define MAX_B    64
#define MAX_STEP 4096

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* Seconds a device-to-device copy of bytes takes (best of 5), or < 0. */
static double copy_seconds(size_t bytes) {
  void *a = NULL, *b = NULL;
  if (cudaMalloc(&a, bytes) != cudaSuccess || cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaFree(a);
    return -1.0;
  }
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  double best = 1e9;
  for (int i = 0; i < 6; i++) {
    cudaEventRecord(e0, 0);
    cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, 0);
    cudaEventRecord(e1, 0);
    cudaEventSynchronize(e1);
    float ms = 0.0f;
    cudaEventElapsedTime(&ms, e0, e1);
    if (i > 0 && ms / 1e3 < best) /* the first is a warm-up */
      best = ms / 1e3;
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(a);
  cudaFree(b);
  return best;
}

typedef struct run {
  const ms__compute_ops_t *ops;
  void *ctx;
  ms__kv_cache_t *kv;
  int vocab, block_tokens, steps;
} run_t;

/* Median decode step in ms over r->steps steps of B sequences. */
static double decode_ms(run_t *r, int B, int graphs) {
  static uint32_t tables[MAX_B][(PROMPT + MAX_STEP) / 16 + 2];
  static int tokens[MAX_B][PROMPT + MAX_STEP + 1];
  static double t[MAX_STEP];
  int per_seq = (PROMPT + r->steps + r->block_tokens - 1) / r->block_tokens;
  for (int s = 0; s < B; s++)
    for (int b = 0; b < per_seq; b++)
      tables[s][b] = (uint32_t)(s * per_seq + b);
  r->ops->set_graphs(r->ctx, graphs);
  ms__batch_seq_t seq[MAX_B];
  int next[MAX_B];
  for (int s = 0; s < B; s++) {
    for (int i = 0; i < PROMPT; i++)
      tokens[s][i] = (s * 37 + i * 11 + 5) % r->vocab;
    seq[s] = (ms__batch_seq_t){.tokens = tokens[s],
                               .n_tokens = PROMPT,
                               .start_pos = 0,
                               .block_table = tables[s],
                               .token = &next[s]};
  }
  /* The prompts, as many at a time as a pass takes (256 tokens). */
  for (int s0 = 0; s0 < B; s0 += 256 / PROMPT) {
    int n = B - s0 < 256 / PROMPT ? B - s0 : 256 / PROMPT;
    if (r->ops->forward(r->ctx, seq + s0, (size_t)n) != 0)
      return -1.0;
  }
  for (int k = 0; k < r->steps; k++) {
    for (int s = 0; s < B; s++) {
      tokens[s][PROMPT + k] = next[s];
      seq[s].tokens = &tokens[s][PROMPT + k];
      seq[s].n_tokens = 1;
      seq[s].start_pos = PROMPT + k;
    }
    double t0 = now_ms();
    if (r->ops->forward(r->ctx, seq, (size_t)B) != 0)
      return -1.0;
    t[k] = now_ms() - t0;
  }
  /* The first steps capture graphs or plan GEMMs: leave out a tenth. */
  int skip = r->steps / 10;
  qsort(t + skip, (size_t)(r->steps - skip), sizeof t[0], cmp_double);
  return t[skip + (r->steps - skip) / 2];
}

int main(int argc, char **argv) {
  const char *dir = NULL, *batches = "1,16,64", *graphs = "both";
  int steps = 256;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--steps") == 0 && i + 1 < argc)
      steps = atoi(argv[++i]);
    else if (strcmp(argv[i], "--batches") == 0 && i + 1 < argc)
      batches = argv[++i];
    else if (strcmp(argv[i], "--graphs") == 0 && i + 1 < argc)
      graphs = argv[++i];
    else if (argv[i][0] != '-' && !dir)
      dir = argv[i];
    else {
      fprintf(stderr, "usage: bench_engine_decode MODEL_DIR [--steps N] [--batches 1,16,64] "
                      "[--graphs both|on|off]\n");
      return 1;
    }
  }
  if (!dir || steps < 10 || steps > MAX_STEP) {
    fprintf(stderr, "bench_engine_decode: a model directory and 10 <= steps <= %d are needed\n",
            MAX_STEP);
    return 1;
  }
  if (ms__device_check(0) != 0) {
    printf("SKIP: %s\n", memsleep_last_error());
    return 77;
  }
  ms__model_t m;
  memset(&m, 0, sizeof m);
  if (ms__model_load(dir, "weights", MEMSLEEP_BACKUP, 0, NULL, NULL, &m) != 0) {
    fprintf(stderr, "bench_engine_decode: %s: %s\n", dir, memsleep_last_error());
    return 1;
  }
  const ms__model_config_t *c = &m.cfg;
  int bt = 16 /* as tables above */, max_ctx = PROMPT + steps + 1;
  size_t per_seq = (size_t)(max_ctx + bt - 1) / bt;
  ms__kv_cache_t kv;
  memset(&kv, 0, sizeof kv);
  run_t r = {ms__compute_for(0), NULL, &kv, c->vocab_size, bt, steps};
  int rc = ms__kv_create(&kv, c->num_layers, c->num_kv_heads * c->head_dim, bt, per_seq * MAX_B, 0);
  if (rc == 0)
    rc = r.ops->create(&m, &kv.layout, 0, 256, max_ctx, &r.ctx);
  if (rc != 0) {
    fprintf(stderr, "bench_engine_decode: %s\n", memsleep_last_error());
    return 1;
  }
  double copy_s = copy_seconds(m.weight_bytes);
  double rate = copy_s > 0 ? 2.0 * (double)m.weight_bytes / copy_s : 0.0;
  double bound_ms = rate > 0 ? (double)m.weight_bytes / rate * 1e3 : 0.0;
  printf("model %s: %d layers, hidden %d, vocab %d, %zu weight bytes\n", dir, c->num_layers,
         c->hidden_size, c->vocab_size, m.weight_bytes);
  printf("device-to-device copy: %.1f GB/s (read + write); reading the weights once: %.3f ms\n",
         rate / 1e9, bound_ms);
  printf("\n%6s %14s %14s %12s %14s\n", "batch", "graphs (ms)", "no graphs (ms)", "tokens/s",
         "of the bound");
  int fail = 0;
  for (const char *p = batches; *p;) {
    int B = atoi(p);
    if (B >= 1 && B <= MAX_B) {
      int on = strcmp(graphs, "off") != 0, off = strcmp(graphs, "on") != 0;
      double g = on ? decode_ms(&r, B, 1) : 0.0, n = off ? decode_ms(&r, B, 0) : 0.0;
      if (g < 0 || n < 0) {
        fprintf(stderr, "bench_engine_decode: forward: %s\n", memsleep_last_error());
        fail = 1;
        break;
      }
      double best = on ? g : n;
      printf("%6d %14.3f %14.3f %12.1f", B, g, n, B * 1e3 / best);
      if (B == 1)
        printf(" %13.1f%%", 100.0 * bound_ms / best);
      printf("\n");
    }
    p = strchr(p, ',');
    if (!p)
      break;
    p++;
  }
  r.ops->destroy(r.ctx);
  ms__kv_destroy(&kv);
  ms__model_free(&m);
  return fail;
}
