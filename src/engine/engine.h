/*
 * engine.h - the inference engine: requests in, tokens out.
 *
 * The engine owns the model (weights in memsleep tag "weights"), the paged
 * KV cache (tag "kv_cache"), the compute backend and its scratch memory (tag
 * "workspace"), and one scheduler thread that runs continuous batching: each
 * step it admits waiting requests into the running batch (prefill, reusing
 * KV blocks of identical prompt prefixes when the prefix cache is on), runs
 * one forward pass over the batch, samples one token per running request
 * and reports it. The HTTP server knows only this header.
 *
 * Threading: every function here may be called from any thread. Callbacks
 * run on the scheduler thread, must be quick and must not call back into
 * the engine except ms__engine_stats.
 *
 * Errors: 0 or a negative MEMSLEEP_E* code (or MS__EBUSY), with the message
 * in memsleep_last_error().
 */
#ifndef MEMSLEEP_ENGINE_ENGINE_H
#define MEMSLEEP_ENGINE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/compute.h"
#include "engine/model.h"

/* The waiting queue is full: try again later (HTTP 503 with Retry-After). */
#define MS__EBUSY (-100)
/* A wait ran out of time (ms__engine_wait_idle). */
#define MS__ETIMEDOUT (-101)
/* The weights are not valid (released without backup and not reloaded):
 * submit refuses new requests; memsleep_last_error() says why. */
#define MS__EWEIGHTS (-102)

#define MS__STOP_IDS_MAX 16

typedef enum ms__finish {
  MS__FINISH_LENGTH, /* max_new_tokens or the context length reached */
  MS__FINISH_STOP,   /* an EOS or stop token was sampled */
  MS__FINISH_ABORT,  /* cancelled (client gone, pause with abort, shutdown) */
  MS__FINISH_ERROR   /* the engine failed (message in the finish callback) */
} ms__finish_t;

/* "length", "stop", "abort", "error" */
const char *ms__finish_name(ms__finish_t reason);

typedef struct ms__sampling {
  float temperature;              /* 0: greedy (argmax) */
  int top_k;                      /* keep the k most likely (0: all) */
  float top_p;                    /* keep the smallest set with this mass (1: all) */
  uint64_t seed;                  /* with has_seed: same seed, same prompt -> same tokens */
  int has_seed;                   /* 0: the engine picks a seed */
  int max_new_tokens;             /* >= 1 */
  int stop_ids[MS__STOP_IDS_MAX]; /* tokens that end the request (kept in output) */
  int n_stop;
  int ignore_eos; /* do not stop at the model's EOS tokens */
} ms__sampling_t;

/* Sets the defaults: greedy, top_k 0, top_p 1, max_new_tokens 16. */
void ms__sampling_default(ms__sampling_t *sp);

typedef struct ms__finish_info {
  ms__finish_t reason;
  size_t prompt_tokens;
  size_t completion_tokens;
  size_t cached_tokens; /* prompt tokens whose KV came from the prefix cache */
  const char *error;    /* MS__FINISH_ERROR: what failed; else NULL */
} ms__finish_info_t;

/* Events of one request, called on the scheduler thread. on_token is
 * called once per generated token, in order; on_finish exactly once, last
 * (also for a request cancelled before it ran). After on_finish the engine
 * no longer touches user. */
typedef struct ms__request_cb {
  void (*on_token)(void *user, int token);
  void (*on_finish)(void *user, const ms__finish_info_t *info);
  void *user;
} ms__request_cb_t;

