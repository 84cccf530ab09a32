/*
 * engine.c - the inference engine: request queue, continuous batching
 * scheduler, KV block accounting and sampling around a compute backend.
 *
 * One scheduler thread owns the running batch. Each step it (1) finishes
 * requests cancelled since the last step, (2) admits waiting requests in
 * FIFO order while the KV pool has blocks for them (a request takes, at
 * admission, every block it can ever need, so a running request never
 * waits for memory; with the prefix cache on, its first full prompt blocks
 * may come from the cache), (3) runs one forward pass over the batch - a
 * prompt chunk for requests still prefilling, one token for each decoding
 * one - and (4) samples, reports and finishes requests. Between steps the
 * lock is free and nothing is in flight: that is where the sleep/wake
 * controller acts (see step_begin/step_end below): it closes admission
 * (waiting requests stay queued), waits for the running requests to finish
 * while the scheduler keeps stepping them, freezes stepping, or reloads the
 * weights under the step lock.
 *
 * Locking: e->mu guards the queue, the running array, every request's
 * `cancelled`, the KV bookkeeping, the control flags and the stats. The
 * forward pass, sampling and callbacks run without it; only the scheduler
 * thread changes the running array and a running request's tokens, so it
 * may read them unlocked. e->step_mu is held by the scheduler across each
 * forward pass and by a weight reload; it is always taken before e->mu,
 * never while holding it.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/error.h"
#include "engine/compute.h"
#include "engine/device.h"
#include "engine/engine.h"
#include "engine/kvcache.h"
#include "engine/sampler.h"
#include "memsleep/memsleep.h"

#define ERR_MAX 256

typedef struct request {
  uint64_t id;          /* what ms__engine_cancel names it by */
  int *tokens;          /* [n_prompt + max_new_tokens] prompt, then generated tokens */
  int n_prompt;         /* prompt tokens */
  int n_gen;            /* tokens generated so far */
  int n_done;           /* leading tokens whose keys and values are in the pool */
  ms__sampling_t sp;    /* sampling parameters (validated) */
  ms__request_cb_t cb;  /* the caller's callbacks */
  ms__rng_t rng;        /* seeded from sp.seed */
  uint32_t *blocks;     /* block table, [n_blocks] (heap) */
  size_t n_blocks;      /* blocks held */
  size_t cached_tokens; /* prompt tokens taken from the prefix cache */
  int cancelled;        /* cancel asked (under e->mu) */
  ms__finish_t reason;  /* how it ended (set when finished) */
  char error[ERR_MAX];  /* MS__FINISH_ERROR: the message */
  struct request *next; /* next in the waiting queue or a finished list */
} request_t;

struct ms__engine {
  ms__model_t model;                /* weights (tag "weights") and config */
  int model_loaded;                 /* model needs ms__model_free */
  ms__kv_cache_t kv;                /* KV pool (tag "kv_cache") and prefix cache */
  const ms__compute_ops_t *ops;     /* the compute backend */
  void *cctx;                       /* its context */
  ms__sampler_t sampler;            /* sampling scratch (scheduler thread only) */
  int vocab;                        /* model vocabulary */
  int block_tokens;                 /* tokens per KV block */
  int max_batch;                    /* running requests at most */
  int max_context;                  /* prompt + new tokens at most */
  int max_tokens;                   /* new tokens per forward pass at most */
  size_t max_queue;                 /* waiting requests at most */
  int prefix_cache;                 /* prefix cache on */
  float *logits;                    /* [max_batch][vocab] (tag "workspace"); NULL when the
                                       backend samples */
  int *next_tok;                    /* [max_batch] tokens the backend sampled */
  ms__batch_seq_t *batch;           /* [max_batch] this step's batch (heap) */
  request_t **batch_req;            /* [max_batch] request of each batch entry (heap) */
  int *ended;                       /* [max_batch] finish reason of each entry, or -1 (heap) */
  int *prompt_done;                 /* [max_batch] entry finished its prompt this step (heap) */
  pthread_mutex_t mu;               /* see the file comment */
  pthread_cond_t cv;                /* the scheduler sleeps here when idle */
  pthread_mutex_t step_mu;          /* held across a forward pass and a weight reload */
  pthread_cond_t idle_cv;           /* broadcast at every step end (wait_idle, freeze) */
  int admit_open;                   /* waiting requests may enter the batch */
  int frozen;                       /* no forward pass runs (pause with keep) */
  int in_step;                      /* a step is between step_begin and step_end */
  int weights_valid;                /* 0: submit refuses, nothing is admitted */
  char weights_reason[ERR_MAX];     /* why the weights are not valid */
  pthread_t thread;                 /* the scheduler */
  int thread_started;               /* thread needs joining */
  int stop;                         /* destroy asked: abort everything, exit */
  request_t *wait_head, *wait_tail; /* waiting queue, FIFO */
  size_t n_waiting;                 /* requests in it */
  request_t **running;              /* [max_batch] running requests, in admission order */
  size_t n_running;                 /* requests in it */
  int cancels;                      /* cancels asked since the last step */
  uint64_t next_id;                 /* id of the next request */
  uint64_t seed_state;              /* source of seeds for requests without one */
  ms__engine_stats_t st;            /* counters (running/waiting/kv filled on read) */
};

