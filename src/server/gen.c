/*
 * gen.c - one generation request as the HTTP side sees it (see gen.h).
 */
#include "server/gen.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <memsleep/memsleep.h>

#include "server/json_util.h"

struct ms__gen {
  pthread_mutex_t mu;
  pthread_cond_t cv; /* signalled on every token and at the end */
  int refs;          /* handler + engine (while submitted) */
  ms__server_t *srv;
  int fd;            /* the client's socket, -1 unknown */
  uint64_t id;       /* the engine's id, valid once submitted */
  int submitted;     /* the engine accepted it */
  int cancel_sent;   /* ms__engine_cancel was called */
  ms__sampling_t sp; /* as submitted (stop ids, ignore_eos) */
  int *out;          /* generated ids, room for sp.max_new_tokens */
  size_t n_out;      /* how many out holds (written under mu) */
  int finished;      /* on_finish ran */
  ms__finish_info_t info;
  char error[MS__ERRMSG_MAX]; /* info.error copied */
  struct timespec t0;         /* created */
  /* Text state, used by the handler thread only. */
  char *pend; /* decoded bytes not yet returned */
  size_t pend_len;
  size_t pend_cap;
};

static void gen_free(ms__gen_t *g) {
  atomic_fetch_sub(&g->srv->active_gens, 1);
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
  free(g->out);
  free(g->pend);
  free(g);
}

/* Drops one reference; frees g with the last. */
static void gen_unref(ms__gen_t *g) {
  pthread_mutex_lock(&g->mu);
  int left = --g->refs;
  pthread_mutex_unlock(&g->mu);
  if (left == 0)
    gen_free(g);
}

ms__gen_t *ms__gen_new(ms__server_t *srv, int fd) {
  ms__gen_t *g = calloc(1, sizeof *g);
  if (!g)
    return NULL;
  pthread_mutex_init(&g->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&g->cv, &ca);
  pthread_condattr_destroy(&ca);
  g->refs = 1;
  g->srv = srv;
  atomic_fetch_add(&srv->active_gens, 1);
  g->fd = fd;
  clock_gettime(CLOCK_MONOTONIC, &g->t0);
  return g;
}

void ms__gen_release(ms__gen_t *g) {
  if (g)
    gen_unref(g);
}

/* Engine callback (scheduler thread): one more token. */
static void on_token(void *user, int token) {
  ms__gen_t *g = user;
  pthread_mutex_lock(&g->mu);
  /* The engine never passes max_new_tokens; the check keeps a faulty
   * engine from writing past the buffer. */
  if (g->n_out < (size_t)g->sp.max_new_tokens)
    g->out[g->n_out++] = token;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* Engine callback (scheduler thread): the end; drops the engine's
 * reference. */
static void on_finish(void *user, const ms__finish_info_t *info) {
  ms__gen_t *g = user;
  pthread_mutex_lock(&g->mu);
  g->info = *info;
  if (info->error)
    snprintf(g->error, sizeof g->error, "%s", info->error);
  g->info.error = info->error ? g->error : NULL;
  g->finished = 1;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
  gen_unref(g);
}

int ms__gen_submit(ms__gen_t *g, const int *prompt, size_t n, const ms__sampling_t *sp) {
  g->sp = *sp;
  g->out = malloc((size_t)(sp->max_new_tokens > 0 ? sp->max_new_tokens : 1) * sizeof(int));
  if (!g->out)
    return MEMSLEEP_ENOMEM;
  ms__request_cb_t cb = {on_token, on_finish, g};
  pthread_mutex_lock(&g->mu);
  g->refs++;
  pthread_mutex_unlock(&g->mu);
  uint64_t id = 0;
  int rc = ms__engine_submit(g->srv->engine, prompt, n, sp, &cb, &id);
  pthread_mutex_lock(&g->mu);
  if (rc == 0) {
    g->id = id;
    g->submitted = 1;
  } else {
    g->refs--;
  }
  pthread_mutex_unlock(&g->mu);
  return rc;
}

void ms__gen_cancel(ms__gen_t *g) {
  pthread_mutex_lock(&g->mu);
  int send = g->submitted && !g->finished && !g->cancel_sent;
  g->cancel_sent |= send;
  uint64_t id = g->id;
  pthread_mutex_unlock(&g->mu);
  if (send)
    ms__engine_cancel(g->srv->engine, id);
}

/* 1 when the peer of fd has closed its end (or the socket failed). */
static int client_gone(int fd) {
  if (fd < 0)
    return 0;
  struct pollfd p = {.fd = fd, .events = POLLRDHUP};
  if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)))
    return 1;
  return 0;
}

