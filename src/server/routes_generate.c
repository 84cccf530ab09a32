/*
 * routes_generate.c - POST /generate (SGLang), POST /v1/completions
 * (OpenAI) and GET /health_generate.
 *
 * Both generate endpoints share one path: parse and check the body
 * (params.c), submit to the engine (gen.c), then either wait for the end
 * and answer one JSON object, or answer a server-sent-events stream with
 * one event per generated token, ending with "data: [DONE]". Each event's
 * text is the new text since the previous event (see gen.h for how
 * UTF-8 is kept whole). A client that goes away cancels its request, which
 * frees its KV blocks.
 */
#include <memsleep/memsleep.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/gen.h"
#include "server/json_util.h"
#include "server/params.h"
#include "server/routes.h"

/* Seconds a client is asked to wait (Retry-After) when the queue is full. */
#define RETRY_AFTER_S 1
/* How long /health_generate waits for its one token. */
#define HEALTH_GENERATE_TIMEOUT_S 30.0

typedef enum api { API_SGLANG, API_OPENAI } api_t;

/* What both response shapes need besides the generation itself. */
typedef struct reply_ctx {
  api_t api;
  char rid[48];      /* request id: SGLang meta_info.id, OpenAI "id" */
  char model[160];   /* OpenAI "model" */
  long long created; /* OpenAI "created" (Unix seconds) */
  size_t prompt_tokens;
  int include_usage; /* OpenAI stream_options.include_usage */
} reply_ctx_t;

/* The OpenAI spelling of a finish reason. */
static const char *openai_finish(ms__finish_t r) {
  return r == MS__FINISH_STOP ? "stop" : ms__finish_name(r);
}

static void ctx_init(ms__server_t *srv, reply_ctx_t *c, api_t api, const ms__gen_params_t *p) {
  memset(c, 0, sizeof *c);
  c->api = api;
  unsigned long id = atomic_fetch_add(&srv->next_rid, 1) + 1;
  snprintf(c->rid, sizeof c->rid, "%s%lu", api == API_OPENAI ? "cmpl-" : "", id);
  snprintf(c->model, sizeof c->model, "%s", p->model[0] ? p->model : srv->opt.served_model_name);
  c->created = (long long)time(NULL);
  c->prompt_tokens = p->n_prompt;
  c->include_usage = p->include_usage;
}

static json_t *usage_json(size_t prompt, size_t completion) {
  return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                   (json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion));
}

/* SGLang's meta_info; finish_reason null until the end. */
static json_t *meta_json(const reply_ctx_t *c, ms__gen_t *g, size_t completion, int final) {
  ms__finish_info_t info;
  memset(&info, 0, sizeof info);
  if (final)
    ms__gen_finish(g, &info);
  json_t *m = json_object();
  json_object_set_new(m, "id", json_string(c->rid));
  json_object_set_new(m, "prompt_tokens", json_integer((json_int_t)c->prompt_tokens));
  json_object_set_new(m, "completion_tokens", json_integer((json_int_t)completion));
  json_object_set_new(m, "cached_tokens", json_integer((json_int_t)info.cached_tokens));
  json_object_set_new(m, "finish_reason", final ? ms__gen_finish_json(g) : json_null());
  json_object_set_new(m, "e2e_latency", json_real(ms__gen_elapsed_s(g)));
  return m;
}

/*
 * The JSON of tokens [from, to) of g: a stream event (stream) or the whole
 * answer. final: the request has finished and this is its last piece.
 * NULL when out of memory.
 */
