/*
 * main.c - memsleep-serve: command line, start-up and clean shutdown.
 *
 * Loads the model into the engine (a progress line while the weights load),
 * the tokenizer if the model directory has one, and serves the HTTP API
 * (http.c, routes*.c) on 127.0.0.1 unless told otherwise, with the
 * sleep/wake controller (controller.c) unless --disable-memory-saver. SIGINT or
 * SIGTERM stop it cleanly: new requests are refused, running ones are
 * cancelled and answered, connections close, then the engine frees its
 * memory. Exit status: 0 after a clean stop, 1 when start-up failed, 2 for
 * a bad command line.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <memsleep/memsleep.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/cli_args.h"
#include "server/controller.h"
#include "server/http.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: memsleep-serve --model DIR [options]\n"
          "\n"
          "Serves a Llama-family model (Hugging Face directory: config.json, *.safetensors,\n"
          "tokenizer.json if text input is wanted) over HTTP: POST /generate (SGLang),\n"
          "POST /v1/completions (OpenAI), GET /health, /health_generate, /get_server_info,\n"
          "/metrics, POST /flush_cache, and the sleep/wake control plane: POST\n"
          "/release_memory_occupation, /resume_memory_occupation, /pause_generation,\n"
          "/continue_generation, /update_weights_from_disk, /sleep, /wake_up, GET\n"
          "/is_sleeping. See docs/http-api.md and docs/control-plane.md.\n"
          "\n"
          "  --model DIR              the model directory (required)\n"
          "  --host ADDR              address to bind (default 127.0.0.1; 0.0.0.0 exposes\n"
          "                           the server to the network: there is no authentication)\n"
          "  --port N                 port (default 30000; 0 picks a free one, printed)\n"
          "  --served-model-name S    model name in OpenAI answers (default: DIR)\n"
          "  --threads N              compute threads (default 0: one per core)\n"
          "  --max-batch N            requests running together (default 32)\n"
          "  --max-queue N            requests waiting at most; more get 503 (default 256)\n"
          "  --max-context N          prompt + new tokens at most (default: the model's)\n"
          "  --kv-block-tokens N      tokens per KV cache block (default 16)\n"
          "  --kv-blocks N            KV cache blocks (default: max-batch full contexts)\n"
          "  --no-prefix-cache        do not reuse the KV of identical prompt prefixes\n"
          "  --max-body-bytes N       largest request body; larger get 413 (default %zu)\n"
          "  --max-connections N      open connections at most (default 1024)\n"
          "  --timeout S              idle connection timeout in seconds (default 120)\n"
          "  --disable-memory-saver   refuse release/resume_memory_occupation (and /sleep,\n"
          "                           /wake_up) with an error: memory stays resident\n"
          "  --help                   this text\n"
          "  --version                the version\n"
          "\n"
          "Stop it with SIGINT (Ctrl-C) or SIGTERM.\n",
          MS__DEFAULT_MAX_BODY_BYTES);
}

/* The weight-loading progress line: rewritten in place on a terminal, a
 * line per quarter otherwise. */
static void on_progress(size_t done, size_t total, void *user) {
  int *last = user;
  int pct = total ? (int)(done * 100 / total) : 100;
  int tty = isatty(STDERR_FILENO);
  if (!tty && pct / 25 == *last / 25 && pct != 100)
    return;
  if (pct == *last)
    return;
  *last = pct;
  fprintf(stderr, "%sloading weights: %3d%% (%.1f of %.1f MiB)%s", tty ? "\r" : "", pct,
          (double)done / 1048576.0, (double)total / 1048576.0, tty && pct < 100 ? "" : "\n");
  fflush(stderr);
}