const char *ms__finish_name(ms__finish_t reason) {
  switch (reason) {
  case MS__FINISH_LENGTH:
    return "length";
  case MS__FINISH_STOP:
    return "stop";
  case MS__FINISH_ABORT:
    return "abort";
  case MS__FINISH_ERROR:
    return "error";
  }
  return "unknown";
}

void ms__sampling_default(ms__sampling_t *sp) {
  memset(sp, 0, sizeof *sp);
  sp->temperature = 0.0f;
  sp->top_k = 0;
  sp->top_p = 1.0f;
  sp->max_new_tokens = 16;
}

const ms__model_t *ms__engine_model(const ms__engine_t *e) {
  return &e->model;
}

static void request_free(request_t *r) {
  if (!r)
    return;
  free(r->tokens);
  free(r->blocks);
  free(r);
}

/* ---- finishing (under e->mu) and reporting (without it) ------------- */

/* Ends r: gives its blocks back and counts it; appends it to *fin for
 * deliver(). r must already be off the queue and the running array. */
static void finish_locked(ms__engine_t *e, request_t *r, ms__finish_t reason, request_t **fin) {
  ms__kv_release(&e->kv, r->blocks, r->n_blocks);
  r->n_blocks = 0;
  r->reason = reason;
  e->st.requests_total++;
  e->st.prompt_tokens_total += (uint64_t)r->n_prompt;
  e->st.cached_tokens_total += (uint64_t)r->cached_tokens;
  r->next = *fin;
  *fin = r;
}

/* Calls on_finish for every request of fin (in the order they finished)
 * and frees them. Runs without e->mu. */
static void deliver(request_t *fin) {
  request_t *rev = NULL;
  while (fin) {
    request_t *n = fin->next;
    fin->next = rev;
    rev = fin;
    fin = n;
  }
  while (rev) {
    request_t *r = rev;
    rev = r->next;
    if (r->cb.on_finish) {
      ms__finish_info_t info = {.reason = r->reason,
                                .prompt_tokens = (size_t)r->n_prompt,
                                .completion_tokens = (size_t)r->n_gen,
                                .cached_tokens = r->cached_tokens,
                                .error = r->reason == MS__FINISH_ERROR ? r->error : NULL};
      r->cb.on_finish(r->cb.user, &info);
    }
    request_free(r);
  }
}

static void running_remove(ms__engine_t *e, size_t i) {
  memmove(&e->running[i], &e->running[i + 1], sizeof(request_t *) * (e->n_running - i - 1));
  e->n_running--;
}

/* Finishes every cancelled request, waiting or running. */
static void reap_cancelled_locked(ms__engine_t *e, request_t **fin) {
  if (!e->cancels)
    return;
  e->cancels = 0;
  for (size_t i = 0; i < e->n_running;) {
    if (e->running[i]->cancelled) {
      request_t *r = e->running[i];
      running_remove(e, i);
      finish_locked(e, r, MS__FINISH_ABORT, fin);
    } else {
      i++;
    }
  }
  request_t **pp = &e->wait_head, *last = NULL;
  while (*pp) {
    request_t *r = *pp;
    if (r->cancelled) {
      *pp = r->next;
      e->n_waiting--;
      finish_locked(e, r, MS__FINISH_ABORT, fin);
    } else {
      last = r;
      pp = &r->next;
    }
  }
  e->wait_tail = last;
}

/* Admits waiting requests, oldest first, while the batch has room and the
 * pool has blocks: each takes every block it can need (prefix-cache hits
 * first). The head of the queue that must wait for blocks stops admission
 * (FIFO); one that could never fit is finished with an error. */
