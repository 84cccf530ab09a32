/*
 * memsleep-mkmodel.c - writes a small Llama-family model with random weights.
 *
 * Tests and the demo need a real model directory on any machine, without
 * downloading one: this tool writes config.json, the weights as safetensors
 * (one file, or shards with model.safetensors.index.json; f32, f16 or bf16)
 * with seeded, deterministic random values, and a tokenizer.json with a
 * byte-level vocabulary (256 bytes, 253 merges, 3 special tokens: 512 ids;
 * "<|endoftext|>" is the EOS). memsleep-serve loads the result like any
 * Hugging Face checkpoint. The default size generates well over 50 tokens/s
 * on two cores.
 *
 * --vocab N gives the model a larger vocabulary than its tokenizer, as real
 * checkpoints do (Qwen2-0.5B: 151936 embedding rows, fewer tokenizer ids):
 * the embedding and output layers get N rows, the tokenizer keeps its 512
 * ids, and rows 512 .. N-1 are ordinary random rows the tokenizer never
 * produces. The engine may still sample them; the server decodes them to
 * nothing (docs/engine.md).
 *
 * Exit status: 0 done, 1 failed (the message says why), 2 bad arguments.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine/model.h"
#include "engine/tokenizer.h"
#include "memsleep/memsleep.h"

#define PROG "memsleep-mkmodel"

enum { EXIT_OK = 0, EXIT_FAIL = 1, EXIT_USAGE = 2 };

/* The tokenizer written beside the weights. */
#define N_MERGES 253
static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
#define N_SPECIALS    (sizeof specials / sizeof specials[0])
#define TOKENIZER_IDS (256 + N_MERGES + (int)N_SPECIALS) /* 512 */
/* --vocab at most: 4.2 M rows, well past any real vocabulary (Qwen2's
 * 151936, Gemma's 262144); more is a typo, not a model. */
#define VOCAB_MAX (1 << 22)

static void usage(FILE *to) {
  fprintf(to, "usage: " PROG " --out DIR [--arch llama|qwen2|mistral] [--layers N] [--hidden N]\n"
              "       [--heads N] [--kv-heads N] [--intermediate N] [--max-position N]\n"
              "       [--dtype f32|f16|bf16] [--seed N] [--shards N] [--tie] [--rope-theta X]\n"
              "       [--vocab N] [--force]\n"
              "\n"
              "Writes a Hugging Face style model directory with seeded random weights:\n"
              "config.json, model.safetensors (or N shards and model.safetensors.index.json)\n"
              "and a byte-level tokenizer.json (vocabulary of 512).\n"
              "\n"
              "  --out DIR          directory to write (created; must be empty unless --force)\n"
              "  --arch A           llama (default), qwen2 (q/k/v biases, tied) or mistral\n"
              "  --layers N         decoder layers (default 4)\n"
              "  --hidden N         hidden size (default 256)\n"
              "  --heads N          attention heads (default 8)\n"
              "  --kv-heads N       key/value heads, grouped-query attention (default 4)\n"
              "  --intermediate N   SwiGLU width (default 688)\n"
              "  --max-position N   context length (default 2048)\n"
              "  --dtype D          f32 (default), f16 or bf16 on disk\n"
              "  --seed N           random seed (default 1)\n"
              "  --shards N         weight files (default 1)\n"
              "  --tie              share the embeddings with the output layer (qwen2: default)\n"
              "  --rope-theta X     RoPE base (default 10000)\n"
              "  --vocab N          the model's vocabulary: embedding and output rows, config\n"
              "                     vocab_size (default 512, the tokenizer's; 512 .. 4194304).\n"
              "                     The tokenizer keeps its 512 ids: rows 512 .. N-1 are\n"
              "                     random rows it never produces (as Qwen2's 151936)\n"
              "  --force            write into a non-empty directory (replaces model files)\n"
              "  --help             this text\n");
}

