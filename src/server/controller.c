/*
 * controller.c - the sleep/wake controller (see controller.h and
 * docs/control-plane.md).
 *
 * Locking: c->mu guards the state. It is held for bookkeeping and for the
 * quick engine calls (admission, freeze, abort), never across a drain, a
 * memsleep transition or a weight reload: /is_sleeping must answer while a
 * release drains, and a resume must be refused (409) rather than wait. A
 * release marks itself `draining` for its whole length (drain and release);
 * a resume or a weight update marks the controller `busy`. Either makes the
 * other memory transitions refuse with 409, so at most one runs at a time.
 * Lock order: c->mu, then the engine's locks; the engine never calls back.
 */
#include "server/controller.h"

#include "core/error.h"

#include <malloc.h>
#include <memsleep/memsleep.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SANITIZE_ADDRESS__)
#define MS__PURGE_SANITIZER_HEAP 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MS__PURGE_SANITIZER_HEAP 1
#endif
#endif
#ifdef MS__PURGE_SANITIZER_HEAP
/* AddressSanitizer's own allocator (sanitizer/allocator_interface.h):
 * hands its quarantine and free caches back to the kernel. */
void __sanitizer_purge_allocator(void);
#endif

/* Slice of a long wait: how often a drain looks at the shutdown flag. */
#define WAIT_SLICE_MS 100L

static const char *const TAG_NAMES[MS__TAG_COUNT] = {"weights", "kv_cache", "workspace",
                                                     "cuda_graph"};

#define WEIGHTS_INVALID_REASON                                                                     \
  "the weights were released without backup (\"backup\": false) and have not been loaded "         \
  "since; POST /update_weights_from_disk {\"model_path\": DIR} first, then generate"

struct ms__ctl {
  pthread_mutex_t mu;     /* guards everything below */
  ms__engine_t *engine;   /* told what to do; never reads this state */
  atomic_int *stopping;   /* the server's shutdown flag, or NULL */
  int enabled;            /* memory saving on */
  unsigned released;      /* tags released */
  int draining;           /* a release is between its start and its end */
  unsigned draining_tags; /* its tags */
  int busy;               /* a resume or a weight update is running */
  ms__pause_mode_t pause; /* the user's pause */
  int weights_valid;      /* the weights hold a model's contents */
  unsigned available;     /* tags of this server */
};

const char *ms__pause_mode_name(ms__pause_mode_t m) {
  switch (m) {
  case MS__PAUSE_ABORT:
    return "abort";
  case MS__PAUSE_WAIT:
    return "wait";
  case MS__PAUSE_KEEP:
    return "keep";
  case MS__PAUSE_NONE:
    break;
  }
  return NULL;
}

const char *ms__tag_name(unsigned i) {
  return i < MS__TAG_COUNT ? TAG_NAMES[i] : "?";
}

char *ms__tag_list(unsigned set, char *buf, size_t len) {
  size_t o = 0;
  buf[0] = '\0';
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if (set & (1u << i)) {
      int n = snprintf(buf + o, len - o, "%s%s", o ? ", " : "", TAG_NAMES[i]);
      if (n < 0 || (size_t)n >= len - o)
        break;
      o += (size_t)n;
    }
  if (o == 0)
    snprintf(buf, len, "none");
  return buf;
}

ms__ctl_t *ms__ctl_create(ms__engine_t *e, int enabled, atomic_int *stopping) {
  ms__ctl_t *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  pthread_mutex_init(&c->mu, NULL);
  c->engine = e;
  c->stopping = stopping;
  c->enabled = enabled != 0;
  c->weights_valid = 1;
  c->available = MS__TAG_WEIGHTS | MS__TAG_KV_CACHE | MS__TAG_WORKSPACE;
  if (ms__engine_has_graphs(e))
    c->available |= MS__TAG_GRAPH;
  return c;
}

