/*
 * dump_logits.c - the engine's logits for every position of a prompt, on a
 * device of choice, for the reference checks: tests/engine/ref_forward.py
 * (numpy, CPU) and tests/gpu/hf_compare.py (transformers, CPU and GPU).
 *
 * Usage: dump_logits [--device DEVICE] [--out FILE] MODEL_DIR ID,ID,...
 *
 * Loads the model through ms__model_load (tag "weights") on DEVICE ("cpu",
 * the default: float32 weights and the CPU backend; "cuda:N": bfloat16
 * weights and the CUDA backend, only in a build with the CUDA engine) and
 * runs the prompt over a paged KV cache whose block table is deliberately
 * out of order: the first half of the prompt in one prefill pass, the rest
 * one decode token at a time, so both paths and the paged reads are
 * checked.
 *
 * Without --out, prints one line per position: the logits separated by
 * spaces, with 9 significant digits. With --out, writes them to FILE as raw
 * float32 (host byte order), one row of vocab_size values per position,
 * and prints "rows N vocab V".
 *
 * Exit status: 0 done, 1 failed, 2 bad arguments, 77 DEVICE cannot be used
 * here (a build without the CUDA engine, no driver, no such GPU).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/compute.h"
#include "engine/device.h"
#include "engine/kvcache.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define PROG    "dump_logits"
#define MAX_IDS 4096

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2, EXIT_SKIP = 77 };

static void usage(FILE *to) {
  fprintf(to, "usage: " PROG " [--device cpu|cuda:N] [--out FILE] MODEL_DIR ID,ID,...\n");
}

/* Parses "ID,ID,..." (commas or spaces) into ids; returns how many, or -1
 * for anything that is not a list of 1 .. MAX_IDS non-negative integers. */
static int parse_ids(const char *s, int *ids) {
  int n = 0;
  const char *p = s;
  while (*p) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 0 || v > 0x7fffffffL || n == MAX_IDS)
      return -1;
    ids[n++] = (int)v;
    p = end;
    while (*p == ',' || *p == ' ')
      p++;
  }
  return n > 0 ? n : -1;
}

/* Writes rows x vocab float32s to path; prints "rows N vocab V". */
static int write_raw(const char *path, const float *logits, int rows, size_t vocab) {
  FILE *f = fopen(path, "wb");
  int rc = f && fwrite(logits, sizeof(float) * vocab, (size_t)rows, f) == (size_t)rows ? 0 : -1;
  if (f && fclose(f) != 0)
    rc = -1;
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot write %zu bytes to %s\n", sizeof(float) * vocab * (size_t)rows,
            path);
    return -1;
  }
  printf("rows %d vocab %zu\n", rows, vocab);
  return 0;
}

/* Prints rows x vocab logits as text, one row per line. */
static void print_text(const float *logits, int rows, size_t vocab) {
  for (int i = 0; i < rows; i++) {
    const float *row = logits + (size_t)i * vocab;
    for (size_t v = 0; v < vocab; v++)
      printf(v ? " %.9g" : "%.9g", (double)row[v]);
    printf("\n");
  }
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {
      {"device", required_argument, NULL, 'd'},
      {"out", required_argument, NULL, 'o'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  const char *device_text = "cpu", *out = NULL;
  int c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "+", longopts, NULL)) != -1) {
    switch (c) {
    case 'd':
      device_text = optarg;
      break;
    case 'o':
      out = optarg;
      break;
    case 'h':
      usage(stdout);
      return EXIT_OK;
    default:
      fprintf(stderr, PROG ": unknown option or missing value: %s\n", argv[optind - 1]);
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (argc - optind != 2) {
    usage(stderr);
    return EXIT_USAGE;
  }
  const char *model_dir = argv[optind], *id_text = argv[optind + 1];
  static int ids[MAX_IDS];
  int n = parse_ids(id_text, ids);
  if (n < 0) {
    fprintf(stderr, PROG ": \"%s\" is not a list of 1 to %d token ids\n", id_text, MAX_IDS);
    return EXIT_USAGE;
  }
  int device;
  if (ms__device_parse(device_text, &device) != 0) {
    fprintf(stderr, PROG ": %s\n", memsleep_last_error());
    return EXIT_USAGE;
  }
  if (ms__device_check(device) != 0) {
    fprintf(stderr, PROG ": skipped: %s\n", memsleep_last_error());
    return EXIT_SKIP;
  }
  const ms__compute_ops_t *ops = ms__compute_for(device);
  if (!ops) {
    fprintf(stderr, PROG ": skipped: device %s: this build has no compute backend for it\n",
            device_text);
    return EXIT_SKIP;
  }

  ms__model_t m;
  memset(&m, 0, sizeof m);
  if (ms__model_load(model_dir, "weights", MEMSLEEP_BACKUP, device, NULL, NULL, &m) != 0) {
    fprintf(stderr, PROG ": %s\n", memsleep_last_error());
    return EXIT_FAIL;
  }
  const ms__model_config_t *cfg = &m.cfg;
  const size_t V = (size_t)cfg->vocab_size;
  for (int i = 0; i < n; i++)
    if (ids[i] >= cfg->vocab_size) {
      fprintf(stderr, PROG ": token id %d (at %d) is outside the vocabulary of %s (%d)\n", ids[i],
              i, model_dir, cfg->vocab_size);
      ms__model_free(&m);
      return EXIT_USAGE;
    }
  const int bt = 4;
  size_t nblocks = (size_t)(n + bt - 1) / bt;
  ms__kv_cache_t kv;
  memset(&kv, 0, sizeof kv);
  void *ctx = NULL;
  int rc = ms__kv_create(&kv, cfg->num_layers, cfg->num_kv_heads * cfg->head_dim, bt, nblocks + 3,
                         device);
  if (rc == 0)
    rc = ops->create(&m, &kv.layout, 0, n, n, &ctx);
  float *logits = malloc(sizeof(float) * (size_t)n * V);
  uint32_t *table = malloc(sizeof(uint32_t) * nblocks);
  if (rc == 0 && (!logits || !table)) {
    fprintf(stderr, PROG ": out of memory for %d rows of %zu logits\n", n, V);
    rc = -1;
  } else if (rc != 0) {
    fprintf(stderr, PROG ": %s\n", memsleep_last_error());
  }
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
    if (rc != 0)
      fprintf(stderr, PROG ": %s\n", memsleep_last_error());
  }
  if (rc == 0 && out)
    rc = write_raw(out, logits, n, V);
  else if (rc == 0)
    print_text(logits, n, V);
  free(logits);
  free(table);
  ops->destroy(ctx);
  ms__kv_destroy(&kv);
  ms__model_free(&m);
  return rc == 0 ? EXIT_OK : EXIT_FAIL;
}