int main(int argc, char **argv) {
  ms__server_t srv;
  memset(&srv, 0, sizeof srv);
  ms__server_options_t *o = &srv.opt;
  o->host = "127.0.0.1";
  o->port = 30000;
  o->max_body_bytes = MS__DEFAULT_MAX_BODY_BYTES;
  o->max_batch = 32;
  o->max_queue = 256;
  o->prefix_cache = 1;
  o->connection_limit = 1024;
  o->timeout_s = 120;
  o->memory_saver = 1;

  enum {
    O_HOST = 256,
    O_PORT,
    O_NAME,
    O_THREADS,
    O_BATCH,
    O_QUEUE,
    O_CTX,
    O_KVT,
    O_KVB,
    O_NOPREFIX,
    O_BODY,
    O_CONN,
    O_TIMEOUT,
    O_NOSAVER,
    O_VERSION
  };
  static const struct option longopts[] = {{"model", required_argument, NULL, 'm'},
                                           {"host", required_argument, NULL, O_HOST},
                                           {"port", required_argument, NULL, O_PORT},
                                           {"served-model-name", required_argument, NULL, O_NAME},
                                           {"threads", required_argument, NULL, O_THREADS},
                                           {"max-batch", required_argument, NULL, O_BATCH},
                                           {"max-queue", required_argument, NULL, O_QUEUE},
                                           {"max-context", required_argument, NULL, O_CTX},
                                           {"kv-block-tokens", required_argument, NULL, O_KVT},
                                           {"kv-blocks", required_argument, NULL, O_KVB},
                                           {"no-prefix-cache", no_argument, NULL, O_NOPREFIX},
                                           {"max-body-bytes", required_argument, NULL, O_BODY},
                                           {"max-connections", required_argument, NULL, O_CONN},
                                           {"timeout", required_argument, NULL, O_TIMEOUT},
                                           {"disable-memory-saver", no_argument, NULL, O_NOSAVER},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, O_VERSION},
                                           {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1) {
    switch (c) {
    case 'm':
      o->model_dir = optarg;
      break;
    case O_HOST:
      o->host = optarg;
      break;
    case O_PORT:
      o->port = (int)ms__cli_num("memsleep-serve", "port", optarg, 0, 65535);
      break;
    case O_NAME:
      o->served_model_name = optarg;
      break;
    case O_THREADS:
      o->threads = (int)ms__cli_num("memsleep-serve", "threads", optarg, 0, 1024);
      break;
    case O_BATCH:
      o->max_batch = (int)ms__cli_num("memsleep-serve", "max-batch", optarg, 1, 4096);
      break;
    case O_QUEUE:
      o->max_queue = (size_t)ms__cli_num("memsleep-serve", "max-queue", optarg, 1, 1000000);
      break;
    case O_CTX:
      o->max_context = (int)ms__cli_num("memsleep-serve", "max-context", optarg, 2, 1 << 24);
      break;
    case O_KVT:
      o->kv_block_tokens = (int)ms__cli_num("memsleep-serve", "kv-block-tokens", optarg, 1, 4096);
      break;
    case O_KVB:
      o->kv_blocks = (size_t)ms__cli_num("memsleep-serve", "kv-blocks", optarg, 1, 1LL << 32);
      break;
    case O_NOPREFIX:
      o->prefix_cache = 0;
      break;
    case O_BODY:
      o->max_body_bytes =
          (size_t)ms__cli_num("memsleep-serve", "max-body-bytes", optarg, 64, 1LL << 32);
      break;
    case O_CONN:
      o->connection_limit =
          (unsigned)ms__cli_num("memsleep-serve", "max-connections", optarg, 1, 100000);
      break;
    case O_TIMEOUT:
      o->timeout_s = (unsigned)ms__cli_num("memsleep-serve", "timeout", optarg, 1, 86400);
      break;
    case O_NOSAVER:
      o->memory_saver = 0;
      break;
    case 'h':
      usage(stdout);
      return 0;
    case O_VERSION:
      printf("memsleep-serve %s\n", MS__SERVER_VERSION);
      return 0;
    default:
      fprintf(stderr, "memsleep-serve: see --help\n");
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "memsleep-serve: unexpected argument '%s' (see --help)\n", argv[optind]);
    return 2;
  }
  if (!o->model_dir) {
    fprintf(stderr, "memsleep-serve: --model DIR is required (see --help)\n");
    return 2;
  }
  if (!o->served_model_name)
    o->served_model_name = o->model_dir;

  /* One malloc arena and fixed thresholds (rule 13: a release gives
   * cached heap back). malloc_trim(0) returns the free pages inside every
   * arena but trims only the main arena's top, and a connection thread's
   * own arena collects what it frees (a parsed body: many small blocks)
   * at its top, out of reach. With one arena, everything freed is in
   * reach; fixed thresholds (glibc raises them once a large block is
   * freed) keep large blocks in their own mappings, unmapped on free. The
   * handlers allocate little, so one arena costs no throughput. */
  mallopt(M_ARENA_MAX, 1);
  mallopt(M_MMAP_THRESHOLD, 256 * 1024);
  mallopt(M_TRIM_THRESHOLD, 1024 * 1024);

  /* Every thread started from here on inherits this mask: the signals are
   * taken by sigwait below, never by a handler in another thread. */
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  signal(SIGPIPE, SIG_IGN);

  int last_pct = -1;
  ms__engine_options_t eo;
  memset(&eo, 0, sizeof eo);
  eo.model_dir = o->model_dir;
  eo.device = MEMSLEEP_HOST;
  eo.threads = o->threads;
  eo.kv_block_tokens = o->kv_block_tokens;
  eo.kv_blocks = o->kv_blocks;
  eo.max_batch = o->max_batch;
  eo.max_queue = o->max_queue;
  eo.max_context = o->max_context;
  eo.prefix_cache = o->prefix_cache;
  eo.progress = on_progress;
  eo.progress_user = &last_pct;
  fprintf(stderr, "memsleep-serve: loading %s\n", o->model_dir);
  int rc = ms__engine_create(&eo, &srv.engine);
  if (rc != 0) {
    fprintf(stderr, "memsleep-serve: cannot load the model in %s: %s: %s\n", o->model_dir,
            memsleep_strerror(rc), memsleep_last_error());
    return 1;
  }
  const ms__model_config_t *cfg = &ms__engine_model(srv.engine)->cfg;
  srv.vocab_size = cfg->vocab_size;
  srv.max_context = o->max_context > 0 ? o->max_context : cfg->max_position;

  char tok_path[PATH_MAX];
  struct stat sb;
  snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", o->model_dir);
  if (stat(tok_path, &sb) == 0) {
    rc = ms__tokenizer_load(tok_path, &srv.tok);
    if (rc != 0) {
      fprintf(stderr, "memsleep-serve: cannot load %s: %s\n", tok_path, memsleep_last_error());
      ms__engine_destroy(srv.engine);
      return 1;
    }
  } else {
    fprintf(stderr, "memsleep-serve: %s has no tokenizer.json: only input_ids are accepted\n",
            o->model_dir);
  }

  srv.ctl = ms__ctl_create(srv.engine, o->memory_saver, &srv.stopping);
  if (!srv.ctl) {
    fprintf(stderr, "memsleep-serve: out of memory for the sleep/wake controller\n");
    ms__tokenizer_free(srv.tok);
    ms__engine_destroy(srv.engine);
    return 1;
  }
  ms__metrics_init(&srv.metrics);
  srv.started = time(NULL);
  char err[512];
  struct MHD_Daemon *d = ms__http_start(&srv, err, sizeof err);
  if (!d) {
    fprintf(stderr, "memsleep-serve: %s\n", err);
    ms__tokenizer_free(srv.tok);
    ms__engine_destroy(srv.engine);
    ms__ctl_destroy(srv.ctl);
    ms__metrics_destroy(&srv.metrics);
    return 1;
  }
  int v6 = strchr(o->host, ':') != NULL;
  printf("memsleep-serve: listening on http://%s%s%s:%d (%s, %d layers, vocab %d, context %d)\n",
         v6 ? "[" : "", o->host, v6 ? "]" : "", srv.port, cfg->arch_name, cfg->num_layers,
         cfg->vocab_size, srv.max_context);
  fflush(stdout);

  int sig = 0;
  sigwait(&sigs, &sig);
  fprintf(stderr, "memsleep-serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  /* Waits notice this within 100 ms and cancel their requests, whose
   * clients get a last event or answer; the daemon then joins every
   * connection thread, so nothing touches the engine after ms__http_stop
   * returns. */
  atomic_store(&srv.stopping, 1);
  ms__http_stop(&srv, d, 10000);
  ms__engine_destroy(srv.engine);
  ms__ctl_destroy(srv.ctl);
  ms__tokenizer_free(srv.tok);
  ms__metrics_destroy(&srv.metrics);
  fprintf(stderr, "memsleep-serve: stopped\n");
  return 0;
}
