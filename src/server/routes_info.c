/*
 * routes_info.c - GET /health, GET /get_server_info, GET /metrics and
 * POST /flush_cache: what the server is, what it is doing, and how much
 * memory each memsleep tag holds.
 *
 * Memory figures are measured (memsleep_measure asks the backend which
 * pages are really there), not taken from what was planned. The
 * "memory_saver" object is the sleep/wake controller's state.
 */
#include <memsleep/memsleep.h>
#include <memsleep/probe.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "engine/device.h"
#include "server/controller.h"
#include "server/json_util.h"
#include "server/routes.h"

#define TAGS_MAX 64

enum MHD_Result ms__route_health(ms__http_req_t *req) {
  if (atomic_load(&req->srv->stopping))
    return ms__reply_error(req, 503, "the server is shutting down");
  return ms__reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

/* Per-tag memory: {"weights": {"allocations": .., "reserved_bytes": ..,
 * "resident_bytes": .., "backup_bytes": .., "asleep": bool}, ...}; with
 * CUDA graphs also "cuda_graph": its executables (allocations; bytes as
 * instantiating them took from the device) and the graphs' counters. */
static json_t *memory_json(ms__server_t *srv) {
  char names[TAGS_MAX][MEMSLEEP_TAG_MAX + 1];
  int nt = memsleep_tags(names, TAGS_MAX);
  json_t *m = json_object();
  for (int i = 0; i < nt && i < TAGS_MAX; i++) {
    memsleep_stats_t st;
    if (memsleep_measure(names[i], &st) != 0)
      continue;
    json_object_set_new(
        m, names[i],
        json_pack("{s:I,s:I,s:I,s:I,s:b}", "allocations", (json_int_t)st.allocations,
                  "reserved_bytes", (json_int_t)st.reserved_bytes, "resident_bytes",
                  (json_int_t)st.resident_bytes, "backup_bytes", (json_int_t)st.backup_bytes,
                  "asleep", memsleep_is_asleep(names[i]) == 1));
  }
  ms__graph_stats_t g;
  ms__ctl_state_t cs;
  ms__ctl_state(srv->ctl, &cs);
  if ((cs.available & MS__TAG_GRAPH) && ms__engine_graph_stats(srv->engine, &g) == 0)
    json_object_set_new(m, "cuda_graph",
                        json_pack("{s:I,s:I,s:I,s:I,s:b,s:b,s:I,s:I,s:I,s:I,s:s}", "allocations",
                                  (json_int_t)g.executables, "reserved_bytes",
                                  (json_int_t)g.reserved_bytes, "resident_bytes",
                                  (json_int_t)g.exec_bytes, "backup_bytes", (json_int_t)0, "asleep",
                                  g.asleep, "enabled", g.enabled, "graphs", (json_int_t)g.graphs,
                                  "captures", (json_int_t)g.captures, "instantiations",
                                  (json_int_t)g.instantiations, "replays", (json_int_t)g.replays,
                                  "error", g.error));
  return m;
}

/* What the probe measures for this process (the server and any children):
 * host resident memory from /proc, GPU memory per GPU from NVML - the
 * figures an RL driver gates on, next to memsleep's per-tag accounting.
 * An unknown figure says why ({"known": false, "reason", "detail"}). */
static json_t *process_json(void) {
  pid_t pid = getpid();
  memsleep_probe_host_result_t *host = calloc(1, sizeof *host);
  memsleep_probe_gpu_result_t *gpu = calloc(1, sizeof *gpu);
  json_t *out = NULL;
  if (host == NULL || gpu == NULL)
    goto done;
  json_t *h, *g;
  if (memsleep_probe_host(pid, 0, host) == 0 && host->known)
    h = json_pack("{s:b,s:I,s:I}", "known", 1, "resident_bytes", (json_int_t)host->resident_bytes,
                  "processes", (json_int_t)host->tree_processes);
  else
    h = json_pack("{s:b,s:s,s:s}", "known", 0, "reason", memsleep_probe_reason_name(host->reason),
                  "detail", host->detail[0] ? host->detail : memsleep_last_error());
  if (memsleep_probe_gpu(pid, 0, gpu) == 0 && gpu->known) {
    json_t *gpus = json_array();
    for (size_t i = 0; i < gpu->gpu_count && i < MEMSLEEP_PROBE_GPU_MAX; i++)
      json_array_append_new(gpus, json_pack("{s:i,s:s,s:I}", "index", (int)gpu->gpus[i].index,
                                            "uuid", gpu->gpus[i].uuid, "resident_bytes",
                                            (json_int_t)gpu->gpus[i].resident_bytes));
    g = json_pack("{s:b,s:I,s:I,s:o}", "known", 1, "max_bytes", (json_int_t)gpu->max_bytes,
                  "total_bytes", (json_int_t)gpu->total_bytes, "gpus", gpus);
  } else {
    g = json_pack("{s:b,s:s,s:s}", "known", 0, "reason", memsleep_probe_reason_name(gpu->reason),
                  "detail", gpu->detail[0] ? gpu->detail : memsleep_last_error());
  }
  out = json_pack("{s:i,s:o,s:o}", "pid", (int)pid, "host", h, "gpu", g);
done:
  free(host);
  free(gpu);
  return out ? out : json_null();
}

static json_t *scheduler_json(ms__server_t *srv) {
  ms__engine_stats_t s;
  ms__engine_stats(srv->engine, &s);
  return json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "running",
                   (json_int_t)s.running, "waiting", (json_int_t)s.waiting, "requests_total",
                   (json_int_t)s.requests_total, "prompt_tokens_total",
                   (json_int_t)s.prompt_tokens_total, "generated_tokens_total",
                   (json_int_t)s.generated_tokens_total, "cached_tokens_total",
                   (json_int_t)s.cached_tokens_total, "kv_blocks_total",
                   (json_int_t)s.kv_blocks_total, "kv_blocks_free", (json_int_t)s.kv_blocks_free,
                   "kv_block_tokens", (json_int_t)s.kv_block_tokens, "prefix_cached_blocks",
                   (json_int_t)s.prefix_cached_blocks, "steps", (json_int_t)s.steps);
}