void ms__ctl_destroy(ms__ctl_t *c) {
  if (!c)
    return;
  pthread_mutex_destroy(&c->mu);
  free(c);
}

void ms__ctl_state(ms__ctl_t *c, ms__ctl_state_t *out) {
  pthread_mutex_lock(&c->mu);
  out->enabled = c->enabled;
  out->released = c->released;
  out->draining = c->draining;
  out->draining_tags = c->draining_tags;
  out->pause = c->pause;
  out->weights_valid = c->weights_valid;
  out->available = c->available;
  pthread_mutex_unlock(&c->mu);
}

/* Sets res to a refusal with status and message. */
static void refuse(ms__ctl_result_t *res, unsigned status, const char *fmt, ...) MS__PRINTF(3, 4);
static void refuse(ms__ctl_result_t *res, unsigned status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(res->error, sizeof res->error, fmt, ap);
  va_end(ap);
  res->status = status;
}

static void result_init(ms__ctl_t *c, ms__ctl_result_t *res) {
  memset(res, 0, sizeof *res);
  res->status = 200;
  (void)c;
}

/* Tells the engine whether waiting requests may enter the batch: only when
 * the user did not pause, nothing is released and no release drains. Every
 * transition ends here, so admission always follows the state. */
static void apply_admission_locked(ms__ctl_t *c) {
  int open = c->pause == MS__PAUSE_NONE && c->released == 0 && !c->draining;
  ms__engine_set_admission(c->engine, open);
}

static int stopping(const ms__ctl_t *c) {
  return c->stopping && atomic_load(c->stopping);
}

/* Fills names with the memsleep tag names of set (cuda_graph is the
 * engine's, not memsleep's); returns how many. */
static size_t tag_names(unsigned set, const char **names) {
  size_t n = 0;
  for (unsigned i = 0; i < MS__TAG_COUNT; i++)
    if ((set & (1u << i)) && (1u << i) != MS__TAG_GRAPH)
      names[n++] = TAG_NAMES[i];
  return n;
}

/* Measured resident bytes of the server's tags together (the graphs'
 * executables as instantiating them took). */
static size_t resident_now(ms__ctl_t *c) {
  size_t sum = 0;
  for (unsigned i = 0; i < MS__TAG_COUNT; i++) {
    memsleep_stats_t st;
    if ((1u << i) != MS__TAG_GRAPH && memsleep_measure(TAG_NAMES[i], &st) == 0)
      sum += st.resident_bytes;
  }
  ms__graph_stats_t gs;
  if ((c->available & MS__TAG_GRAPH) && ms__engine_graph_stats(c->engine, &gs) == 0)
    sum += gs.exec_bytes;
  return sum;
}

/* Refuses tags this server does not have (cuda_graph without graphs). 1
 * if refused (c->mu held; the caller unlocks). */
static int refuse_unavailable_locked(ms__ctl_t *c, unsigned tags, ms__ctl_result_t *res) {
  unsigned bad = tags & ~c->available;
  if (!bad)
    return 0;
  char list[128], list2[128];
  refuse(res, 400,
         "%s: no such tag on this server (cuda_graph needs --device cuda:N with CUDA graphs on); "
         "its tags are %s; nothing changed",
         ms__tag_list(bad, list, sizeof list), ms__tag_list(c->available, list2, sizeof list2));
  return 1;
}

/* Reserved bytes of the tags of set (what a resume must map). */
static size_t reserved_of(unsigned set) {
  size_t sum = 0;
  for (unsigned i = 0; i < MS__TAG_COUNT; i++) {
    memsleep_stats_t st;
    if ((set & (1u << i)) && memsleep_stats(TAG_NAMES[i], &st) == 0)
      sum += st.reserved_bytes;
  }
  return sum;
}

/* Waits for the engine to have no running request, in slices so that a
 * shutdown is noticed; *drained gets how many ran when it began. Returns
 * the engine's code, or MEMSLEEP_ESTATE when the server stops. timeout_ms
 * < 0: no limit. */
