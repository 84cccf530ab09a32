/*
 * main.c - memsleep-serve: command line, start-up and clean shutdown.
 *
 * Loads the model into the engine (a progress line while the weights load),
 * the tokenizer if the model directory has one, and serves the HTTP API
 * (http.c, routes*.c) on 127.0.0.1 unless told otherwise, with the
 * sleep/wake controller (controller.c) unless --disable-memory-saver. The
 * keys (--api-key, --admin-api-key, or MEMSLEEP_API_KEY and
 * MEMSLEEP_ADMIN_API_KEY), the directories updates may load from and the
 * request-read deadline are docs/security.md's access control. SIGINT or
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
#include "common/exposure.h"
#include "engine/device.h"
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
          "  --host ADDR              address to bind (default 127.0.0.1; another address\n"
          "                           exposes the server to the network: set keys)\n"
          "  --port N                 port (default 30000; 0 picks a free one, printed)\n"
          "  --served-model-name S    model name in OpenAI answers (default: DIR)\n"
          "  --device D               where the model runs: cpu (float32, default) or cuda:N\n"
          "                           (bfloat16 on CUDA device N; needs a build with the CUDA\n"
          "                           engine, a driver and the GPU)\n"
          "  --threads N              compute threads of the CPU engine (default 0: one per\n"
          "                           core)\n"
          "  --max-batch N            requests running together (default 32)\n"
          "  --max-queue N            requests waiting at most; more get 503 (default 256)\n"
          "  --max-context N          prompt + new tokens at most (default: the model's)\n"
          "  --kv-block-tokens N      tokens per KV cache block (default 16)\n"
          "  --kv-blocks N            KV cache blocks (default: max-batch full contexts)\n"
          "  --no-prefix-cache        do not reuse the KV of identical prompt prefixes\n"
          "  --cuda-graphs on|off     CUDA device: replay decode steps as CUDA graphs (tag\n"
          "                           cuda_graph; default on)\n"
          "  --max-body-bytes N       largest request body; larger get 413 (default %zu)\n"
          "  --max-connections N      open connections at most (default 1024)\n"
          "  --timeout S              idle connection timeout in seconds (default 120)\n"
          "  --request-timeout S      a request must arrive whole (headers and body) within\n"
          "                           S seconds of the connection opening or of the previous\n"
          "                           answer on it; later, the connection is closed (default %d)\n"
          "  --disable-memory-saver   refuse release/resume_memory_occupation (and /sleep,\n"
          "                           /wake_up) with an error: memory stays resident\n"
          "\n"
          "access control (docs/security.md):\n"
          "  --api-key KEY            generation and the read-only endpoints need\n"
          "                           \"Authorization: Bearer KEY\" (default: $MEMSLEEP_API_KEY;\n"
          "                           prefer the variable: a command line shows in ps)\n"
          "  --admin-api-key KEY      the endpoints that change the server's state (release,\n"
          "                           resume, pause, continue, flush_cache, update weights,\n"
          "                           sleep, wake_up) need this key (default:\n"
          "                           $MEMSLEEP_ADMIN_API_KEY; without it they need the API\n"
          "                           key). The admin key is accepted wherever the API key is.\n"
          "                           GET /health is always open.\n"
          "  --allowed-model-dir DIR  /update_weights_from_disk may load from DIR and the\n"
          "                           directories under it; repeat for more (default: only\n"
          "                           the --model directory)\n"
          "  --help                   this text\n"
          "  --version                the version\n"
          "\n"
          "Stop it with SIGINT (Ctrl-C) or SIGTERM.\n",
          MS__DEFAULT_MAX_BODY_BYTES, MS__DEFAULT_REQUEST_TIMEOUT_S);
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

/* Frees what start-up made of srv (whatever is set) and returns status. */
static int stop_all(ms__server_t *srv, int status) {
  ms__engine_destroy(srv->engine);
  ms__ctl_destroy(srv->ctl);
  ms__tokenizer_free(srv->tok);
  ms__conn_guard_destroy(srv->guard);
  ms__metrics_destroy(&srv->metrics);
  ms__path_roots_free(&srv->opt.model_roots);
  return status;
}