static json_t *piece_json(const reply_ctx_t *c, ms__gen_t *g, size_t from, size_t to, int final,
                          int stream) {
  json_t *text = ms__gen_text(g, from, to, final);
  if (!text)
    return NULL;
  ms__finish_info_t info;
  memset(&info, 0, sizeof info);
  if (final)
    ms__gen_finish(g, &info);
  if (c->api == API_SGLANG) {
    json_t *ids = json_array();
    for (size_t i = from; i < to; i++)
      json_array_append_new(ids, json_integer(ms__gen_token(g, i)));
    return json_pack("{s:o,s:o,s:o}", "text", text, "output_ids", ids, "meta_info",
                     meta_json(c, g, to, final));
  }
  json_t *choice =
      json_pack("{s:i,s:o,s:n,s:o}", "index", 0, "text", text, "logprobs", "finish_reason",
                final ? json_string(openai_finish(info.reason)) : json_null());
  json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:[o]}", "id", c->rid, "object", "text_completion",
                        "created", (json_int_t)c->created, "model", c->model, "choices", choice);
  if (o && final && !stream)
    json_object_set_new(o, "usage", usage_json(c->prompt_tokens, info.completion_tokens));
  return o;
}

/* ---- streaming ---------------------------------------------------------- */

typedef struct stream {
  reply_ctx_t c;
  ms__server_t *srv;
  ms__gen_t *g;
  size_t sent_tokens; /* tokens already turned into events */
  int final_sent;     /* the event with finish_reason went out */
  int done_sent;      /* "data: [DONE]" went out */
  char *buf;          /* bytes ready to send: buf[pos..len) */
  size_t len, pos, cap;
} stream_t;

/* Appends one "data: ...\n\n" event (the JSON j, consumed; or the literal
 * raw when j is NULL). -1 when out of memory. */
static int stream_event(stream_t *st, json_t *j, const char *raw) {
  char *s = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
  json_decref(j);
  const char *body = s ? s : raw;
  if (!body)
    return -1;
  size_t n = strlen(body) + 8;
  if (st->len + n + 1 > st->cap) {
    size_t cap = st->cap ? st->cap * 2 : 1024;
    while (cap < st->len + n + 1)
      cap *= 2;
    char *b = realloc(st->buf, cap);
    if (!b) {
      free(s);
      return -1;
    }
    st->buf = b;
    st->cap = cap;
  }
  st->len += (size_t)snprintf(st->buf + st->len, st->cap - st->len, "data: %s\n\n", body);
  free(s);
  return 0;
}

/*
 * libmicrohttpd's content reader for a stream (connection thread): hands
 * out buffered event bytes, and when none are left blocks for the next
 * tokens and formats them. Ends after [DONE], or with an error when the
 * client went away (the request is cancelled by then).
 */