/* Parses a whole-string integer in [lo, hi]; 0 on success. */
static int parse_int(const char *opt, const char *s, long long lo, long long hi, long long *out) {
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi) {
    fprintf(stderr, PROG ": %s: \"%s\" is not an integer in [%lld, %lld]\n", opt, s, lo, hi);
    return -1;
  }
  *out = v;
  return 0;
}

/* Creates dir and its missing parents (mode 0755). */
static int make_dirs(const char *dir) {
  char buf[4096];
  if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/')
      continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
      return -1;
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST)
    return -1;
  return 0;
}

/* 1 if name is a file this tool writes (so --force may replace it). */
static int is_model_file(const char *name) {
  unsigned a, b;
  char tail[32];
  if (strcmp(name, "config.json") == 0 || strcmp(name, "tokenizer.json") == 0 ||
      strcmp(name, "model.safetensors") == 0 || strcmp(name, "model.safetensors.index.json") == 0)
    return 1;
  return sscanf(name, "model-%5u-of-%5u.%31s", &a, &b, tail) == 3 &&
         strcmp(tail, "safetensors") == 0;
}

/* Readies dir: creates it, or checks it is empty, or (force) removes the
 * model files a previous run left (stale shards would otherwise be read). */
static int prepare_dir(const char *dir, int force) {
  if (make_dirs(dir) != 0) {
    fprintf(stderr, PROG ": cannot create %s: %s\n", dir, strerror(errno));
    return -1;
  }
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, PROG ": cannot open %s: %s\n", dir, strerror(errno));
    return -1;
  }
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && rc == 0) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    if (!force) {
      fprintf(stderr, PROG ": %s is not empty (it holds %s): use --force to write into it\n", dir,
              e->d_name);
      rc = -1;
    } else if (is_model_file(e->d_name)) {
      char path[4400];
      snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
      if (unlink(path) != 0) {
        fprintf(stderr, PROG ": cannot remove %s: %s\n", path, strerror(errno));
        rc = -1;
      }
    }
  }
  closedir(d);
  return rc;
}

/* Progress: a line rewritten in place on a terminal, else one line at the
 * end. */
static void progress(size_t done_bytes, size_t total_bytes, void *user) {
  (void)user;
  if (total_bytes == 0)
    return;
  double done_m = (double)done_bytes / 4e6, total_m = (double)total_bytes / 4e6; /* float32s */
  if (!isatty(STDERR_FILENO)) { /* a log: one line, when done */
    if (done_bytes >= total_bytes)
      fprintf(stderr, PROG ": weights written: %.2f M values\n", total_m);
    return;
  }
  fprintf(stderr, "\r" PROG ": writing weights %.2f / %.2f M values (%3.0f%%)", done_m, total_m,
          100.0 * (double)done_bytes / (double)total_bytes);
  if (done_bytes >= total_bytes)
    fputc('\n', stderr);
}