static int drain(ms__ctl_t *c, long timeout_ms, size_t *drained) {
  long left = timeout_ms;
  int first = 1;
  for (;;) {
    if (stopping(c))
      return MEMSLEEP_ESTATE;
    long slice = left < 0 || left > WAIT_SLICE_MS ? WAIT_SLICE_MS : left;
    size_t at_start = 0;
    int rc = ms__engine_wait_idle(c->engine, slice, &at_start);
    if (first && drained)
      *drained = at_start;
    first = 0;
    if (rc != MS__ETIMEDOUT)
      return rc;
    if (left >= 0) {
      left -= slice;
      if (left <= 0)
        return MS__ETIMEDOUT;
    }
  }
}

/* Ends a release that did not happen: nothing is released, admission is
 * as the state says (reopened unless the user paused or tags sleep). */
static void release_cancel(ms__ctl_t *c) {
  pthread_mutex_lock(&c->mu);
  c->draining = 0;
  c->draining_tags = 0;
  apply_admission_locked(c);
  pthread_mutex_unlock(&c->mu);
}

static void *graphs_release_main(void *engine) {
  ms__engine_graphs_release(engine);
  return NULL;
}

/*
 * The order is the point: admission closes first (so "no request runs"
 * lasts), then the running requests finish (rule 1: memory is never taken
 * from under a forward pass), then the prefix cache forgets the KV blocks
 * that are about to lose their contents (rule 8), then memsleep releases,
 * then malloc_trim hands the heap's free pages back (rule 13). The state
 * says "released" only after memsleep succeeded.
 */
