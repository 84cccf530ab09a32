/*
 * server.h - the state memsleep-serve shares between its parts.
 *
 * main.c fills the options from the command line, loads the engine and the
 * tokenizer and starts the HTTP daemon (http.c); the route handlers
 * (routes_*.c) reach everything through the ms__server_t they are given.
 * One server per process; its fields are set before the daemon starts and
 * read-only afterwards, except the counters (metrics.c, own lock) and
 * stopping (atomic). The keys and the allowed model directories are
 * docs/security.md's access control.
 */
#ifndef MEMSLEEP_SERVER_SERVER_H
#define MEMSLEEP_SERVER_SERVER_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/auth.h"
#include "common/conn_guard.h"
#include "common/path_guard.h"
#include "engine/engine.h"
#include "engine/tokenizer.h"
#include "server/metrics.h"

typedef struct ms__server_options {
  const char *model_dir;         /* --model: Hugging Face style directory */
  const char *host;              /* --host: address to bind (default 127.0.0.1) */
  int port;                      /* --port (0: any free port, printed at start) */
  const char *served_model_name; /* --served-model-name (default: model_dir) */
  size_t max_body_bytes;         /* --max-body-bytes: larger bodies get 413 */
  int threads;                   /* --threads: compute threads (0: one per core) */
  int kv_block_tokens;           /* --kv-block-tokens (0: engine default) */
  size_t kv_blocks;              /* --kv-blocks (0: engine default) */
  int max_batch;                 /* --max-batch: running requests at most */
  size_t max_queue;              /* --max-queue: waiting requests at most */
  int max_context;               /* --max-context (0: the model's) */
  int prefix_cache;              /* --no-prefix-cache clears it */
  int no_cuda_graphs;            /* --cuda-graphs off */
  unsigned connection_limit;     /* --max-connections */
  unsigned timeout_s;            /* idle connection timeout */
  unsigned request_timeout_s;    /* --request-timeout: a request must arrive whole within it */
  int memory_saver;              /* --disable-memory-saver clears it: release/resume refused */
  ms__auth_keys_t keys;          /* --api-key, --admin-api-key (or their variables) */
  ms__path_roots_t model_roots;  /* --allowed-model-dir (default: the model directory) */
} ms__server_options_t;

struct ms__ctl;

typedef struct ms__server {
  ms__server_options_t opt;
  ms__engine_t *engine;
  struct ms__ctl *ctl;     /* the sleep/wake controller (controller.h) */
  ms__tokenizer_t *tok;    /* NULL: the model has no tokenizer.json */
  int vocab_size;          /* the model's: valid input ids are [0, vocab_size) */
  int max_context;         /* prompt + new tokens at most */
  atomic_int port;         /* the port really bound (set once the daemon runs) */
  time_t started;          /* when the server started (for uptime and "created") */
  atomic_int stopping;     /* set on SIGINT/SIGTERM: waits end, new work is refused */
  atomic_ulong next_rid;   /* request ids handed out */
  atomic_int active_gens;  /* generation requests not yet freed (gen.c) */
  ms__conn_guard_t *guard; /* the request-read deadline (NULL in tests without a daemon) */
  ms__metrics_t metrics;
} ms__server_t;

#define MS__SERVER_VERSION "0.1.0"

/* Default for --max-body-bytes. */
#define MS__DEFAULT_MAX_BODY_BYTES ((size_t)8 << 20)
/* Default for --request-timeout, in seconds. */
#define MS__DEFAULT_REQUEST_TIMEOUT_S 30

/* How memsleep-serve names its keys in 401 answers. */
#define MS__SERVE_AUTH_NAMES                                                                       \
  { "memsleep-serve", "MEMSLEEP_API_KEY", "MEMSLEEP_ADMIN_API_KEY" }

#endif /* MEMSLEEP_SERVER_SERVER_H */
