/*
 * main.c - memsleep-lb: command line, start-up and clean shutdown.
 *
 * Reads the workers (--worker URL, repeatable, and/or --workers-file) and
 * the keys (its own, the workers'; from options or the environment),
 * checks the workers' health once, then serves on 127.0.0.1 unless told
 * otherwise and prints "memsleep-lb: listening on http://HOST:PORT (N
 * workers)" as its first line on stdout. SIGINT or SIGTERM stop it: waits
 * on workers give up, connections close, it exits 0. Exit status 1 when
 * start-up failed, 2 for a bad command line.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli_args.h"
#include "common/exposure.h"
#include "lb/front.h"
#include "lb/lb.h"

static void usage(FILE *f) {
  fprintf(f,
          "usage: memsleep-lb --worker URL [--worker URL ...] [options]\n"
          "\n"
          "Spreads POST /generate and /v1/completions (streamed answers pass through as they\n"
          "arrive) over the healthy workers, the one with the fewest requests in flight\n"
          "first; sends the control endpoints (/release_memory_occupation,\n"
          "/resume_memory_occupation, /flush_cache, /update_weights_from_disk,\n"
          "/pause_generation, /continue_generation, /sleep, /wake_up) to every worker in\n"
          "parallel: 200 only when every worker answered 2xx, else 502 listing each failure.\n"
          "GET /is_sleeping, /get_server_info aggregate; GET /health is the balancer's own.\n"
          "See docs/lb.md.\n"
          "\n"
          "  --worker URL             a worker (http://HOST:PORT); repeat for more\n"
          "  --workers-file FILE      workers, one URL a line ('#' starts a comment)\n"
          "  --host ADDR              address to bind (default 127.0.0.1; another address\n"
          "                           exposes the balancer to the network: set keys)\n"
          "  --port N                 port (default 30080; 0 picks a free one, printed)\n"
          "  --control-timeout S      total bound of a control fan-out (default 120)\n"
          "  --connect-timeout S      bound of connecting to a worker (default 5)\n"
          "  --generate-timeout S     total bound of one forwarded generation (default 600)\n"
          "  --health-interval S      time between health checks of every worker (default 2)\n"
          "  --health-timeout S       bound of one GET /health (default 2)\n"
          "  --max-body-bytes N       largest request body; larger get 413 (default %zu)\n"
          "  --max-connections N      client connections at most (default 1024)\n"
          "  --idle-timeout S         close a client connection idle this long (default 120)\n"
          "  --request-timeout S      a client's request must arrive whole within S of the\n"
          "                           connection opening or of the previous answer on it\n"
          "                           (default %d)\n"
          "\n"
          "keys (docs/security.md; prefer the variables: a command line shows in ps):\n"
          "  --api-key KEY            clients need \"Authorization: Bearer KEY\" for\n"
          "                           generation, /is_sleeping and /get_server_info\n"
          "                           (default: $MEMSLEEP_LB_API_KEY)\n"
          "  --admin-api-key KEY      clients need this key for the control endpoints\n"
          "                           (default: $MEMSLEEP_LB_ADMIN_API_KEY; without it they\n"
          "                           need the API key); it is accepted wherever the API\n"
          "                           key is. GET /health is always open.\n"
          "  --worker-api-key KEY     sent to the workers with generation and the read-only\n"
          "                           fan-outs (default: $MEMSLEEP_WORKER_API_KEY)\n"
          "  --worker-admin-api-key KEY\n"
          "                           sent to the workers with the control fan-out (default:\n"
          "                           $MEMSLEEP_WORKER_ADMIN_API_KEY). Without worker keys, a\n"
          "                           client's own Authorization header is passed on.\n"
          "  --help                   this text\n"
          "  --version                the version\n"
          "\n"
          "Durations are seconds and may have decimals (0.5). Stop it with SIGINT or SIGTERM.\n",
          MS__LB_DEFAULT_MAX_BODY_BYTES, MS__LB_DEFAULT_REQUEST_TIMEOUT_S);
}

/* Parses arg as seconds in (0, max_s] for option name into milliseconds;
 * exits 2 with a message otherwise. */