static void admit_locked(ms__engine_t *e, request_t **fin) {
  size_t bt = (size_t)e->block_tokens;
  while (e->wait_head && e->n_running < (size_t)e->max_batch) {
    request_t *r = e->wait_head;
    size_t need = ((size_t)r->n_prompt + (size_t)r->sp.max_new_tokens + bt - 1) / bt;
    if (need > e->kv.layout.num_blocks) {
      e->wait_head = r->next;
      if (!e->wait_head)
        e->wait_tail = NULL;
      e->n_waiting--;
      snprintf(r->error, sizeof r->error,
               "request needs %zu KV blocks of %zu tokens (%d prompt + %d new tokens); the pool "
               "has %zu",
               need, bt, r->n_prompt, r->sp.max_new_tokens, e->kv.layout.num_blocks);
      finish_locked(e, r, MS__FINISH_ERROR, fin);
      continue;
    }
    size_t matched = 0;
    if (e->prefix_cache && r->n_prompt > 1)
      matched = ms__kv_prefix_match(&e->kv, r->tokens, (size_t)r->n_prompt,
                                    ((size_t)r->n_prompt - 1) / bt, r->blocks);
    if (ms__kv_available(&e->kv) < need - matched) {
      ms__kv_release(&e->kv, r->blocks, matched);
      break;
    }
    ms__kv_alloc(&e->kv, need - matched, r->blocks + matched);
    r->n_blocks = need;
    r->n_done = (int)(matched * bt);
    r->cached_tokens = matched * bt;
    e->wait_head = r->next;
    if (!e->wait_head)
      e->wait_tail = NULL;
    e->n_waiting--;
    r->next = NULL;
    e->running[e->n_running++] = r;
  }
}

/* ---- one step ------------------------------------------------------- */

/* 1 if token ends the request by its stop ids or the model's EOS. */
static int is_stop(const ms__engine_t *e, const request_t *r, int token) {
  for (int i = 0; i < r->sp.n_stop; i++)
    if (r->sp.stop_ids[i] == token)
      return 1;
  if (!r->sp.ignore_eos)
    for (int i = 0; i < e->model.cfg.n_eos; i++)
      if (e->model.cfg.eos_token_ids[i] == token)
        return 1;
  return 0;
}

/* Runs one forward pass over the running batch and samples. Called without
 * the lock, with at least one running request. */
static void run_step(ms__engine_t *e) {
  size_t nb = 0;
  int budget = e->max_tokens;
  /* Decoding requests first (one token each), then prompt chunks in
   * admission order with what is left of the token budget. */
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; i < e->n_running; i++) {
      request_t *r = e->running[i];
      int known = r->n_prompt + r->n_gen;
      int decoding = r->n_done >= r->n_prompt;
      if ((pass == 0) != decoding || budget == 0)
        continue;
      int n = known - r->n_done;
      if (n > budget)
        n = budget;
      budget -= n;
      ms__batch_seq_t *b = &e->batch[nb];
      b->tokens = r->tokens + r->n_done;
      b->n_tokens = n;
      b->start_pos = r->n_done;
      b->block_table = r->blocks;
      int last = r->n_done + n == known;
      b->all_logits = 0;
      b->logits = NULL;
      b->token = NULL;
      if (last && e->ops->samples) {
        /* The backend samples: one draw per sampled token, as below. */
        b->token = &e->next_tok[nb];
        b->temperature = r->sp.temperature;
        b->top_k = r->sp.top_k;
        b->top_p = r->sp.top_p;
        b->u = r->sp.temperature > 0.0f && r->sp.top_k != 1 ? ms__rng_uniform(&r->rng) : 0.0;
      } else if (last) {
        b->logits = e->logits + nb * (size_t)e->vocab;
      }
      e->batch_req[nb++] = r;
    }
  int rc = e->ops->forward(e->cctx, e->batch, nb);
  request_t *fin = NULL;
  if (rc != 0) {
    const char *msg = memsleep_last_error();
    pthread_mutex_lock(&e->mu);
    for (size_t k = 0; k < nb; k++) {
      request_t *r = e->batch_req[k];
      snprintf(r->error, sizeof r->error, "forward pass failed: %s", msg);
      for (size_t i = 0; i < e->n_running; i++)
        if (e->running[i] == r) {
          running_remove(e, i);
          break;
        }
      finish_locked(e, r, MS__FINISH_ERROR, &fin);
    }
    e->st.steps++;
    pthread_mutex_unlock(&e->mu);
    deliver(fin);
    return;
  }
  /* Sample and report without the lock; decide who finishes. */
  int *ended = e->ended, *prompt_done = e->prompt_done;
  uint64_t sampled = 0; /* tokens of this step: counted as they come, not at finish */
  for (size_t k = 0; k < nb; k++) {
    request_t *r = e->batch_req[k];
    const ms__batch_seq_t *b = &e->batch[k];
    int was_prefill = r->n_done < r->n_prompt;
    r->n_done += b->n_tokens;
    ended[k] = -1;
    prompt_done[k] = was_prefill && r->n_done >= r->n_prompt;
    if (!b->logits && !b->token)
      continue;
    int tok = b->token ? *b->token
                       : ms__sample(&e->sampler, b->logits, e->vocab, r->sp.temperature,
                                    r->sp.top_k, r->sp.top_p, &r->rng);
    r->tokens[r->n_prompt + r->n_gen++] = tok;
    sampled++;
    if (r->cb.on_token)
      r->cb.on_token(r->cb.user, tok);
    if (is_stop(e, r, tok))
      ended[k] = MS__FINISH_STOP;
    else if (r->n_gen >= r->sp.max_new_tokens || r->n_prompt + r->n_gen >= e->max_context)
      ended[k] = MS__FINISH_LENGTH;
  }
  pthread_mutex_lock(&e->mu);
  for (size_t k = 0; k < nb; k++) {
    request_t *r = e->batch_req[k];
    if (prompt_done[k] && e->prefix_cache)
      ms__kv_prefix_insert(&e->kv, r->tokens, r->blocks,
                           (size_t)r->n_prompt / (size_t)e->block_tokens);
    if (ended[k] < 0)
      continue;
    for (size_t i = 0; i < e->n_running; i++)
      if (e->running[i] == r) {
        running_remove(e, i);
        break;
      }
    finish_locked(e, r, (ms__finish_t)ended[k], &fin);
  }
  e->st.generated_tokens_total += sampled;
  e->st.steps++;
  pthread_mutex_unlock(&e->mu);
  deliver(fin);
}