/* The sleep/wake controller's state: {"enabled", "tags", "released_tags",
 * "draining", "paused", "pause_mode", "weights_valid"}. */
static json_t *memory_saver_json(ms__server_t *srv) {
  ms__ctl_state_t st;
  ms__ctl_state(srv->ctl, &st);
  json_t *tags = json_array();
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if (st.released & (1u << i))
      json_array_append_new(tags, json_string(ms__tag_name(i)));
  json_t *avail = json_array();
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if (st.available & (1u << i))
      json_array_append_new(avail, json_string(ms__tag_name(i)));
  const char *mode = ms__pause_mode_name(st.pause);
  return json_pack("{s:b,s:o,s:o,s:b,s:b,s:o,s:b}", "enabled", st.enabled, "tags", avail,
                   "released_tags", tags, "draining", st.draining, "paused",
                   st.pause != MS__PAUSE_NONE, "pause_mode", mode ? json_string(mode) : json_null(),
                   "weights_valid", st.weights_valid);
}

enum MHD_Result ms__route_server_info(ms__http_req_t *req) {
  ms__server_t *srv = req->srv;
  const ms__model_t *m = ms__engine_model(srv->engine);
  const ms__model_config_t *c = &m->cfg;
  const ms__server_options_t *o = &srv->opt;
  json_t *eos = json_array();
  for (int i = 0; i < c->n_eos; i++)
    json_array_append_new(eos, json_integer(c->eos_token_ids[i]));
  json_t *model = json_pack(
      "{s:o,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:b,s:i,s:o,s:I,s:s,s:b}", "path",
      ms__json_text(m->dir, strlen(m->dir)), "architecture", c->arch_name, "vocab_size",
      c->vocab_size, "hidden_size", c->hidden_size, "intermediate_size", c->intermediate_size,
      "num_layers", c->num_layers, "num_heads", c->num_heads, "num_kv_heads", c->num_kv_heads,
      "head_dim", c->head_dim, "max_position", c->max_position, "rope_theta", (double)c->rope_theta,
      "tie_word_embeddings", c->tie_word_embeddings, "bos_token_id", c->bos_token_id,
      "eos_token_ids", eos, "weight_bytes", (json_int_t)m->weight_bytes, "weights_tag", m->tag,
      "has_tokenizer", srv->tok != NULL);
  json_t *args = json_pack(
      "{s:o,s:s,s:i,s:o,s:I,s:i,s:i,s:I,s:i,s:I,s:i,s:b,s:i,s:i}", "model_path",
      ms__json_text(o->model_dir, strlen(o->model_dir)), "host", o->host, "port", srv->port,
      "served_model_name", ms__json_text(o->served_model_name, strlen(o->served_model_name)),
      "max_body_bytes", (json_int_t)o->max_body_bytes, "threads", o->threads, "kv_block_tokens",
      o->kv_block_tokens, "kv_blocks", (json_int_t)o->kv_blocks, "max_batch", o->max_batch,
      "max_queue", (json_int_t)o->max_queue, "max_context", srv->max_context, "prefix_cache",
      o->prefix_cache, "max_connections", (int)o->connection_limit, "timeout_s", (int)o->timeout_s);
  /* Whether each key is set, never the key. */
  json_t *dirs = json_array();
  for (size_t i = 0; i < o->model_roots.n; i++)
    json_array_append_new(dirs,
                          ms__json_text(o->model_roots.dirs[i], strlen(o->model_roots.dirs[i])));
  char dev[32];
  ms__device_name(m->device, dev, sizeof dev);
  if (model)
    json_object_set_new(model, "dtype", json_string(m->elem_bytes == 2 ? "bfloat16" : "float32"));
  if (args) {
    json_object_set_new(args, "device", json_string(dev));
    json_object_set_new(args, "request_timeout_s", json_integer(o->request_timeout_s));
    json_object_set_new(args, "api_key", json_boolean(o->keys.api != NULL));
    json_object_set_new(args, "admin_api_key", json_boolean(o->keys.admin != NULL));
    json_object_set_new(args, "allowed_model_dirs", dirs);
  } else {
    json_decref(dirs);
  }
  json_t *info = json_pack("{s:s,s:s,s:o,s:o,s:o,s:o,s:o,s:o,s:I}", "server", "memsleep-serve",
                           "version", MS__SERVER_VERSION, "model", model, "arguments", args,
                           "scheduler", scheduler_json(srv), "memory", memory_json(srv),
                           "memory_saver", memory_saver_json(srv), "process", process_json(),
                           "uptime_s", (json_int_t)(time(NULL) - srv->started));
  if (!info)
    return ms__reply_error(req, 500, "cannot build the server info (out of memory?)");
  return ms__reply_json(req, 200, info);
}