void ms__ctl_release(ms__ctl_t *c, unsigned tags, int tags_given, int backup, long timeout_ms,
                     ms__ctl_result_t *res) {
  result_init(c, res);
  char list[128], list2[128];
  pthread_mutex_lock(&c->mu);
  if (!c->enabled) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 400,
           "memory saving is off (the server was started with --disable-memory-saver): nothing "
           "can be released; restart the server without --disable-memory-saver to use "
           "release_memory_occupation");
    return;
  }
  if (c->draining) {
    unsigned d = c->draining_tags;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "a release of %s is still draining; retry after it completes",
           ms__tag_list(d, list, sizeof list));
    return;
  }
  if (c->busy) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409,
           "a resume or weight update is in progress; retry the release after it "
           "completes");
    return;
  }
  if (!tags_given) {
    tags = c->available & ~c->released;
    if (tags == 0) {
      pthread_mutex_unlock(&c->mu);
      refuse(res, 409,
             "nothing to release: every tag (%s) is already released; "
             "resume_memory_occupation first",
             ms__tag_list(c->available, list, sizeof list));
      return;
    }
  } else if (refuse_unavailable_locked(c, tags, res)) {
    pthread_mutex_unlock(&c->mu);
    return;
  } else if (tags & c->released) {
    unsigned both = tags & c->released;
    unsigned rel = c->released;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409,
           "%s already released (released now: %s); nothing was released; name only awake tags "
           "or resume first",
           ms__tag_list(both, list, sizeof list), ms__tag_list(rel, list2, sizeof list2));
    return;
  }
  if (c->pause == MS__PAUSE_KEEP) {
    ms__engine_stats_t st;
    ms__engine_stats(c->engine, &st);
    if (st.running > 0) {
      pthread_mutex_unlock(&c->mu);
      refuse(res, 409,
             "the scheduler is paused with mode keep and %zu requests are frozen in place: they "
             "cannot drain; call continue_generation or pause_generation with mode abort first",
             st.running);
      return;
    }
  }
  c->draining = 1;
  c->draining_tags = tags;
  apply_admission_locked(c);
  pthread_mutex_unlock(&c->mu);

  int rc = drain(c, timeout_ms, &res->drained_requests);
  if (rc != 0) {
    ms__engine_stats_t st;
    ms__engine_stats(c->engine, &st);
    release_cancel(c);
    if (stopping(c))
      refuse(res, 503, "the server is shutting down; nothing was released");
    else if (rc == MS__ETIMEDOUT)
      refuse(res, 504,
             "the drain timed out after %.3g s with %zu requests still running; the release was "
             "cancelled and nothing was released; retry with a larger \"timeout\", or "
             "pause_generation with mode abort first",
             (double)timeout_ms / 1000.0, st.running);
    else
      refuse(res, 409,
             "%zu running requests cannot drain: the scheduler was frozen by pause_generation "
             "with mode keep; call continue_generation or pause_generation with mode abort "
             "first; nothing was released",
             st.running);
    return;
  }
  if ((tags & MS__TAG_KV_CACHE) && ms__engine_reset_prefix_cache(c->engine) != 0) {
    release_cancel(c);
    refuse(res, 500,
           "cannot reset the prefix cache (%s), so kv_cache cannot be released safely; nothing "
           "was released",
           memsleep_last_error());
    return;
  }
  res->resident_before = resident_now(c);
  const char *names[MS__TAG_COUNT];
  size_t n = tag_names(tags, names);
  /* The graphs' executables go on a thread of their own, beside memsleep's
   * copies (destroying them cannot fail, and they come back should
   * memsleep's part fail). */
  pthread_t gt;
  int graph_thread =
      (tags & MS__TAG_GRAPH) && pthread_create(&gt, NULL, graphs_release_main, c->engine) == 0;
  if ((tags & MS__TAG_GRAPH) && !graph_thread)
    ms__engine_graphs_release(c->engine);
  rc = n > 0 ? memsleep_release_flags(names, n, backup ? 0 : MEMSLEEP_RELEASE_NO_BACKUP) : 0;
  if (graph_thread)
    pthread_join(gt, NULL);
  if (rc != 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", memsleep_last_error());
    if (tags & MS__TAG_GRAPH)
      ms__engine_graphs_resume(c->engine);
    release_cancel(c);
    refuse(res, 500,
           "releasing %s failed (%s): %s; memsleep rolled back and nothing was released; retry",
           ms__tag_list(tags, list, sizeof list), memsleep_strerror(rc), msg);
    return;
  }
  /* The heap's free chunks (freed request tables, JSON) go back too; in
   * an AddressSanitizer build the heap is the sanitizer's. */
  malloc_trim(0);
#ifdef MS__PURGE_SANITIZER_HEAP
  __sanitizer_purge_allocator();
#endif
  res->resident_after = resident_now(c);

  pthread_mutex_lock(&c->mu);
  c->released |= tags;
  if ((tags & MS__TAG_WEIGHTS) && !backup && c->weights_valid) {
    c->weights_valid = 0;
    ms__engine_set_weights_valid(c->engine, 0, WEIGHTS_INVALID_REASON);
  }
  c->draining = 0;
  c->draining_tags = 0;
  apply_admission_locked(c);
  res->tags = tags;
  res->released = c->released;
  pthread_mutex_unlock(&c->mu);
}

/*
 * Wakes the tags, then zeroes the KV pool before anything can use it (rule
 * 9: admission is still closed, since the tags count as released until the
 * state is committed at the end).
 */