/* 1 when the scheduler has something to do now: cancels to reap (also
 * while frozen, so a client that leaves frees its blocks), running requests
 * to step unless frozen, waiting ones to admit when admission is open. */
static int has_work_locked(const ms__engine_t *e) {
  if (e->cancels)
    return 1;
  if (e->frozen)
    return 0;
  return e->n_running > 0 || (e->n_waiting > 0 && e->admit_open && e->weights_valid);
}

/* The scheduler thread. Each turn of the loop is one step; a step begins
 * when the thread takes the lock with work to do and ends when it takes it
 * again after the forward pass. The forward pass runs under step_mu so that
 * a weight reload (which takes it) falls between two steps. */
static void *scheduler_main(void *arg) {
  ms__engine_t *e = arg;
  pthread_mutex_lock(&e->mu);
  for (;;) {
    while (!e->stop && !has_work_locked(e))
      pthread_cond_wait(&e->cv, &e->mu);
    if (e->stop)
      break;
    /* step_begin: the batch may change only here, under the lock. */
    request_t *fin = NULL;
    reap_cancelled_locked(e, &fin);
    if (e->admit_open && e->weights_valid && !e->frozen)
      admit_locked(e, &fin);
    int work = e->n_running > 0 && !e->frozen;
    e->in_step = 1;
    pthread_mutex_unlock(&e->mu);
    deliver(fin);
    if (work) {
      pthread_mutex_lock(&e->step_mu);
      run_step(e);
      pthread_mutex_unlock(&e->step_mu);
    }
    pthread_mutex_lock(&e->mu);
    /* step_end: nothing in flight and every on_finish of this step has
     * run; a drain, a freeze or a release waits for this moment. With
     * nothing running, every block is free or evictable, so a waiting head
     * always fits (or is finished as never fitting): the loop cannot spin. */
    e->in_step = 0;
    pthread_cond_broadcast(&e->idle_cv);
  }
  /* Shutdown: everything still here ends with abort. */
  request_t *fin = NULL;
  while (e->n_running > 0) {
    request_t *r = e->running[e->n_running - 1];
    e->n_running--;
    finish_locked(e, r, MS__FINISH_ABORT, &fin);
  }
  while (e->wait_head) {
    request_t *r = e->wait_head;
    e->wait_head = r->next;
    finish_locked(e, r, MS__FINISH_ABORT, &fin);
  }
  e->wait_tail = NULL;
  e->n_waiting = 0;
  pthread_cond_broadcast(&e->idle_cv);
  pthread_mutex_unlock(&e->mu);
  deliver(fin);
  return NULL;
}

/* ---- the public functions ------------------------------------------- */

static void engine_free(ms__engine_t *e) {
  if (e->ops && e->cctx)
    e->ops->destroy(e->cctx);
  ms__kv_destroy(&e->kv);
  if (e->logits)
    memsleep_free(e->logits);
  ms__sampler_free(&e->sampler);
  free(e->batch);
  free(e->batch_req);
  free(e->ended);
  free(e->prompt_done);
  free(e->next_tok);
  free(e->running);
  if (e->model_loaded)
    ms__model_free(&e->model);
  pthread_cond_destroy(&e->cv);
  pthread_cond_destroy(&e->idle_cv);
  pthread_mutex_destroy(&e->step_mu);
  pthread_mutex_destroy(&e->mu);
  free(e);
}

