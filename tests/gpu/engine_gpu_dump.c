/*
 * engine_gpu_dump.c - writes the engine's logits for every position of a
 * prompt, computed on a device of choice, for tests/gpu/hf_compare.py.
 *
 * Usage: engine_gpu_dump DEVICE MODEL_DIR ID,ID,... OUT_FILE
 *
 * DEVICE is "cpu" or "cuda:N" (as memsleep-serve's --device). Loads the
 * model there (bfloat16 weights on a CUDA device), runs the first half of
 * the prompt as one prefill pass and the rest one decode token at a time,
 * over a paged KV cache whose block table is out of order (so both paths
 * and the paged reads are exercised), and writes the logits to OUT_FILE as
 * raw float32 (host byte order), one row of vocab_size values per prompt
 * position. Prints "rows N vocab V" on success. Exits 0, 1 (failure) or
 * 77 (the device cannot be used).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/compute.h"
#include "engine/device.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define MAX_IDS 64 /* the GPU backend returns up to 64 logits rows a pass */

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s DEVICE MODEL_DIR ID,ID,... OUT_FILE\n", argv[0]);
    return 2;
  }
  int device;
  if (ms__device_parse(argv[1], &device) != 0) {
    fprintf(stderr, "engine_gpu_dump: %s\n", memsleep_last_error());
    return 2;
  }
  if (ms__device_check(device) != 0) {
    fprintf(stderr, "engine_gpu_dump: skipped: %s\n", memsleep_last_error());
    return 77;
  }
  int ids[MAX_IDS];
  int n = 0;
  for (char *p = argv[3]; *p && n < MAX_IDS;) {
    ids[n++] = (int)strtol(p, &p, 10);
    while (*p == ',' || *p == ' ')
      p++;
  }
  if (n == 0) {
    fprintf(stderr, "engine_gpu_dump: no token ids\n");
    return 2;
  }
  ms__model_t m;
  memset(&m, 0, sizeof m);
  if (ms__model_load(argv[2], "weights", MEMSLEEP_BACKUP, device, NULL, NULL, &m) != 0) {
    fprintf(stderr, "engine_gpu_dump: %s\n", memsleep_last_error());
    return 1;
  }
  const ms__model_config_t *cfg = &m.cfg;
  const ms__compute_ops_t *ops = ms__compute_for(device);
  const int bt = 4;
  size_t nblocks = (size_t)(n + bt - 1) / bt;
  ms__kv_cache_t kv;
  memset(&kv, 0, sizeof kv);
  void *ctx = NULL;
  int rc = ms__kv_create(&kv, cfg->num_layers, cfg->num_kv_heads * cfg->head_dim, bt, nblocks + 3,
                         device);
  if (rc == 0)
    rc = ops->create(&m, &kv.layout, 0, n, n, &ctx);
  size_t V = (size_t)cfg->vocab_size;
  float *logits = malloc(sizeof(float) * (size_t)n * V);
  uint32_t *table = malloc(sizeof(uint32_t) * nblocks);
  if (rc == 0 && (!logits || !table))
    rc = -1;
  if (rc == 0) {
    for (size_t b = 0; b < nblocks; b++)
      table[b] = (uint32_t)(nblocks + 2 - b); /* reversed, skipping blocks 0 .. 2 */
    int first = (n + 1) / 2;
    ms__batch_seq_t s = {.tokens = ids,
                         .n_tokens = first,
                         .start_pos = 0,
                         .block_table = table,
                         .logits = logits,
                         .all_logits = 1};
    rc = ops->forward(ctx, &s, 1);
    for (int i = first; i < n && rc == 0; i++) {
      ms__batch_seq_t d = {.tokens = ids + i,
                           .n_tokens = 1,
                           .start_pos = i,
                           .block_table = table,
                           .logits = logits + (size_t)i * V};
      rc = ops->forward(ctx, &d, 1);
    }
  }
  if (rc == 0) {
    FILE *f = fopen(argv[4], "wb");
    if (!f || fwrite(logits, sizeof(float) * V, (size_t)n, f) != (size_t)n)
      rc = -1;
    if (f && fclose(f) != 0)
      rc = -1;
    if (rc != 0)
      fprintf(stderr, "engine_gpu_dump: cannot write %s\n", argv[4]);
    else
      printf("rows %d vocab %zu\n", n, V);
  } else {
    fprintf(stderr, "engine_gpu_dump: %s\n", memsleep_last_error());
  }
  free(logits);
  free(table);
  if (ctx)
    ops->destroy(ctx);
  ms__kv_destroy(&kv);
  ms__model_free(&m);
  return rc == 0 ? 0 : 1;
}