int ms__gen_wait(ms__gen_t *g, size_t have, double timeout_s, size_t *n, int *finished) {
  int gone = 0;
  double until = timeout_s > 0 ? ms__gen_elapsed_s(g) + timeout_s : 0;
  pthread_mutex_lock(&g->mu);
  while (g->n_out <= have && !g->finished) {
    if (until > 0 && ms__gen_elapsed_s(g) >= until) {
      gone = -1;
      break;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += 100 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&g->cv, &g->mu, &ts);
    if (g->finished || g->cancel_sent)
      continue;
    int stop = atomic_load(&g->srv->stopping);
    if (stop || client_gone(g->fd)) {
      gone = !stop;
      pthread_mutex_unlock(&g->mu);
      ms__gen_cancel(g);
      pthread_mutex_lock(&g->mu);
    }
  }
  *n = g->n_out;
  *finished = g->finished;
  pthread_mutex_unlock(&g->mu);
  return gone;
}

int ms__gen_token(ms__gen_t *g, size_t i) {
  pthread_mutex_lock(&g->mu);
  int t = i < g->n_out ? g->out[i] : -1;
  pthread_mutex_unlock(&g->mu);
  return t;
}

void ms__gen_finish(ms__gen_t *g, ms__finish_info_t *info) {
  pthread_mutex_lock(&g->mu);
  *info = g->info;
  pthread_mutex_unlock(&g->mu);
}

double ms__gen_elapsed_s(const ms__gen_t *g) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)(t.tv_sec - g->t0.tv_sec) + (double)(t.tv_nsec - g->t0.tv_nsec) * 1e-9;
}

/* 1 when token t ends the request and so stays out of the text. */
static int is_trimmed(const ms__gen_t *g, int t) {
  for (int i = 0; i < g->sp.n_stop; i++)
    if (g->sp.stop_ids[i] == t)
      return 1;
  if (g->sp.ignore_eos)
    return 0;
  const ms__model_config_t *c = &ms__engine_model(g->srv->engine)->cfg;
  for (int i = 0; i < c->n_eos; i++)
    if (c->eos_token_ids[i] == t)
      return 1;
  return 0;
}

int ms__gen_ends_at(ms__gen_t *g, size_t n) {
  if (n == 0)
    return 0;
  return n >= (size_t)g->sp.max_new_tokens || is_trimmed(g, ms__gen_token(g, n - 1));
}

/* Appends n bytes to the held-back text. -1 when out of memory. */
static int pend_add(ms__gen_t *g, const char *s, size_t n) {
  if (g->pend_len + n > g->pend_cap) {
    size_t cap = g->pend_cap ? g->pend_cap : 64;
    while (cap < g->pend_len + n)
      cap *= 2;
    char *p = realloc(g->pend, cap);
    if (!p)
      return -1;
    g->pend = p;
    g->pend_cap = cap;
  }
  memcpy(g->pend + g->pend_len, s, n);
  g->pend_len += n;
  return 0;
}

json_t *ms__gen_text(ms__gen_t *g, size_t from, size_t to, int final) {
  ms__tokenizer_t *tok = g->srv->tok;
  if (!tok)
    return json_string("");
  int vocab = ms__tokenizer_vocab_size(tok);
  for (size_t i = from; i < to; i++) {
    int t = ms__gen_token(g, i);
    /* Ids the tokenizer does not know (a model's padded vocabulary) have no
     * text. */
    if (t < 0 || t >= vocab || is_trimmed(g, t))
      continue;
    char *s = NULL;
    size_t len = 0;
    if (ms__tokenizer_decode(tok, &t, 1, &s, &len) != 0)
      continue;
    int rc = pend_add(g, s, len);
    free(s);
    if (rc != 0)
      return NULL;
  }
  size_t take = final ? g->pend_len : ms__utf8_complete_prefix(g->pend, g->pend_len);
  json_t *j = ms__json_text(g->pend ? g->pend : "", take);
  if (!j)
    return NULL;
  if (take > 0) {
    memmove(g->pend, g->pend + take, g->pend_len - take);
    g->pend_len -= take;
  }
  return j;
}

json_t *ms__gen_finish_json(ms__gen_t *g) {
  ms__finish_info_t info;
  ms__gen_finish(g, &info);
  json_t *f = json_object();
  json_object_set_new(f, "type", json_string(ms__finish_name(info.reason)));
  switch (info.reason) {
  case MS__FINISH_LENGTH:
    json_object_set_new(f, "length", json_integer((json_int_t)info.completion_tokens));
    break;
  case MS__FINISH_STOP: {
    size_t n;
    int fin;
    ms__gen_wait(g, 0, 0, &n, &fin);
    json_object_set_new(f, "matched", n ? json_integer(ms__gen_token(g, n - 1)) : json_null());
    break;
  }
  case MS__FINISH_ABORT:
    json_object_set_new(f, "message",
                        json_string(atomic_load(&g->srv->stopping) ? "the server is shutting down"
                                                                   : "the request was cancelled"));
    break;
  case MS__FINISH_ERROR:
    json_object_set_new(f, "message",
                        ms__json_text(info.error ? info.error : "engine error",
                                      strlen(info.error ? info.error : "engine error")));
    break;
  }
  return f;
}