int ms__engine_create(const ms__engine_options_t *opt, ms__engine_t **out) {
  if (!opt || !out || !opt->model_dir)
    return ms__fail(MEMSLEEP_EINVAL, "engine: options, model_dir and out are required");
  int rc = ms__device_check(opt->device);
  if (rc != 0)
    return rc;
  if (opt->threads < 0 || opt->kv_block_tokens < 0 || opt->max_batch < 0 || opt->max_context < 0)
    return ms__fail(MEMSLEEP_EINVAL,
                    "engine: negative option (threads %d, kv_block_tokens %d, max_batch %d, "
                    "max_context %d)",
                    opt->threads, opt->kv_block_tokens, opt->max_batch, opt->max_context);
  ms__engine_t *e = calloc(1, sizeof *e);
  if (!e)
    return ms__fail(MEMSLEEP_ENOMEM, "engine: state (%zu bytes)", sizeof *e);
  pthread_mutex_init(&e->mu, NULL);
  pthread_cond_init(&e->cv, NULL);
  pthread_mutex_init(&e->step_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&e->idle_cv, &ca);
  pthread_condattr_destroy(&ca);
  e->admit_open = 1;
  e->weights_valid = 1;
  rc = ms__model_load(opt->model_dir, "weights", MEMSLEEP_BACKUP, opt->device, opt->progress,
                      opt->progress_user, &e->model);
  if (rc != 0) {
    engine_free(e);
    return rc;
  }
  e->model_loaded = 1;
  const ms__model_config_t *cfg = &e->model.cfg;
  e->vocab = cfg->vocab_size;
  e->block_tokens = opt->kv_block_tokens ? opt->kv_block_tokens : 16;
  e->max_batch = opt->max_batch ? opt->max_batch : 32;
  e->max_queue = opt->max_queue ? opt->max_queue : 256;
  e->max_context = opt->max_context ? opt->max_context : cfg->max_position;
  e->prefix_cache = opt->prefix_cache != 0;
  e->max_tokens = e->max_batch > 256 ? e->max_batch : 256;
  if (e->max_context < 2 || e->max_context > cfg->max_position) {
    rc = ms__fail(MEMSLEEP_EINVAL, "engine: max_context %d outside [2, %d] (the model's)",
                  e->max_context, cfg->max_position);
    engine_free(e);
    return rc;
  }
  size_t blocks_per_ctx =
      ((size_t)e->max_context + (size_t)e->block_tokens - 1) / (size_t)e->block_tokens;
  size_t nblocks = opt->kv_blocks ? opt->kv_blocks : blocks_per_ctx * (size_t)e->max_batch;
  rc = ms__kv_create(&e->kv, cfg->num_layers, cfg->num_kv_heads * cfg->head_dim, e->block_tokens,
                     nblocks, opt->device);
  if (rc == 0)
    rc = ms__sampler_init(&e->sampler, e->vocab);
  e->ops = ms__compute_for(opt->device);
  /* Logits come to the host only for a backend that does not sample. */
  if (rc == 0 && !e->ops->samples)
    rc =
        memsleep_alloc((void **)&e->logits, sizeof(float) * (size_t)e->max_batch * (size_t)e->vocab,
                       MEMSLEEP_HOST, "workspace", 0);
  if (rc == 0) {
    e->batch = calloc((size_t)e->max_batch, sizeof *e->batch);
    e->batch_req = calloc((size_t)e->max_batch, sizeof *e->batch_req);
    e->running = calloc((size_t)e->max_batch, sizeof *e->running);
    e->ended = calloc((size_t)e->max_batch, sizeof *e->ended);
    e->prompt_done = calloc((size_t)e->max_batch, sizeof *e->prompt_done);
    e->next_tok = calloc((size_t)e->max_batch, sizeof *e->next_tok);
    if (!e->batch || !e->batch_req || !e->running || !e->ended || !e->prompt_done || !e->next_tok)
      rc = ms__fail(MEMSLEEP_ENOMEM, "engine: batch tables for %d requests", e->max_batch);
  }
  if (rc == 0) {
    rc = e->ops->create(&e->model, &e->kv.layout, opt->threads, e->max_tokens, e->max_context,
                        &e->cctx);
    if (rc == 0 && e->ops->set_graphs)
      e->ops->set_graphs(e->cctx, !opt->no_cuda_graphs);
  }
  if (rc == 0) {
    int prc = pthread_create(&e->thread, NULL, scheduler_main, e);
    if (prc != 0)
      rc = ms__fail(MEMSLEEP_ENOMEM, "engine: pthread_create (scheduler): error %d", prc);
    else
      e->thread_started = 1;
  }
  if (rc != 0) {
    engine_free(e);
    return rc;
  }
  e->next_id = 1;
  e->seed_state = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)e;
  *out = e;
  return 0;
}

void ms__engine_destroy(ms__engine_t *e) {
  if (!e)
    return;
  pthread_mutex_lock(&e->mu);
  e->stop = 1;
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
  if (e->thread_started)
    pthread_join(e->thread, NULL);
  engine_free(e);
}

