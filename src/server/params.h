/*
 * params.h - request bodies of /generate and /v1/completions turned into a
 * prompt and engine sampling settings, with every field checked.
 *
 * Field names and defaults follow SGLang (/generate: temperature 1,
 * max_new_tokens 128) and OpenAI (/v1/completions: temperature 1,
 * max_tokens 16). Fields the server does not implement are accepted only
 * with their neutral value (a penalty of 0, "n": 1, ...); anything else,
 * and any unknown field, is a 400 that names the field, so a typo never
 * silently changes what is generated. A default max_new_tokens shrinks to
 * fit the context; an explicit one that does not fit is an error.
 */
#ifndef MEMSLEEP_SERVER_PARAMS_H
#define MEMSLEEP_SERVER_PARAMS_H

#include <jansson.h>
#include <stddef.h>

#include "engine/engine.h"
#include "server/server.h"

typedef struct ms__gen_params {
  int *prompt; /* token ids (malloc'd, owned) */
  size_t n_prompt;
  ms__sampling_t sp; /* ready for ms__engine_submit */
  int stream;        /* answer with server-sent events */
  int include_usage; /* OpenAI stream_options.include_usage */
  char model[128];   /* OpenAI "model" as sent ("" if absent) */
} ms__gen_params_t;

/*
 * Parses a /generate body. Returns 0, or -1 with the HTTP status in
 * *status (400, or 500 when out of memory) and the reason in err.
 */
int ms__params_generate(const ms__server_t *srv, const json_t *body, ms__gen_params_t *out,
                        unsigned *status, char *err, size_t errlen);

/* Parses a /v1/completions body; same contract. */
int ms__params_completions(const ms__server_t *srv, const json_t *body, ms__gen_params_t *out,
                           unsigned *status, char *err, size_t errlen);

/* Frees the prompt. Safe on a zeroed struct. */
void ms__params_free(ms__gen_params_t *p);

#endif /* MEMSLEEP_SERVER_PARAMS_H */