static long parse_ms(const char *name, const char *arg, double max_s) {
  char *end;
  errno = 0;
  double v = strtod(arg, &end);
  if (errno || end == arg || *end || !isfinite(v) || v <= 0 || v > max_s) {
    fprintf(stderr, "memsleep-lb: --%s '%s' is not a number of seconds above 0 and at most %g\n",
            name, arg, max_s);
    exit(2);
  }
  long ms = (long)(v * 1000.0 + 0.5);
  return ms < 1 ? 1 : ms;
}

int main(int argc, char **argv) {
  static ms__lb_t lb;
  ms__lb_options_t *o = &lb.opt;
  o->host = "127.0.0.1";
  o->port = 30080;
  o->control_timeout_ms = 120000;
  o->connect_timeout_ms = 5000;
  o->generate_timeout_ms = 600000;
  o->health_interval_ms = 2000;
  o->health_timeout_ms = 2000;
  o->max_body_bytes = MS__LB_DEFAULT_MAX_BODY_BYTES;
  o->max_connections = 1024;
  o->idle_timeout_s = 120;
  o->request_timeout_s = MS__LB_DEFAULT_REQUEST_TIMEOUT_S;
  const char *key_arg[4] = {NULL, NULL, NULL, NULL};
  atomic_init(&lb.stopping, 0);
  atomic_init(&lb.unauthorized, 0);
  ms__pool_init(&lb.pool);

  enum {
    O_WORKER = 256,
    O_FILE,
    O_HOST,
    O_PORT,
    O_CTL_TO,
    O_CONN_TO,
    O_GEN_TO,
    O_HI,
    O_HT,
    O_BODY,
    O_CONN,
    O_IDLE_TO,
    O_REQ_TO,
    O_KEY,
    O_ADMIN_KEY,
    O_WKEY,
    O_WADMIN_KEY,
    O_VERSION
  };
  static const struct option longopts[] = {
      {"worker", required_argument, NULL, O_WORKER},
      {"workers-file", required_argument, NULL, O_FILE},
      {"host", required_argument, NULL, O_HOST},
      {"port", required_argument, NULL, O_PORT},
      {"control-timeout", required_argument, NULL, O_CTL_TO},
      {"connect-timeout", required_argument, NULL, O_CONN_TO},
      {"generate-timeout", required_argument, NULL, O_GEN_TO},
      {"health-interval", required_argument, NULL, O_HI},
      {"health-timeout", required_argument, NULL, O_HT},
      {"max-body-bytes", required_argument, NULL, O_BODY},
      {"max-connections", required_argument, NULL, O_CONN},
      {"idle-timeout", required_argument, NULL, O_IDLE_TO},
      {"request-timeout", required_argument, NULL, O_REQ_TO},
      {"api-key", required_argument, NULL, O_KEY},
      {"admin-api-key", required_argument, NULL, O_ADMIN_KEY},
      {"worker-api-key", required_argument, NULL, O_WKEY},
      {"worker-admin-api-key", required_argument, NULL, O_WADMIN_KEY},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, O_VERSION},
      {NULL, 0, NULL, 0}};
  char err[1024];
  int c;
  while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
    switch (c) {
    case O_WORKER:
      if (ms__pool_add(&lb.pool, optarg, err, sizeof err) != 0) {
        fprintf(stderr, "memsleep-lb: --worker: %s\n", err);
        return 2;
      }
      break;
    case O_FILE:
      if (ms__pool_add_file(&lb.pool, optarg, err, sizeof err) != 0) {
        fprintf(stderr, "memsleep-lb: --workers-file: %s\n", err);
        return 2;
      }
      break;
    case O_HOST:
      o->host = optarg;
      break;
    case O_PORT:
      o->port = (int)ms__cli_num("memsleep-lb", "port", optarg, 0, 65535);
      break;
    case O_CTL_TO:
      o->control_timeout_ms = parse_ms("control-timeout", optarg, 86400);
      break;
    case O_CONN_TO:
      o->connect_timeout_ms = parse_ms("connect-timeout", optarg, 3600);
      break;
    case O_GEN_TO:
      o->generate_timeout_ms = parse_ms("generate-timeout", optarg, 86400);
      break;
    case O_HI:
      o->health_interval_ms = parse_ms("health-interval", optarg, 3600);
      break;
    case O_HT:
      o->health_timeout_ms = parse_ms("health-timeout", optarg, 3600);
      break;
    case O_BODY:
      o->max_body_bytes =
          (size_t)ms__cli_num("memsleep-lb", "max-body-bytes", optarg, 1, (long long)1 << 32);
      break;
    case O_CONN:
      o->max_connections =
          (unsigned)ms__cli_num("memsleep-lb", "max-connections", optarg, 1, 65536);
      break;
    case O_IDLE_TO:
      o->idle_timeout_s = (unsigned)ms__cli_num("memsleep-lb", "idle-timeout", optarg, 1, 86400);
      break;
    case O_REQ_TO:
      o->request_timeout_s =
          (unsigned)ms__cli_num("memsleep-lb", "request-timeout", optarg, 1, 86400);
      break;
    case O_KEY:
    case O_ADMIN_KEY:
    case O_WKEY:
    case O_WADMIN_KEY:
      key_arg[c - O_KEY] = optarg;
      break;
    case 'h':
      usage(stdout);
      return 0;
    case O_VERSION:
      printf("memsleep-lb %s\n", MS__LB_VERSION);
      return 0;
    default:
      usage(stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "memsleep-lb: unexpected argument '%s' (workers go after --worker)\n",
            argv[optind]);
    return 2;
  }
  if (lb.pool.n == 0) {
    fprintf(stderr, "memsleep-lb: no worker given; use --worker URL or --workers-file FILE\n");
    return 2;
  }
  o->keys.api = ms__cli_key("memsleep-lb", "api-key", key_arg[0], "MEMSLEEP_LB_API_KEY");
  o->keys.admin =
      ms__cli_key("memsleep-lb", "admin-api-key", key_arg[1], "MEMSLEEP_LB_ADMIN_API_KEY");
  o->worker_keys.api =
      ms__cli_key("memsleep-lb", "worker-api-key", key_arg[2], "MEMSLEEP_WORKER_API_KEY");
  o->worker_keys.admin = ms__cli_key("memsleep-lb", "worker-admin-api-key", key_arg[3],
                                     "MEMSLEEP_WORKER_ADMIN_API_KEY");
  lb.pool.interval_ms = o->health_interval_ms;
  lb.pool.timeout_ms = o->health_timeout_ms;
  lb.pool.connect_timeout_ms =
      o->connect_timeout_ms < o->health_timeout_ms ? o->connect_timeout_ms : o->health_timeout_ms;

  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
    fprintf(stderr, "memsleep-lb: curl_global_init failed\n");
    return 1;
  }
  /* Signals are taken by sigwait below, on this thread only. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, NULL);
  signal(SIGPIPE, SIG_IGN);

  ms__pool_check_now(&lb.pool);
  lb.guard =
      ms__conn_guard_create("memsleep-lb", "--request-timeout", o->request_timeout_s * 1000u);
  struct MHD_Daemon *d = lb.guard ? ms__front_start(&lb, err, sizeof err) : NULL;
  if (!d) {
    fprintf(stderr, "memsleep-lb: %s\n",
            lb.guard ? err : "cannot start the request-timeout watchdog");
    ms__conn_guard_destroy(lb.guard);
    ms__pool_free(&lb.pool);
    curl_global_cleanup();
    return 1;
  }
  if (ms__pool_start(&lb.pool) != 0) {
    fprintf(stderr, "memsleep-lb: cannot start the health-check thread\n");
    ms__front_stop(d);
    ms__conn_guard_destroy(lb.guard);
    ms__pool_free(&lb.pool);
    curl_global_cleanup();
    return 1;
  }
  ms__warn_exposure("memsleep-lb", o->host, o->keys.api != NULL, o->keys.admin != NULL,
                    "--api-key (or MEMSLEEP_LB_API_KEY)");
  printf("memsleep-lb: listening on http://%s:%d (%zu workers, %zu healthy)\n", o->host, lb.port,
         lb.pool.n, ms__pool_healthy(&lb.pool));
  fflush(stdout);

  int sig = 0;
  sigwait(&set, &sig);
  fprintf(stderr, "memsleep-lb: %s received, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
  atomic_store(&lb.stopping, 1);
  ms__front_stop(d);
  ms__conn_guard_destroy(lb.guard);
  ms__pool_free(&lb.pool);
  curl_global_cleanup();
  return 0;
}
