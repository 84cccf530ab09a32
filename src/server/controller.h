/*
 * controller.h - the sleep/wake controller of memsleep-serve: the explicit
 * state behind /release_memory_occupation, /resume_memory_occupation,
 * /is_sleeping, /pause_generation, /continue_generation and
 * /update_weights_from_disk (docs/control-plane.md is the contract).
 *
 * Two things are kept apart: the user's pause of the scheduler (none,
 * abort, wait, keep) and the memory (the set of released tags, whether the
 * weights are valid, at most one release draining). Every transition is one
 * function here, under one mutex; the engine never reads these flags, it is
 * told what to do (admission, freeze, abort, prefix reset, KV zero, reload)
 * through engine.h. Admission is open only when nothing is paused, released
 * or draining.
 *
 * Each transition fills an ms__ctl_result_t: the HTTP status it amounts to
 * and, for a refusal, a sentence saying what was wrong and what to do. The
 * route handlers (routes_control.c) only parse bodies and format answers.
 */
#ifndef MEMSLEEP_SERVER_CONTROLLER_H
#define MEMSLEEP_SERVER_CONTROLLER_H

#include <stdatomic.h>
#include <stddef.h>

#include "engine/engine.h"

/* The tags the server knows, as bits of a tag set. */
#define MS__TAG_WEIGHTS   0x1u
#define MS__TAG_KV_CACHE  0x2u
#define MS__TAG_WORKSPACE 0x4u
#define MS__TAG_GRAPH     0x8u /* "cuda_graph": the decode graphs' executables, not memsleep's */
#define MS__TAG_ALL       0xfu
#define MS__TAG_COUNT     4

/* Default and largest drain timeout of a release, in milliseconds. */
#define MS__DRAIN_TIMEOUT_DEFAULT_MS 60000L
#define MS__DRAIN_TIMEOUT_MAX_MS     3600000L

typedef enum ms__pause_mode {
  MS__PAUSE_NONE, /* not paused by the user */
  MS__PAUSE_ABORT,
  MS__PAUSE_WAIT,
  MS__PAUSE_KEEP
} ms__pause_mode_t;

/* "abort", "wait", "keep" (NULL for MS__PAUSE_NONE). */
const char *ms__pause_mode_name(ms__pause_mode_t m);

/* Name of tag bit i (0 .. MS__TAG_COUNT-1): "weights", "kv_cache",
 * "workspace", "cuda_graph". */
const char *ms__tag_name(unsigned i);

/* Writes the names of the tags of set into buf ("weights, kv_cache"; "none"
 * for the empty set). Returns buf. */
char *ms__tag_list(unsigned set, char *buf, size_t len);

typedef struct ms__ctl ms__ctl_t;

/* The outcome of one transition. */
typedef struct ms__ctl_result {
  unsigned status;         /* HTTP status: 200, or the refusal's */
  char error[1024];        /* status != 200: what was wrong and what to do */
  unsigned retry_after_s;  /* > 0: the answer carries Retry-After */
  unsigned tags;           /* tags released / resumed by this call */
  unsigned released;       /* tags released after it */
  size_t drained_requests; /* release: requests that ran when the drain began */
  size_t aborted;          /* pause abort: requests ended */
  size_t resident_before;  /* release: measured resident bytes of every tag before */
  size_t resident_after;   /* ... and after */
  ms__pause_mode_t was;    /* continue: the pause it lifted */
} ms__ctl_result_t;

/* A consistent copy of the state (for /is_sleeping and /get_server_info). */
typedef struct ms__ctl_state {
  int enabled;            /* memory saving on (no --disable-memory-saver) */
  unsigned released;      /* tags released */
  int draining;           /* a release is draining or releasing */
  unsigned draining_tags; /* its tags */
  ms__pause_mode_t pause; /* the user's pause */
  int weights_valid;      /* 0 after a release without backup, until a reload */
  unsigned available;     /* the tags this server has (cuda_graph only with graphs) */
} ms__ctl_state_t;

/* Creates the controller of engine e. enabled: memory saving on (release
 * and resume answer 400 otherwise, rule 10). The tags are weights,
 * kv_cache and workspace, and cuda_graph when the engine has CUDA graphs. stopping (may be NULL) is
 * read while waiting, so that a shutdown ends a drain. NULL when out of
 * memory. */
ms__ctl_t *ms__ctl_create(ms__engine_t *e, int enabled, atomic_int *stopping);

/* Frees the controller. No transition may be running. NULL is fine. */
void ms__ctl_destroy(ms__ctl_t *c);

/*
 * Release: tags (a set; 0 with tags_given false: every tag not yet
 * released), backup (0: discard the weights' contents this time),
 * timeout_ms for the drain. Closes admission, waits for the running
 * requests (the scheduler keeps stepping them), resets the prefix cache
 * when kv_cache is among the tags, releases, gives cached memory back. On
 * a timeout or failure nothing is released and admission is as before.
 */
void ms__ctl_release(ms__ctl_t *c, unsigned tags, int tags_given, int backup, long timeout_ms,
                     ms__ctl_result_t *res);

/* Resume: tags (tags_given false: exactly the released ones). Zeroes the KV
 * pool when kv_cache wakes; reopens admission when nothing stays released
 * and the user did not pause. */
void ms__ctl_resume(ms__ctl_t *c, unsigned tags, int tags_given, ms__ctl_result_t *res);

/* The user's pause (mode != MS__PAUSE_NONE); with wait, returns once the
 * running requests have finished. */
void ms__ctl_pause(ms__ctl_t *c, ms__pause_mode_t mode, ms__ctl_result_t *res);

/* Lifts the user's pause: 409 while memory is released or a release
 * drains (rule 2). */
void ms__ctl_continue(ms__ctl_t *c, ms__ctl_result_t *res);

/* Reloads the weights from dir in place, between scheduler steps; makes
 * them valid again (rule 11). 409 while the weights are released. */
void ms__ctl_update_weights(ms__ctl_t *c, const char *dir, ms__ctl_result_t *res);

/* Copies the state. */
void ms__ctl_state(ms__ctl_t *c, ms__ctl_state_t *out);

#endif /* MEMSLEEP_SERVER_CONTROLLER_H */