typedef struct ms__engine_options {
  const char *model_dir;    /* Hugging Face style directory */
  int device;               /* MEMSLEEP_HOST (CPU engine) or a CUDA ordinal (GPU engine) */
  int threads;              /* compute threads (0: one per core) */
  int kv_block_tokens;      /* tokens per KV block (0: 16) */
  size_t kv_blocks;         /* blocks in the pool (0: max_batch full contexts) */
  int max_batch;            /* running requests at most (0: 32) */
  size_t max_queue;         /* waiting requests at most (0: 256); more: MS__EBUSY */
  int max_context;          /* prompt + new tokens at most (0: the model's) */
  int prefix_cache;         /* reuse KV blocks of identical prompt prefixes */
  int no_cuda_graphs;       /* 1: the CUDA backend launches decode steps without graphs */
  ms__progress_fn progress; /* weight loading progress, may be NULL */
  void *progress_user;
} ms__engine_options_t;

typedef struct ms__engine ms__engine_t;

/* Loads the model, allocates the KV cache and workspace, starts the
 * scheduler thread. On failure nothing stays allocated. */
int ms__engine_create(const ms__engine_options_t *opt, ms__engine_t **out);

/* Stops the scheduler (running and waiting requests finish with abort) and
 * frees everything. NULL is fine. */
void ms__engine_destroy(ms__engine_t *e);

/* The loaded model (config, weight bytes). Valid until destroy. */
const ms__model_t *ms__engine_model(const ms__engine_t *e);

/* Queues a request. The prompt is copied. MEMSLEEP_EINVAL: empty prompt, a
 * token id out of [0, vocab), prompt + max_new_tokens over max_context, bad
 * sampling values (negative temperature, top_p outside (0,1], ...);
 * MS__EBUSY: the queue is full. *id (may be NULL) identifies it for
 * ms__engine_cancel. */
int ms__engine_submit(ms__engine_t *e, const int *prompt, size_t n, const ms__sampling_t *sp,
                      const ms__request_cb_t *cb, uint64_t *id);

/* Ends a request early (finish reason abort) and frees its KV blocks; its
 * on_finish runs on the scheduler thread soon after. Unknown or finished
 * id: MEMSLEEP_ENOTFOUND. */
int ms__engine_cancel(ms__engine_t *e, uint64_t id);

/* Drops the prefix cache. MEMSLEEP_ESTATE while requests run or wait. */
int ms__engine_flush_cache(ms__engine_t *e);

typedef struct ms__engine_stats {
  size_t running;          /* requests in the batch */
  size_t waiting;          /* requests queued */
  uint64_t requests_total; /* finished requests, any reason */
  uint64_t prompt_tokens_total;
  uint64_t generated_tokens_total; /* counted at the end of each step, as tokens are made */
  uint64_t cached_tokens_total;    /* prompt tokens served from the prefix cache */
  size_t kv_blocks_total;
  size_t kv_blocks_free; /* blocks a new request can take: free, or held by the prefix
                            cache alone (evicted when needed) */
  size_t kv_block_tokens;
  size_t prefix_cached_blocks; /* blocks held by the prefix cache */
  uint64_t steps;              /* forward passes run */
} ms__engine_stats_t;

void ms__engine_stats(ms__engine_t *e, ms__engine_stats_t *out);

/* ---- control: what the sleep/wake controller (src/server/controller.c)
 * drives. Each call is one transition under the engine's lock; none of
 * them blocks a forward pass except ms__engine_reload_weights, which waits
 * for the step in flight to end. ---------------------------------------- */

/* Opens (open != 0) or closes admission. While it is closed the scheduler
 * keeps stepping the running requests but moves no waiting request into
 * the batch; new submits still queue (up to max_queue, then MS__EBUSY) and
 * run once it reopens. Open by default. */
void ms__engine_set_admission(ms__engine_t *e, int open);

/* Waits until no request runs and no step is in flight (the scheduler keeps
 * stepping the running ones meanwhile), at most timeout_ms (< 0: no limit).
 * *running_at_start (may be NULL) gets how many ran when the wait began.
 * Returns 0; MS__ETIMEDOUT when requests still run after timeout_ms;
 * MEMSLEEP_ESTATE when stepping is frozen with requests running (they can
 * never finish) or the engine is shutting down. Callers close admission
 * first, or "no request runs" may not last. */