int main(int argc, char **argv) {
  enum {
    O_ARCH = 256,
    O_LAYERS,
    O_HIDDEN,
    O_HEADS,
    O_KV,
    O_INTER,
    O_MAXPOS,
    O_DTYPE,
    O_SEED,
    O_SHARDS,
    O_TIE,
    O_THETA,
    O_VOCAB,
    O_FORCE,
    O_OUT,
    O_HELP
  };
  static const struct option longopts[] = {
      {"out", required_argument, NULL, O_OUT},
      {"arch", required_argument, NULL, O_ARCH},
      {"layers", required_argument, NULL, O_LAYERS},
      {"hidden", required_argument, NULL, O_HIDDEN},
      {"heads", required_argument, NULL, O_HEADS},
      {"kv-heads", required_argument, NULL, O_KV},
      {"intermediate", required_argument, NULL, O_INTER},
      {"max-position", required_argument, NULL, O_MAXPOS},
      {"dtype", required_argument, NULL, O_DTYPE},
      {"seed", required_argument, NULL, O_SEED},
      {"shards", required_argument, NULL, O_SHARDS},
      {"tie", no_argument, NULL, O_TIE},
      {"rope-theta", required_argument, NULL, O_THETA},
      {"vocab", required_argument, NULL, O_VOCAB},
      {"force", no_argument, NULL, O_FORCE},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0},
  };
  /* Options are collected first: --arch sets defaults the others override. */
  const char *out = NULL, *arch = "llama", *dtype = "f32";
  long long layers = -1, hidden = -1, heads = -1, kv = -1, inter = -1, maxpos = -1, seed = -1,
            shards = -1, vocab = TOKENIZER_IDS;
  double theta = -1;
  int tie = 0, force = 0, c;
  opterr = 0;
  while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
    int bad = 0;
    switch (c) {
    case O_OUT:
      out = optarg;
      break;
    case O_ARCH:
      arch = optarg;
      break;
    case O_DTYPE:
      dtype = optarg;
      break;
    case O_LAYERS:
      bad = parse_int("--layers", optarg, 1, 4096, &layers);
      break;
    case O_HIDDEN:
      bad = parse_int("--hidden", optarg, 2, 1 << 20, &hidden);
      break;
    case O_HEADS:
      bad = parse_int("--heads", optarg, 1, 65536, &heads);
      break;
    case O_KV:
      bad = parse_int("--kv-heads", optarg, 1, 65536, &kv);
      break;
    case O_INTER:
      bad = parse_int("--intermediate", optarg, 1, 1 << 22, &inter);
      break;
    case O_MAXPOS:
      bad = parse_int("--max-position", optarg, 1, 1 << 30, &maxpos);
      break;
    case O_SEED:
      bad = parse_int("--seed", optarg, 0, (long long)(~0ULL >> 1), &seed);
      break;
    case O_SHARDS:
      bad = parse_int("--shards", optarg, 1, 99999, &shards);
      break;
    case O_VOCAB: {
      /* Any whole number parses, so that the message can say what is
       * wrong with it. */
      char *end;
      errno = 0;
      vocab = strtoll(optarg, &end, 10);
      if (errno || end == optarg || *end) {
        fprintf(stderr, PROG ": --vocab: \"%s\" is not a whole number\n", optarg);
        bad = 1;
      } else if (vocab < TOKENIZER_IDS) {
        fprintf(stderr,
                PROG ": --vocab %lld is smaller than the tokenizer's %d ids: the model needs a "
                     "row for every id the tokenizer produces\n",
                vocab, TOKENIZER_IDS);
        bad = 1;
      } else if (vocab > VOCAB_MAX) {
        fprintf(stderr,
                PROG ": --vocab %lld is more than %d rows: no real vocabulary is that large\n",
                vocab, VOCAB_MAX);
        bad = 1;
      }
      break;
    }
    case O_THETA: {
      char *end;
      errno = 0;
      theta = strtod(optarg, &end);
      if (errno || end == optarg || *end || !(theta > 0) || theta > 1e12) {
        fprintf(stderr, PROG ": --rope-theta: \"%s\" is not a positive number\n", optarg);
        bad = 1;
      }
      break;
    }
    case O_TIE:
      tie = 1;
      break;
    case O_FORCE:
      force = 1;
      break;
    case O_HELP:
      usage(stdout);
      return EXIT_OK;
    default:
      fprintf(stderr, PROG ": unknown option or missing value: %s\n", argv[optind - 1]);
      bad = 1;
      break;
    }
    if (bad) {
      usage(stderr);
      return EXIT_USAGE;
    }
  }
  if (optind < argc) {
    fprintf(stderr, PROG ": unexpected argument: %s\n", argv[optind]);
    usage(stderr);
    return EXIT_USAGE;
  }
  if (!out || !*out) {
    fprintf(stderr, PROG ": --out DIR is required\n");
    usage(stderr);
    return EXIT_USAGE;
  }

  ms__arch_t a;
  if (strcmp(arch, "llama") == 0)
    a = MS__ARCH_LLAMA;
  else if (strcmp(arch, "qwen2") == 0)
    a = MS__ARCH_QWEN2;
  else if (strcmp(arch, "mistral") == 0)
    a = MS__ARCH_MISTRAL;
  else {
    fprintf(stderr, PROG ": --arch: \"%s\" is not llama, qwen2 or mistral\n", arch);
    return EXIT_USAGE;
  }
  ms__model_spec_t s;
  ms__model_spec_default(&s, a);
  if (strcmp(dtype, "f32") == 0)
    s.dtype = MS__WDTYPE_F32;
  else if (strcmp(dtype, "f16") == 0)
    s.dtype = MS__WDTYPE_F16;
  else if (strcmp(dtype, "bf16") == 0)
    s.dtype = MS__WDTYPE_BF16;
  else {
    fprintf(stderr, PROG ": --dtype: \"%s\" is not f32, f16 or bf16\n", dtype);
    return EXIT_USAGE;
  }
  if (layers > 0)
    s.num_layers = (int)layers;
  if (hidden > 0)
    s.hidden_size = (int)hidden;
  if (heads > 0)
    s.num_heads = (int)heads;
  if (kv > 0)
    s.num_kv_heads = (int)kv;
  else if (heads > 0 && s.num_heads % s.num_kv_heads != 0)
    s.num_kv_heads = s.num_heads; /* the default 4 does not divide: plain attention */
  if (inter > 0)
    s.intermediate_size = (int)inter;
  if (maxpos > 0)
    s.max_position = (int)maxpos;
  if (seed >= 0)
    s.seed = (unsigned long long)seed;
  if (shards > 0)
    s.shards = (int)shards;
  if (theta > 0)
    s.rope_theta = (float)theta;
  if (tie)
    s.tie_word_embeddings = 1;
  s.vocab_size = (int)vocab;
  s.eos_token_id = 256 + N_MERGES; /* "<|endoftext|>", the first special */
  if (s.hidden_size % s.num_heads != 0 || (s.hidden_size / s.num_heads) % 2 != 0) {
    fprintf(stderr, PROG ": --hidden %d must be --heads %d times an even head size\n",
            s.hidden_size, s.num_heads);
    return EXIT_USAGE;
  }
  if (s.num_heads % s.num_kv_heads != 0) {
    fprintf(stderr, PROG ": --heads %d must be a multiple of --kv-heads %d\n", s.num_heads,
            s.num_kv_heads);
    return EXIT_USAGE;
  }

  if (prepare_dir(out, force) != 0)
    return EXIT_FAIL;
  unsigned long long params = 0, file_bytes = 0;
  int rc = ms__model_write_random(out, &s, progress, NULL, &params, &file_bytes);
  if (rc) {
    fprintf(stderr, PROG ": %s\n", memsleep_last_error());
    return rc == MEMSLEEP_EINVAL ? EXIT_USAGE : EXIT_FAIL;
  }
  char tok[4200];
  snprintf(tok, sizeof tok, "%s/tokenizer.json", out);
  rc = ms__tokenizer_write_bytelevel(tok, N_MERGES, specials, N_SPECIALS);
  if (rc) {
    fprintf(stderr, PROG ": %s\n", memsleep_last_error());
    return EXIT_FAIL;
  }
  printf(PROG ": wrote %s: %s, %d layers, hidden %d, %d heads (%d kv), intermediate %d, vocab "
              "%d, %s%s, %llu params, %.1f MiB in %d file%s\n",
         out, arch, s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.intermediate_size,
         s.vocab_size, dtype, s.tie_word_embeddings ? ", tied" : "", params,
         (double)file_bytes / 1048576.0, s.shards, s.shards > 1 ? "s" : "");
  return EXIT_OK;
}