/* A growing text buffer for the Prometheus page. */
typedef struct text {
  char *s;
  size_t len, cap;
  int oom;
} text_t;

static void put(text_t *t, const char *fmt, ...) MS__PRINTF(2, 3);
static void put(text_t *t, const char *fmt, ...) {
  if (t->oom)
    return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->oom = 1;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n;
    char *s = realloc(t->s, cap);
    if (!s) {
      t->oom = 1;
      return;
    }
    t->s = s;
    t->cap = cap;
  }
}

/* One metric with HELP and TYPE lines and a single unlabelled value. */
static void metric(text_t *t, const char *name, const char *type, const char *help,
                   unsigned long long v) {
  put(t, "# HELP %s %s\n# TYPE %s %s\n%s %llu\n", name, help, name, type, name, v);
}

enum MHD_Result ms__route_metrics(ms__http_req_t *req) {
  ms__server_t *srv = req->srv;
  text_t t = {malloc(8192), 0, 8192, 0};
  if (!t.s)
    return ms__reply_error(req, 500, "out of memory");
  ms__engine_stats_t s;
  ms__engine_stats(srv->engine, &s);

  ms__metric_row_t rows[MS__METRICS_MAX];
  uint64_t gone = 0;
  size_t nr = ms__metrics_snapshot(&srv->metrics, rows, MS__METRICS_MAX, &gone);
  put(&t, "# HELP memsleep_http_requests_total HTTP requests answered, by endpoint and status.\n"
          "# TYPE memsleep_http_requests_total counter\n");
  for (size_t i = 0; i < nr; i++)
    put(&t, "memsleep_http_requests_total{endpoint=\"%s\",code=\"%u\"} %llu\n", rows[i].endpoint,
        rows[i].status, (unsigned long long)rows[i].count);
  metric(&t, "memsleep_client_disconnects_total", "counter",
         "Requests whose client went away before the end (their KV blocks were freed).", gone);
  metric(&t, "memsleep_http_unauthorized_total", "counter",
         "Requests refused with 401: no key, or not the key the endpoint needs.",
         ms__metrics_unauthorized(&srv->metrics));
  metric(&t, "memsleep_http_request_timeouts_total", "counter",
         "Connections closed because a request did not arrive whole within --request-timeout.",
         ms__conn_guard_cut_count(srv->guard));
  metric(&t, "memsleep_requests_total", "counter",
         "Generation requests finished by the engine, any reason.", s.requests_total);
  metric(&t, "memsleep_prompt_tokens_total", "counter", "Prompt tokens processed.",
         s.prompt_tokens_total);
  metric(&t, "memsleep_generation_tokens_total", "counter", "Tokens generated.",
         s.generated_tokens_total);
  metric(&t, "memsleep_cached_tokens_total", "counter",
         "Prompt tokens whose KV came from the prefix cache.", s.cached_tokens_total);
  metric(&t, "memsleep_num_running_reqs", "gauge", "Requests in the running batch.", s.running);
  metric(&t, "memsleep_num_queue_reqs", "gauge", "Requests waiting in the queue.", s.waiting);
  metric(&t, "memsleep_kv_blocks_total", "gauge", "KV cache blocks in the pool.",
         s.kv_blocks_total);
  metric(&t, "memsleep_kv_blocks_free", "gauge", "KV cache blocks free.", s.kv_blocks_free);
  metric(&t, "memsleep_prefix_cached_blocks", "gauge", "KV blocks held by the prefix cache.",
         s.prefix_cached_blocks);
  metric(&t, "memsleep_forward_steps_total", "counter", "Forward passes run.", s.steps);
  metric(&t, "memsleep_uptime_seconds", "gauge", "Seconds since the server started.",
         (unsigned long long)(time(NULL) - srv->started));