/* Checks the sampling values; 0 or MEMSLEEP_EINVAL with the reason. */
static int check_sampling(const ms__sampling_t *sp, int vocab) {
  if (!(sp->temperature >= 0.0f) || sp->temperature > 1e6f)
    return ms__fail(MEMSLEEP_EINVAL, "sampling: temperature %g must be >= 0",
                    (double)sp->temperature);
  if (sp->top_k < 0)
    return ms__fail(MEMSLEEP_EINVAL, "sampling: top_k %d must be >= 0", sp->top_k);
  if (!(sp->top_p > 0.0f && sp->top_p <= 1.0f))
    return ms__fail(MEMSLEEP_EINVAL, "sampling: top_p %g must be in (0, 1]", (double)sp->top_p);
  if (sp->max_new_tokens < 1)
    return ms__fail(MEMSLEEP_EINVAL, "sampling: max_new_tokens %d must be >= 1",
                    sp->max_new_tokens);
  if (sp->n_stop < 0 || sp->n_stop > MS__STOP_IDS_MAX)
    return ms__fail(MEMSLEEP_EINVAL, "sampling: %d stop ids (at most %d)", sp->n_stop,
                    MS__STOP_IDS_MAX);
  for (int i = 0; i < sp->n_stop; i++)
    if (sp->stop_ids[i] < 0 || sp->stop_ids[i] >= vocab)
      return ms__fail(MEMSLEEP_EINVAL, "sampling: stop id %d out of [0, %d)", sp->stop_ids[i],
                      vocab);
  return 0;
}

