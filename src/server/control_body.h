/*
 * control_body.h - the bodies and query strings of the sleep/wake control
 * plane, checked strictly and turned into what the controller takes.
 *
 * Every function is pure (no server state): routes_control.c calls them
 * with the request's bytes, and so do the tests and the fuzzer
 * (tests/fuzz). An empty or all-blank body counts as {}; "tags": null as
 * absent. Each returns 0, or -1 with one sentence in err that names the
 * field, the value that was wrong and what is accepted (the 400's body).
 */
#ifndef MEMSLEEP_SERVER_CONTROL_BODY_H
#define MEMSLEEP_SERVER_CONTROL_BODY_H

#include <stddef.h>

#include "server/controller.h"

#define MS__VALID_TAGS                                                                             \
  "weights, kv_cache, workspace (and cuda_graph on a GPU server with CUDA graphs)"

/* POST /release_memory_occupation: {"tags", "backup", "timeout"}. */
typedef struct ms__release_args {
  unsigned tags;   /* the tags named (when given) */
  int given;       /* "tags" was given */
  int backup;      /* default 1 */
  long timeout_ms; /* the drain timeout (default MS__DRAIN_TIMEOUT_DEFAULT_MS) */
} ms__release_args_t;

int ms__ctlbody_release(const char *body, size_t len, ms__release_args_t *out, char *err,
                        size_t errlen);

/* POST /resume_memory_occupation: {"tags"}. */
int ms__ctlbody_resume(const char *body, size_t len, unsigned *tags, int *given, char *err,
                       size_t errlen);

/* POST /pause_generation: {"mode"} (default abort). */
int ms__ctlbody_pause(const char *body, size_t len, ms__pause_mode_t *mode, char *err,
                      size_t errlen);

/* POST /continue_generation: no fields. */
int ms__ctlbody_continue(const char *body, size_t len, char *err, size_t errlen);

/* POST /update_weights_from_disk: {"model_path"}; *model_path is a copy
 * the caller frees. *oom is set when the copy could not be made. */
int ms__ctlbody_update(const char *body, size_t len, char **model_path, int *oom, char *err,
                       size_t errlen);

/* /sleep and /wake_up: an empty body or {} (what names the endpoint). */
int ms__ctlbody_empty(const char *body, size_t len, const char *what, char *err, size_t errlen);

/* The level= argument of /sleep (NULL: absent, level 1). */
int ms__ctlquery_sleep_level(const char *arg, int *level, char *err, size_t errlen);

/* The tags= argument of /wake_up: comma-separated distinct tag names. */
int ms__ctlquery_wake_tags(const char *arg, unsigned *tags, char *err, size_t errlen);

#endif /* MEMSLEEP_SERVER_CONTROL_BODY_H */