  static const char *const fields[] = {"reserved_bytes", "resident_bytes", "backup_bytes"};
  static const char *const helps[] = {"Virtual bytes held by memsleep allocations of the tag.",
                                      "Physical bytes mapped now (measured) for the tag.",
                                      "Host bytes holding backups of the tag while it sleeps."};
  char names[TAGS_MAX][MEMSLEEP_TAG_MAX + 1];
  int nt = memsleep_tags(names, TAGS_MAX);
  memsleep_stats_t st[TAGS_MAX];
  int ok[TAGS_MAX];
  for (int i = 0; i < nt && i < TAGS_MAX; i++)
    ok[i] = memsleep_measure(names[i], &st[i]) == 0;
  for (int f = 0; f < 3; f++) {
    put(&t, "# HELP memsleep_memory_%s %s\n# TYPE memsleep_memory_%s gauge\n", fields[f], helps[f],
        fields[f]);
    for (int i = 0; i < nt && i < TAGS_MAX; i++) {
      if (!ok[i])
        continue;
      size_t v = f == 0 ? st[i].reserved_bytes : f == 1 ? st[i].resident_bytes : st[i].backup_bytes;
      put(&t, "memsleep_memory_%s{tag=\"%s\"} %zu\n", fields[f], names[i], v);
    }
  }
  put(&t, "# HELP memsleep_memory_asleep 1 while the tag's memory is released.\n"
          "# TYPE memsleep_memory_asleep gauge\n");
  for (int i = 0; i < nt && i < TAGS_MAX; i++)
    put(&t, "memsleep_memory_asleep{tag=\"%s\"} %d\n", names[i], memsleep_is_asleep(names[i]) == 1);
  enum MHD_Result r = t.oom ? ms__reply_error(req, 500, "out of memory")
                            : ms__reply_text(req, 200, "text/plain; version=0.0.4", t.s, t.len);
  free(t.s);
  return r;
}

enum MHD_Result ms__route_flush_cache(ms__http_req_t *req) {
  ms__server_t *srv = req->srv;
  int rc = ms__engine_flush_cache(srv->engine);
  if (rc == MEMSLEEP_ESTATE) {
    ms__engine_stats_t s;
    ms__engine_stats(srv->engine, &s);
    return ms__reply_error(req, 400,
                           "cannot flush the prefix cache while requests run or wait (%zu "
                           "running, %zu waiting); retry when the server is idle",
                           s.running, s.waiting);
  }
  if (rc != 0)
    return ms__reply_error(req, 500, "flushing the prefix cache failed (%s): %s",
                           memsleep_strerror(rc), memsleep_last_error());
  return ms__reply_json(req, 200,
                        json_pack("{s:s,s:s}", "status", "ok", "message", "prefix cache flushed"));
}