int main(int argc, char **argv) {
  ms__server_t srv;
  memset(&srv, 0, sizeof srv);
  ms__metrics_init(&srv.metrics);
  ms__server_options_t *o = &srv.opt;
  o->host = "127.0.0.1";
  o->port = 30000;
  o->max_body_bytes = MS__DEFAULT_MAX_BODY_BYTES;
  o->max_batch = 32;
  o->max_queue = 256;
  o->prefix_cache = 1;
  o->connection_limit = 1024;
  o->timeout_s = 120;
  o->request_timeout_s = MS__DEFAULT_REQUEST_TIMEOUT_S;
  o->memory_saver = 1;
  const char *api_key_arg = NULL, *admin_key_arg = NULL;
  const char *allowed_dirs[64];
  size_t n_allowed = 0;
  int device = MEMSLEEP_HOST;

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
    O_REQ_TIMEOUT,
    O_API_KEY,
    O_ADMIN_KEY,
    O_ALLOWED_DIR,
    O_DEVICE,
    O_GRAPHS,
    O_VERSION
  };
  static const struct option longopts[] = {
      {"model", required_argument, NULL, 'm'},
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
      {"request-timeout", required_argument, NULL, O_REQ_TIMEOUT},
      {"api-key", required_argument, NULL, O_API_KEY},
      {"admin-api-key", required_argument, NULL, O_ADMIN_KEY},
      {"allowed-model-dir", required_argument, NULL, O_ALLOWED_DIR},
      {"device", required_argument, NULL, O_DEVICE},
      {"cuda-graphs", required_argument, NULL, O_GRAPHS},
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
    case O_GRAPHS:
      if (strcmp(optarg, "on") != 0 && strcmp(optarg, "off") != 0) {
        fprintf(stderr, "memsleep-serve: --cuda-graphs: \"%s\" is not on or off\n", optarg);
        return 2;
      }
      o->no_cuda_graphs = strcmp(optarg, "off") == 0;
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
    case O_REQ_TIMEOUT:
      o->request_timeout_s =
          (unsigned)ms__cli_num("memsleep-serve", "request-timeout", optarg, 1, 86400);
      break;
    case O_API_KEY:
      api_key_arg = optarg;
      break;
    case O_ADMIN_KEY:
      admin_key_arg = optarg;
      break;
    case O_ALLOWED_DIR:
      if (n_allowed == sizeof allowed_dirs / sizeof allowed_dirs[0]) {
        fprintf(stderr, "memsleep-serve: more than %zu --allowed-model-dir\n", n_allowed);
        return 2;
      }
      allowed_dirs[n_allowed++] = optarg;
      break;
    case O_DEVICE:
      if (ms__device_parse(optarg, &device) != 0) {
        fprintf(stderr, "memsleep-serve: --device: %s\n", memsleep_last_error());
        return 2;
      }
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
  o->keys.api = ms__cli_key("memsleep-serve", "api-key", api_key_arg, "MEMSLEEP_API_KEY");
  o->keys.admin =
      ms__cli_key("memsleep-serve", "admin-api-key", admin_key_arg, "MEMSLEEP_ADMIN_API_KEY");
  if (o->keys.api && o->keys.admin && strcmp(o->keys.api, o->keys.admin) == 0)
    fprintf(stderr, "memsleep-serve: warning: the API key and the admin key are the same: every "
                    "client that may generate may also release memory and load weights\n");
  char err[PATH_MAX + 128];
  for (size_t i = 0; i < n_allowed; i++) {
    if (ms__path_roots_add(&o->model_roots, allowed_dirs[i], err, sizeof err) != 0) {
      fprintf(stderr, "memsleep-serve: --allowed-model-dir: %s\n", err);
      return stop_all(&srv, 2);
    }
  }

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

  /* A device this build or machine cannot use is said plainly, before
   * anything is loaded. */
  char dev_name[32];
  int rc = ms__device_check(device);
  if (rc != 0) {
    fprintf(stderr, "memsleep-serve: %s\n", memsleep_last_error());
    return stop_all(&srv, 1);
  }

  int last_pct = -1;
  ms__engine_options_t eo;
  memset(&eo, 0, sizeof eo);
  eo.model_dir = o->model_dir;
  eo.device = device;
  eo.threads = o->threads;
  eo.kv_block_tokens = o->kv_block_tokens;
  eo.kv_blocks = o->kv_blocks;
  eo.max_batch = o->max_batch;
  eo.max_queue = o->max_queue;
  eo.max_context = o->max_context;
  eo.prefix_cache = o->prefix_cache;
  eo.no_cuda_graphs = o->no_cuda_graphs;
  eo.progress = on_progress;
  eo.progress_user = &last_pct;
  fprintf(stderr, "memsleep-serve: loading %s on %s\n", o->model_dir,
          ms__device_name(device, dev_name, sizeof dev_name));
  rc = ms__engine_create(&eo, &srv.engine);
  if (rc != 0) {
    fprintf(stderr, "memsleep-serve: cannot load the model in %s: %s: %s\n", o->model_dir,
            memsleep_strerror(rc), memsleep_last_error());
    return stop_all(&srv, 1);
  }
  /* Without --allowed-model-dir, updates load only from the model's own
   * directory (now known to exist). */
  if (n_allowed == 0 && ms__path_roots_add(&o->model_roots, o->model_dir, err, sizeof err) != 0) {
    fprintf(stderr, "memsleep-serve: %s\n", err);
    return stop_all(&srv, 1);
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
      return stop_all(&srv, 1);
    }
  } else {
    fprintf(stderr, "memsleep-serve: %s has no tokenizer.json: only input_ids are accepted\n",
            o->model_dir);
  }

  srv.ctl = ms__ctl_create(srv.engine, o->memory_saver, &srv.stopping);
  if (!srv.ctl) {
    fprintf(stderr, "memsleep-serve: out of memory for the sleep/wake controller\n");
    return stop_all(&srv, 1);
  }
  srv.guard =
      ms__conn_guard_create("memsleep-serve", "--request-timeout", o->request_timeout_s * 1000u);
  if (!srv.guard) {
    fprintf(stderr, "memsleep-serve: cannot start the request-timeout watchdog\n");
    return stop_all(&srv, 1);
  }
  srv.started = time(NULL);
  struct MHD_Daemon *d = ms__http_start(&srv, err, sizeof err);
  if (!d) {
    fprintf(stderr, "memsleep-serve: %s\n", err);
    return stop_all(&srv, 1);
  }
  ms__warn_exposure("memsleep-serve", o->host, o->keys.api != NULL, o->keys.admin != NULL,
                    "--api-key (or MEMSLEEP_API_KEY)");
  int v6 = strchr(o->host, ':') != NULL;
  printf("memsleep-serve: listening on http://%s%s%s:%d (%s, %d layers, vocab %d, context %d, "
         "%s)\n",
         v6 ? "[" : "", o->host, v6 ? "]" : "", srv.port, cfg->arch_name, cfg->num_layers,
         cfg->vocab_size, srv.max_context, dev_name);
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
  stop_all(&srv, 0);
  fprintf(stderr, "memsleep-serve: stopped\n");
  return 0;
}