int ms__engine_submit(ms__engine_t *e, const int *prompt, size_t n, const ms__sampling_t *sp,
                      const ms__request_cb_t *cb, uint64_t *id) {
  if (!e || !sp || (!prompt && n > 0))
    return ms__fail(MEMSLEEP_EINVAL, "submit: engine, prompt and sampling are required");
  if (n == 0)
    return ms__fail(MEMSLEEP_EINVAL, "submit: empty prompt");
  for (size_t i = 0; i < n; i++)
    if (prompt[i] < 0 || prompt[i] >= e->vocab)
      return ms__fail(MEMSLEEP_EINVAL, "submit: prompt token %zu is %d, out of [0, %d)", i,
                      prompt[i], e->vocab);
  int rc = check_sampling(sp, e->vocab);
  if (rc != 0)
    return rc;
  if (n + (size_t)sp->max_new_tokens > (size_t)e->max_context)
    return ms__fail(MEMSLEEP_EINVAL,
                    "submit: %zu prompt + %d new tokens exceed the context of %d tokens", n,
                    sp->max_new_tokens, e->max_context);
  request_t *r = calloc(1, sizeof *r);
  size_t bt = (size_t)e->block_tokens;
  if (r) {
    r->tokens = malloc(sizeof(int) * (n + (size_t)sp->max_new_tokens));
    r->blocks = malloc(sizeof(uint32_t) * ((n + (size_t)sp->max_new_tokens + bt - 1) / bt));
  }
  if (!r || !r->tokens || !r->blocks) {
    request_free(r);
    return ms__fail(MEMSLEEP_ENOMEM, "submit: request of %zu + %d tokens", n, sp->max_new_tokens);
  }
  memcpy(r->tokens, prompt, sizeof(int) * n);
  r->n_prompt = (int)n;
  r->sp = *sp;
  if (cb)
    r->cb = *cb;
  pthread_mutex_lock(&e->mu);
  if (e->stop) {
    pthread_mutex_unlock(&e->mu);
    request_free(r);
    return ms__fail(MEMSLEEP_ESTATE, "submit: the engine is shutting down");
  }
  if (!e->weights_valid) {
    char why[ERR_MAX];
    snprintf(why, sizeof why, "%s", e->weights_reason);
    pthread_mutex_unlock(&e->mu);
    request_free(r);
    return ms__fail(MS__EWEIGHTS, "%s", why);
  }
  if (e->n_waiting >= e->max_queue) {
    size_t q = e->n_waiting;
    pthread_mutex_unlock(&e->mu);
    request_free(r);
    return ms__fail(MS__EBUSY, "submit: the queue is full (%zu waiting, max_queue %zu)", q,
                    e->max_queue);
  }
  if (!r->sp.has_seed) {
    /* splitmix64 step: distinct, well-spread seeds for unseeded requests. */
    uint64_t z = (e->seed_state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    r->sp.seed = z ^ (z >> 31);
  }
  ms__rng_seed(&r->rng, r->sp.seed);
  r->id = e->next_id++;
  if (e->wait_tail)
    e->wait_tail->next = r;
  else
    e->wait_head = r;
  e->wait_tail = r;
  e->n_waiting++;
  if (id)
    *id = r->id;
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

int ms__engine_cancel(ms__engine_t *e, uint64_t id) {
  if (!e)
    return ms__fail(MEMSLEEP_EINVAL, "cancel: no engine");
  pthread_mutex_lock(&e->mu);
  request_t *found = NULL;
  for (size_t i = 0; i < e->n_running && !found; i++)
    if (e->running[i]->id == id)
      found = e->running[i];
  for (request_t *r = e->wait_head; r && !found; r = r->next)
    if (r->id == id)
      found = r;
  if (found) {
    found->cancelled = 1;
    e->cancels = 1;
    pthread_cond_broadcast(&e->cv);
  }
  pthread_mutex_unlock(&e->mu);
  if (!found)
    return ms__fail(MEMSLEEP_ENOTFOUND, "cancel: no waiting or running request %llu",
                    (unsigned long long)id);
  return 0;
}

int ms__engine_flush_cache(ms__engine_t *e) {
  if (!e)
    return ms__fail(MEMSLEEP_EINVAL, "flush_cache: no engine");
  pthread_mutex_lock(&e->mu);
  if (e->n_running > 0 || e->n_waiting > 0) {
    size_t run = e->n_running, wait = e->n_waiting;
    pthread_mutex_unlock(&e->mu);
    return ms__fail(MEMSLEEP_ESTATE, "flush_cache: %zu requests running, %zu waiting", run, wait);
  }
  ms__kv_prefix_reset(&e->kv);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

void ms__engine_stats(ms__engine_t *e, ms__engine_stats_t *out) {
  pthread_mutex_lock(&e->mu);
  *out = e->st;
  out->running = e->n_running;
  out->waiting = e->n_waiting;
  out->kv_blocks_total = e->kv.layout.num_blocks;
  out->kv_blocks_free = ms__kv_available(&e->kv);
  out->kv_block_tokens = (size_t)e->block_tokens;
  out->prefix_cached_blocks = e->kv.n_cached;
  pthread_mutex_unlock(&e->mu);
}

/* ---- control (the sleep/wake controller) ---------------------------- */

void ms__engine_set_admission(ms__engine_t *e, int open) {
  pthread_mutex_lock(&e->mu);
  e->admit_open = open != 0;
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
}

/* Absolute CLOCK_MONOTONIC time timeout_ms from now. */
static struct timespec deadline_after(long timeout_ms) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  t.tv_sec += timeout_ms / 1000;
  t.tv_nsec += (timeout_ms % 1000) * 1000000L;
  if (t.tv_nsec >= 1000000000L) {
    t.tv_sec++;
    t.tv_nsec -= 1000000000L;
  }
  return t;
}

/* Waits for "nothing runs and no step is in flight" rather than only
 * n_running == 0: the step that finished the last request delivers its
 * on_finish callbacks after dropping the lock, and a caller about to
 * release memory wants every drained request answered first. */
int ms__engine_wait_idle(ms__engine_t *e, long timeout_ms, size_t *running_at_start) {
  struct timespec until = deadline_after(timeout_ms > 0 ? timeout_ms : 0);
  pthread_mutex_lock(&e->mu);
  if (running_at_start)
    *running_at_start = e->n_running;
  int rc = 0;
  while (e->n_running > 0 || e->in_step) {
    if (e->stop) {
      rc = ms__fail(MEMSLEEP_ESTATE, "engine: shutting down while waiting for %zu requests",
                    e->n_running);
      break;
    }
    if (e->frozen && e->n_running > 0) {
      rc = ms__fail(MEMSLEEP_ESTATE,
                    "engine: %zu running requests cannot finish while stepping is frozen",
                    e->n_running);
      break;
    }
    if (timeout_ms < 0) {
      pthread_cond_wait(&e->idle_cv, &e->mu);
    } else if (pthread_cond_timedwait(&e->idle_cv, &e->mu, &until) != 0) {
      if (e->n_running > 0 || e->in_step) {
        rc = ms__fail(MS__ETIMEDOUT, "engine: %zu requests still running after %ld ms",
                      e->n_running, timeout_ms);
        break;
      }
    }
  }
  pthread_mutex_unlock(&e->mu);
  return rc;
}

void ms__engine_set_frozen(ms__engine_t *e, int frozen) {
  pthread_mutex_lock(&e->mu);
  e->frozen = frozen != 0;
  pthread_cond_broadcast(&e->cv);
  /* A step already past step_begin finishes first: after this returns no
   * forward pass runs until the unfreeze. */
  while (e->frozen && e->in_step && !e->stop)
    pthread_cond_wait(&e->idle_cv, &e->mu);
  pthread_mutex_unlock(&e->mu);
}

size_t ms__engine_abort_all(ms__engine_t *e) {
  pthread_mutex_lock(&e->mu);
  size_t n = 0;
  for (size_t i = 0; i < e->n_running; i++)
    if (!e->running[i]->cancelled) {
      e->running[i]->cancelled = 1;
      n++;
    }
  for (request_t *r = e->wait_head; r; r = r->next)
    if (!r->cancelled) {
      r->cancelled = 1;
      n++;
    }
  if (n) {
    e->cancels = 1;
    pthread_cond_broadcast(&e->cv);
  }
  pthread_mutex_unlock(&e->mu);
  return n;
}

int ms__engine_reset_prefix_cache(ms__engine_t *e) {
  pthread_mutex_lock(&e->mu);
  ms__kv_prefix_reset(&e->kv);
  pthread_mutex_unlock(&e->mu);
  return 0;
}

/* With nothing running, a step may still be delivering finished or
 * cancelled requests (it touches no KV block): wait for its end, at most
 * a few seconds (e->mu held). */
static void wait_quiet_step_locked(ms__engine_t *e) {
  struct timespec until = deadline_after(5000);
  while (e->n_running == 0 && e->in_step && !e->stop)
    if (pthread_cond_timedwait(&e->idle_cv, &e->mu, &until) != 0)
      break;
}

int ms__engine_kv_zero(ms__engine_t *e) {
  pthread_mutex_lock(&e->mu);
  int rc = 0;
  wait_quiet_step_locked(e);
  if (e->n_running > 0 || e->in_step)
    rc = ms__fail(MEMSLEEP_ESTATE, "kv_zero: %zu requests are running", e->n_running);
  else if (memsleep_is_asleep("kv_cache") == 1)
    rc = ms__fail(MEMSLEEP_ESTATE, "kv_zero: the KV pool (tag \"kv_cache\") is asleep");
  else
    rc = ms__kv_zero(&e->kv);
  pthread_mutex_unlock(&e->mu);
  return rc;
}

int ms__engine_kv_repair(ms__engine_t *e) {
  pthread_mutex_lock(&e->mu);
  int rc = 0;
  wait_quiet_step_locked(e);
  if (e->n_running > 0 || e->in_step)
    rc = ms__fail(MEMSLEEP_ESTATE, "kv_repair: %zu requests are running", e->n_running);
  else if (memsleep_is_asleep("kv_cache") == 1)
    rc = ms__fail(MEMSLEEP_ESTATE, "kv_repair: the KV pool (tag \"kv_cache\") is asleep");
  else
    ms__kv_prefix_reset(&e->kv);
  pthread_mutex_unlock(&e->mu);
  return rc;
}

int ms__engine_has_graphs(const ms__engine_t *e) {
  if (!e->ops->graph_stats)
    return 0;
  ms__graph_stats_t st;
  e->ops->graph_stats(e->cctx, &st);
  return st.enabled || st.graphs > 0;
}

/* The step lock keeps the graphs apart from a forward pass. */
int ms__engine_graphs_release(ms__engine_t *e) {
  if (!e->ops->graphs_release)
    return 0;
  pthread_mutex_lock(&e->step_mu);
  int rc = e->ops->graphs_release(e->cctx);
  pthread_mutex_unlock(&e->step_mu);
  return rc;
}

int ms__engine_graphs_resume(ms__engine_t *e) {
  if (!e->ops->graphs_resume)
    return 0;
  pthread_mutex_lock(&e->step_mu);
  int rc = e->ops->graphs_resume(e->cctx);
  pthread_mutex_unlock(&e->step_mu);
  return rc;
}

int ms__engine_graph_stats(ms__engine_t *e, ms__graph_stats_t *out) {
  if (!e->ops->graph_stats)
    return ms__fail(MEMSLEEP_EINVAL, "graph_stats: the %s backend has no CUDA graphs",
                    e->ops->name);
  /* Not under the step lock: the backend keeps a copy for readers. */
  e->ops->graph_stats(e->cctx, out);
  return 0;
}

int ms__engine_reload_weights(ms__engine_t *e, const char *dir) {
  if (!e || !dir)
    return ms__fail(MEMSLEEP_EINVAL, "reload_weights: engine and dir are required");
  /* The step lock, not e->mu: submits, cancels and stats go on while the
   * files are read; only the forward pass waits. */
  pthread_mutex_lock(&e->step_mu);
  int rc = ms__model_reload(&e->model, dir, NULL, NULL);
  pthread_mutex_lock(&e->mu);
  if (rc == 0)
    ms__kv_prefix_reset(&e->kv);
  pthread_mutex_unlock(&e->mu);
  pthread_mutex_unlock(&e->step_mu);
  return rc;
}

void ms__engine_set_weights_valid(ms__engine_t *e, int valid, const char *reason) {
  pthread_mutex_lock(&e->mu);
  e->weights_valid = valid != 0;
  snprintf(e->weights_reason, sizeof e->weights_reason, "%s",
           reason ? reason : "the weights are not valid");
  pthread_cond_broadcast(&e->cv);
  pthread_mutex_unlock(&e->mu);
}