void ms__ctl_resume(ms__ctl_t *c, unsigned tags, int tags_given, ms__ctl_result_t *res) {
  result_init(c, res);
  char list[128], list2[128];
  pthread_mutex_lock(&c->mu);
  if (!c->enabled) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 400,
           "memory saving is off (the server was started with --disable-memory-saver): nothing "
           "is released and nothing can be resumed; restart the server without "
           "--disable-memory-saver to use resume_memory_occupation");
    return;
  }
  if (c->draining) {
    unsigned d = c->draining_tags;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "release of %s is still draining; retry resume after it completes",
           ms__tag_list(d, list, sizeof list));
    return;
  }
  if (c->busy) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "another resume or a weight update is in progress; retry after it completes");
    return;
  }
  if (!tags_given) {
    tags = c->released;
    if (tags == 0) {
      /* Rule 6: nothing to wake, and the user's pause stays as it is. */
      res->released = 0;
      pthread_mutex_unlock(&c->mu);
      return;
    }
  } else if (refuse_unavailable_locked(c, tags, res)) {
    pthread_mutex_unlock(&c->mu);
    return;
  } else if (tags & ~c->released) {
    unsigned awake = tags & ~c->released;
    unsigned rel = c->released;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "%s not released (released now: %s); nothing was resumed",
           ms__tag_list(awake, list, sizeof list), ms__tag_list(rel, list2, sizeof list2));
    return;
  }
  c->busy = 1;
  pthread_mutex_unlock(&c->mu);

  const char *names[MS__TAG_COUNT];
  size_t n = tag_names(tags, names);
  /* The graphs' executables come back when next used, once the memory
   * their kernels take is awake (the driver checks those addresses). */
  int rc = n > 0 ? memsleep_resume(names, n) : 0;
  if (rc == 0 && (tags & MS__TAG_GRAPH))
    rc = ms__engine_graphs_resume(c->engine);
  if (rc == 0 && (tags & MS__TAG_KV_CACHE) && ms__engine_kv_repair(c->engine) != 0) {
    /* Never let an unrepaired pool be used: put kv_cache back to sleep. */
    char msg[512];
    snprintf(msg, sizeof msg, "%s", memsleep_last_error());
    const char *kv = "kv_cache";
    memsleep_release(&kv, 1);
    pthread_mutex_lock(&c->mu);
    c->released |= MS__TAG_KV_CACHE;
    c->released &= ~(tags & ~MS__TAG_KV_CACHE);
    c->busy = 0;
    apply_admission_locked(c);
    pthread_mutex_unlock(&c->mu);
    refuse(res, 500,
           "the KV pool could not be repaired after the wake (%s); kv_cache stays "
           "released; retry the resume",
           msg);
    return;
  }
  if (rc != 0) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", memsleep_last_error());
    pthread_mutex_lock(&c->mu);
    c->busy = 0;
    pthread_mutex_unlock(&c->mu);
    if (rc == MEMSLEEP_ENOMEM) {
      res->retry_after_s = 5;
      refuse(res, 503,
             "not enough memory to resume %s (%zu bytes needed): %s; the tags stay released; "
             "free memory and retry",
             ms__tag_list(tags, list, sizeof list), reserved_of(tags), msg);
    } else {
      refuse(res, 500, "resuming %s failed (%s): %s; the tags stay released; retry",
             ms__tag_list(tags, list, sizeof list), memsleep_strerror(rc), msg);
    }
    return;
  }
  pthread_mutex_lock(&c->mu);
  c->released &= ~tags;
  c->busy = 0;
  apply_admission_locked(c);
  res->tags = tags;
  res->released = c->released;
  pthread_mutex_unlock(&c->mu);
}

void ms__ctl_pause(ms__ctl_t *c, ms__pause_mode_t mode, ms__ctl_result_t *res) {
  result_init(c, res);
  pthread_mutex_lock(&c->mu);
  ms__pause_mode_t prev = c->pause;
  c->pause = mode;
  /* Admission closes before anything else, so no request slips into the
   * batch between the abort (or freeze) and the answer. */
  apply_admission_locked(c);
  if (mode == MS__PAUSE_KEEP)
    ms__engine_set_frozen(c->engine, 1);
  else if (prev == MS__PAUSE_KEEP)
    ms__engine_set_frozen(c->engine, 0);
  if (mode == MS__PAUSE_ABORT)
    res->aborted = ms__engine_abort_all(c->engine);
  pthread_mutex_unlock(&c->mu);
  if (mode != MS__PAUSE_WAIT)
    return;
  /* wait: answer once the running requests have finished, or when the
   * pause changed meanwhile (continue, keep), or at shutdown. */
  for (;;) {
    int rc = ms__engine_wait_idle(c->engine, WAIT_SLICE_MS, NULL);
    if (rc == 0)
      return;
    pthread_mutex_lock(&c->mu);
    int same = c->pause == MS__PAUSE_WAIT;
    pthread_mutex_unlock(&c->mu);
    if (stopping(c)) {
      refuse(res, 503, "the server is shutting down");
      return;
    }
    if (!same || rc != MS__ETIMEDOUT)
      return;
  }
}