int ms__engine_wait_idle(ms__engine_t *e, long timeout_ms, size_t *running_at_start);

/* Freezes (frozen != 0) or unfreezes stepping: a frozen scheduler runs no
 * forward pass, so running requests stay in place, holding their KV
 * blocks, and go on token-identically after the unfreeze. Returns once no
 * step is in flight. Cancelled requests are still finished while frozen. */
void ms__engine_set_frozen(ms__engine_t *e, int frozen);

/* Ends every running and waiting request with finish reason abort (their
 * on_finish runs on the scheduler thread soon after, also while frozen).
 * Returns how many were ended. */
size_t ms__engine_abort_all(ms__engine_t *e);

/* Drops the prefix cache (the blocks it alone held become free; running
 * requests keep theirs). Unlike ms__engine_flush_cache this is allowed with
 * requests waiting, and with requests running (the sleep/wake controller
 * calls it after a drain, when none do). Cannot fail today; returns 0 so
 * that a release can fail closed should it ever (rule 8). */
int ms__engine_reset_prefix_cache(ms__engine_t *e);

/* Zeroes the KV pool (after a wake of "kv_cache": its contents are
 * undefined). MEMSLEEP_ESTATE while requests run (their keys and values
 * would be lost) or while "kv_cache" is asleep. */
int ms__engine_kv_zero(ms__engine_t *e);

/* Repairs the KV cache after a wake of "kv_cache" (rule 9), cheaply: the
 * pool's allocations are MEMSLEEP_ZERO, so memsleep_resume has just made
 * them read as zeros (fresh pages on the host, the backend's zero on a GPU)
 * and writing zeros again would only cost time (12 ms per 128 MiB on a small
 * machine); what is left to repair is the bookkeeping - the prefix cache is
 * dropped so no table points at discarded keys and values. Checks as
 * ms__engine_kv_zero (MEMSLEEP_ESTATE while requests run or "kv_cache" is
 * asleep). */
int ms__engine_kv_repair(ms__engine_t *e);

/* The CUDA graphs of decode steps (the server's tag "cuda_graph"): 1 if
 * the backend has them (the CUDA one, graphs not switched off), else 0. */
int ms__engine_has_graphs(const ms__engine_t *e);

/* Destroys the graphs' executables (their device memory goes back; the
 * graphs are kept) / lets them come back: each is instantiated again from
 * its kept graph, without a recapture, when a decode step next uses it
 * (the driver checks the addresses the kernels take, so the memory must
 * be awake by then; a step whose executable cannot be made runs without
 * it). Meanwhile decode steps run without graphs, with the same results.
 * Both wait for a forward pass in flight; 0 (also when the backend has no
 * graphs) or a negative code. */
int ms__engine_graphs_release(ms__engine_t *e);
int ms__engine_graphs_resume(ms__engine_t *e);

/* The graphs' state; 0, or MEMSLEEP_EINVAL when the backend has none. */
int ms__engine_graph_stats(ms__engine_t *e, ms__graph_stats_t *out);

/* Reads the weights of dir into the loaded model's memory in place
 * (ms__model_reload), between two steps: it holds the step lock, so no
 * forward pass runs while the weights change. Then drops the prefix cache
 * (its blocks hold keys and values computed with the old weights).
 * Returns ms__model_reload's code; on MEMSLEEP_EINVAL / ENOTFOUND the old
 * weights are untouched. */
int ms__engine_reload_weights(ms__engine_t *e, const char *dir);

/* Marks the weights valid (valid != 0) or not. While they are not, submit
 * refuses with MS__EWEIGHTS and the message reason (copied; NULL: a
 * default), and no waiting request is admitted: weights released without
 * backup are never used (rule 11). Valid by default. */
void ms__engine_set_weights_valid(ms__engine_t *e, int valid, const char *reason);

#endif /* MEMSLEEP_ENGINE_ENGINE_H */