static ssize_t stream_read(void *cls, uint64_t pos, char *out, size_t max) {
  (void)pos;
  stream_t *st = cls;
  for (;;) {
    if (st->pos < st->len) {
      size_t n = st->len - st->pos < max ? st->len - st->pos : max;
      memcpy(out, st->buf + st->pos, n);
      st->pos += n;
      return (ssize_t)n;
    }
    st->pos = st->len = 0;
    if (st->done_sent)
      return MHD_CONTENT_READER_END_OF_STREAM;
    if (st->final_sent) {
      if (st->c.api == API_OPENAI && st->c.include_usage) {
        ms__finish_info_t info;
        ms__gen_finish(st->g, &info);
        json_t *u =
            json_pack("{s:s,s:s,s:I,s:s,s:[],s:o}", "id", st->c.rid, "object", "text_completion",
                      "created", (json_int_t)st->c.created, "model", st->c.model, "choices",
                      "usage", usage_json(st->c.prompt_tokens, info.completion_tokens));
        if (stream_event(st, u, NULL) != 0)
          return MHD_CONTENT_READER_END_WITH_ERROR;
      }
      if (stream_event(st, NULL, "[DONE]") != 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
      st->done_sent = 1;
      continue;
    }
    size_t n;
    int fin;
    int gone = ms__gen_wait(st->g, st->sent_tokens, 0, &n, &fin) == 1;
    /* The request's last token comes just before its finish report: wait
     * for that so that the last token's event carries finish_reason. */
    while (!gone && !fin && ms__gen_ends_at(st->g, n))
      gone = ms__gen_wait(st->g, n, 0, &n, &fin) == 1;
    if (gone) {
      ms__metrics_count_disconnect(&st->srv->metrics);
      st->done_sent = 1; /* counted once; the free callback must not count again */
      return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    for (size_t i = st->sent_tokens; i < n; i++) {
      int last = fin && i + 1 == n;
      if (stream_event(st, piece_json(&st->c, st->g, i, i + 1, last, 1), NULL) != 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
      st->final_sent |= last;
    }
    st->sent_tokens = n;
    if (fin && !st->final_sent) {
      if (stream_event(st, piece_json(&st->c, st->g, n, n, 1, 1), NULL) != 0)
        return MHD_CONTENT_READER_END_WITH_ERROR;
      st->final_sent = 1;
    }
  }
}

/* Runs when the stream's response is done: a stream that did not reach its
 * end (the client went away while we wrote) cancels its request here. */
static void stream_free(void *cls) {
  stream_t *st = cls;
  if (!st->done_sent)
    ms__metrics_count_disconnect(&st->srv->metrics);
  ms__gen_cancel(st->g);
  ms__gen_release(st->g);
  free(st->buf);
  free(st);
}

/* ---- the shared path ---------------------------------------------------- */

/* Answers a failed ms__engine_submit. */
static enum MHD_Result submit_error(ms__http_req_t *req, int rc) {
  if (rc == MS__EBUSY) {
    ms__engine_stats_t s;
    ms__engine_stats(req->srv->engine, &s);
    req->retry_after_s = RETRY_AFTER_S;
    return ms__reply_error(req, 503,
                           "the server is busy: %zu requests wait and %zu run (--max-queue %zu); "
                           "retry after %d s",
                           s.waiting, s.running, req->srv->opt.max_queue, RETRY_AFTER_S);
  }
  if (rc == MS__EWEIGHTS)
    return ms__reply_error(req, 503, "cannot generate: %s", memsleep_last_error());
  if (rc == MEMSLEEP_EINVAL)
    return ms__reply_error(req, 400, "the engine refused the request: %s", memsleep_last_error());
  return ms__reply_error(req, 500, "the engine could not take the request (%s): %s",
                         memsleep_strerror(rc), memsleep_last_error());
}

static enum MHD_Result generate(ms__http_req_t *req, api_t api) {
  ms__server_t *srv = req->srv;
  if (atomic_load(&srv->stopping))
    return ms__reply_error(req, 503, "the server is shutting down; send the request elsewhere");
  char err[MS__ERRMSG_MAX];
  json_t *body = ms__json_parse_object(req->body, req->body_len, err, sizeof err);
  if (!body)
    return ms__reply_error(req, 400, "%s", err);
  ms__gen_params_t p;
  unsigned status;
  int rc = api == API_SGLANG ? ms__params_generate(srv, body, &p, &status, err, sizeof err)
                             : ms__params_completions(srv, body, &p, &status, err, sizeof err);
  json_decref(body);
  if (rc != 0)
    return ms__reply_error(req, status, "%s", err);

  reply_ctx_t c;
  ctx_init(srv, &c, api, &p);
  ms__gen_t *g = ms__gen_new(srv, ms__http_fd(req));
  if (!g) {
    ms__params_free(&p);
    return ms__reply_error(req, 500, "out of memory for a new request");
  }
  rc = ms__gen_submit(g, p.prompt, p.n_prompt, &p.sp);
  int stream = p.stream;
  ms__params_free(&p);
  if (rc != 0) {
    ms__gen_release(g);
    return submit_error(req, rc);
  }

  if (stream) {
    stream_t *st = calloc(1, sizeof *st);
    if (!st) {
      ms__gen_cancel(g);
      ms__gen_release(g);
      return MHD_NO;
    }
    st->c = c;
    st->srv = srv;
    st->g = g;
    return ms__reply_stream(req, stream_read, st, stream_free);
  }

  size_t n = 0;
  int fin = 0, gone = 0;
  while (!fin)
    gone |= ms__gen_wait(g, n, 0, &n, &fin) == 1;
  if (gone) {
    ms__metrics_count_disconnect(&srv->metrics);
    ms__gen_release(g);
    return MHD_NO;
  }
  ms__finish_info_t info;
  ms__gen_finish(g, &info);
  enum MHD_Result r;
  if (info.reason == MS__FINISH_ERROR) {
    r = ms__reply_error(req, 500, "generation failed: %s", info.error ? info.error : "unknown");
  } else if (info.reason == MS__FINISH_ABORT && atomic_load(&srv->stopping)) {
    r = ms__reply_error(req, 503, "the server is shutting down; the request was not finished");
  } else {
    json_t *j = piece_json(&c, g, 0, n, 1, 0);
    r = j ? ms__reply_json(req, 200, j) : ms__reply_error(req, 500, "out of memory");
  }
  ms__gen_release(g);
  return r;
}

enum MHD_Result ms__route_generate(ms__http_req_t *req) {
  return generate(req, API_SGLANG);
}

enum MHD_Result ms__route_completions(ms__http_req_t *req) {
  return generate(req, API_OPENAI);
}

/*
 * GET /health_generate: generates one token (greedy, from the model's BOS
 * token, or token 0) and answers 200 once it came, 503 if it did not come
 * within HEALTH_GENERATE_TIMEOUT_S or the engine failed.
 */
enum MHD_Result ms__route_health_generate(ms__http_req_t *req) {
  ms__server_t *srv = req->srv;
  if (atomic_load(&srv->stopping))
    return ms__reply_error(req, 503, "the server is shutting down");
  const ms__model_config_t *cfg = &ms__engine_model(srv->engine)->cfg;
  int prompt =
      cfg->bos_token_id >= 0 && cfg->bos_token_id < srv->vocab_size ? cfg->bos_token_id : 0;
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 1;
  ms__gen_t *g = ms__gen_new(srv, ms__http_fd(req));
  if (!g)
    return ms__reply_error(req, 503, "out of memory for a health request");
  int rc = ms__gen_submit(g, &prompt, 1, &sp);
  if (rc != 0) {
    ms__gen_release(g);
    req->retry_after_s = rc == MS__EBUSY ? RETRY_AFTER_S : 0;
    return ms__reply_error(req, 503, "cannot generate: %s (%s)",
                           rc == MS__EWEIGHTS ? "weights not valid" : memsleep_strerror(rc),
                           rc == MS__EBUSY ? "the queue is full" : memsleep_last_error());
  }
  size_t n = 0;
  int fin = 0;
  double t0 = ms__gen_elapsed_s(g);
  int timed_out = 0;
  while (!fin) {
    int w = ms__gen_wait(g, n, timed_out ? 0 : HEALTH_GENERATE_TIMEOUT_S, &n, &fin);
    if (w == -1) {
      timed_out = 1;
      ms__gen_cancel(g);
    }
  }
  ms__finish_info_t info;
  ms__gen_finish(g, &info);
  double dt = ms__gen_elapsed_s(g) - t0;
  enum MHD_Result r;
  if (timed_out)
    r = ms__reply_error(req, 503, "no token within %.0f s; the engine is stuck or overloaded",
                        HEALTH_GENERATE_TIMEOUT_S);
  else if (n < 1 || info.reason == MS__FINISH_ERROR || info.reason == MS__FINISH_ABORT)
    r = ms__reply_error(req, 503, "the engine could not generate a token (%s%s%s)",
                        ms__finish_name(info.reason), info.error ? ": " : "",
                        info.error ? info.error : "");
  else
    r = ms__reply_json(
        req, 200,
        json_pack("{s:s,s:I,s:f}", "status", "ok", "tokens", (json_int_t)n, "latency_s", dt));
  ms__gen_release(g);
  return r;
}