void ms__ctl_continue(ms__ctl_t *c, ms__ctl_result_t *res) {
  result_init(c, res);
  char list[128];
  pthread_mutex_lock(&c->mu);
  if (c->draining) {
    unsigned d = c->draining_tags;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409,
           "a release of %s is draining; the scheduler stays paused while memory is released or "
           "releasing; resume_memory_occupation after the release completes",
           ms__tag_list(d, list, sizeof list));
    return;
  }
  if (c->released) {
    unsigned r = c->released;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409,
           "memory is released (%s): the scheduler cannot run without it; "
           "resume_memory_occupation first",
           ms__tag_list(r, list, sizeof list));
    return;
  }
  res->was = c->pause;
  if (c->pause == MS__PAUSE_KEEP)
    ms__engine_set_frozen(c->engine, 0);
  c->pause = MS__PAUSE_NONE;
  apply_admission_locked(c);
  pthread_mutex_unlock(&c->mu);
}

void ms__ctl_update_weights(ms__ctl_t *c, const char *dir, ms__ctl_result_t *res) {
  result_init(c, res);
  char list[128];
  pthread_mutex_lock(&c->mu);
  if (c->draining) {
    unsigned d = c->draining_tags;
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "a release of %s is draining; retry the update after it completes",
           ms__tag_list(d, list, sizeof list));
    return;
  }
  if (c->busy) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409, "a resume or another weight update is in progress; retry after it completes");
    return;
  }
  if (c->released & MS__TAG_WEIGHTS) {
    pthread_mutex_unlock(&c->mu);
    refuse(res, 409,
           "the weights are released: resume weights first (POST /resume_memory_occupation "
           "{\"tags\": [\"weights\"]}), then update them");
    return;
  }
  c->busy = 1;
  pthread_mutex_unlock(&c->mu);

  int rc = ms__engine_reload_weights(c->engine, dir);
  char msg[768];
  snprintf(msg, sizeof msg, "%s", rc ? memsleep_last_error() : "");
  pthread_mutex_lock(&c->mu);
  c->busy = 0;
  if (rc == 0) {
    c->weights_valid = 1;
    ms__engine_set_weights_valid(c->engine, 1, NULL);
  } else if (strstr(msg, "partly overwritten")) {
    /* A read failed after every check passed: the weights are a mix. */
    c->weights_valid = 0;
    ms__engine_set_weights_valid(c->engine, 0,
                                 "a weight update failed half-way and the weights are partly "
                                 "overwritten; POST /update_weights_from_disk again");
  }
  apply_admission_locked(c);
  pthread_mutex_unlock(&c->mu);
  if (rc == 0)
    return;
  if (strstr(msg, "partly overwritten"))
    refuse(res, 500,
           "updating the weights from %.512s failed half-way: %s; generation is refused until "
           "an update succeeds",
           dir, msg);
  else if (rc == MEMSLEEP_EINVAL || rc == MEMSLEEP_ENOTFOUND)
    refuse(res, 400, "cannot load the weights of %.512s: %s; the old weights stay", dir, msg);
  else if (rc == MEMSLEEP_ESTATE)
    refuse(res, 409, "%s; resume weights first", msg);
  else
    refuse(res, 500, "updating the weights from %.512s failed (%s): %s", dir, memsleep_strerror(rc),
           msg);
}
