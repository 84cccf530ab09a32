/*
 * dump_logits.c - prints the engine's logits for every position of a
 * prompt, for the numpy reference check (ref_forward.py).
 *
 * Usage: dump_logits MODEL_DIR ID,ID,...
 *
 * Loads the model through ms__model_load (tag "weights") and runs the CPU
 * compute backend over a paged KV cache whose block table is deliberately
 * out of order: the first half of the prompt in one prefill pass, the rest
 * one decode token at a time, so both paths are checked. Prints one line
 * per position: the logits separated by spaces, with 9 significant digits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/compute.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define MAX_IDS 4096

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s MODEL_DIR ID,ID,...\n", argv[0]);
    return 2;
  }
  static int ids[MAX_IDS];
  int n = 0;
  for (char *p = argv[2]; *p && n < MAX_IDS;) {
    ids[n++] = (int)strtol(p, &p, 10);
    while (*p == ',' || *p == ' ')
      p++;
  }
  if (n == 0) {
    fprintf(stderr, "dump_logits: no token ids\n");
    return 2;
  }
  ms__model_t m;
  memset(&m, 0, sizeof m);
  int rc = ms__model_load(argv[1], "weights", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, &m);
  if (rc != 0) {
    fprintf(stderr, "dump_logits: %s\n", memsleep_last_error());
    return 1;
  }
  const ms__model_config_t *cfg = &m.cfg;
  const int bt = 4;
  size_t nblocks = (size_t)(n + bt - 1) / bt;
  ms__kv_cache_t kv;
  void *ctx = NULL;
  rc = ms__kv_create(&kv, cfg->num_layers, cfg->num_kv_heads * cfg->head_dim, bt, nblocks + 3,
                     MEMSLEEP_HOST);
  if (rc == 0)
    rc = ms__compute_cpu.create(&m, &kv.layout, 0, n, n, &ctx);
  float *logits = malloc(sizeof(float) * (size_t)n * (size_t)cfg->vocab_size);
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
    rc = ms__compute_cpu.forward(ctx, &s, 1);
    for (int i = first; i < n && rc == 0; i++) {
      ms__batch_seq_t d = {.tokens = ids + i,
                           .n_tokens = 1,
                           .start_pos = i,
                           .block_table = table,
                           .logits = logits + (size_t)i * cfg->vocab_size};
      rc = ms__compute_cpu.forward(ctx, &d, 1);
    }
  }
  if (rc != 0)
    fprintf(stderr, "dump_logits: %s\n", memsleep_last_error());
  else
    for (int i = 0; i < n; i++) {
      const float *row = logits + (size_t)i * cfg->vocab_size;
      for (int v = 0; v < cfg->vocab_size; v++)
        printf(v ? " %.9g" : "%.9g", (double)row[v]);
      printf("\n");
    }
  free(logits);
  free(table);
  ms__compute_cpu.destroy(ctx);
  ms__kv_destroy(&kv);
  ms__model_free(&m);
  return rc == 0 ? 0 : 1;
}
