/*
 * gen.h - one generation request as the HTTP side sees it.
 *
 * A handler creates an ms__gen_t, submits it to the engine and then waits
 * on it: the engine's callbacks (scheduler thread) append each token and
 * mark the end under the request's lock and wake the waiter through a
 * condition variable. The waiter polls, every 100 ms, whether its client's
 * socket was closed and whether the server is stopping; either cancels the
 * request in the engine, which frees its KV blocks. The object is counted
 * twice while the engine holds it (handler + engine); the last release
 * frees it.
 *
 * Text: tokens are turned into text here, incrementally. EOS tokens (unless
 * ignore_eos) and stop_token_ids end the request and are kept in
 * output_ids but left out of the text, as SGLang does. Bytes that do not
 * yet form complete UTF-8 characters are held back until they do (or until
 * the end, where invalid bytes become U+FFFD), so the concatenation of the
 * streamed pieces equals the text of a non-streamed request.
 */
#ifndef MEMSLEEP_SERVER_GEN_H
#define MEMSLEEP_SERVER_GEN_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/engine.h"
#include "server/server.h"

typedef struct ms__gen ms__gen_t;

/* Creates a request of srv whose client is on socket fd (-1: unknown).
 * NULL when out of memory. */
ms__gen_t *ms__gen_new(ms__server_t *srv, int fd);

/* Drops the handler's reference (the engine drops its own after
 * on_finish). Does not cancel: cancel first if the request may run. */
void ms__gen_release(ms__gen_t *g);

/* Submits prompt[0..n) with sp. Returns ms__engine_submit's code; on
 * failure the engine holds no reference and no callback will run. */
int ms__gen_submit(ms__gen_t *g, const int *prompt, size_t n, const ms__sampling_t *sp);

/* Cancels the request in the engine (finish reason abort). Idempotent. */
void ms__gen_cancel(ms__gen_t *g);

/*
 * Blocks until the request has more than have tokens or has finished, or
 * timeout_s passed (0: no limit). Cancels it when the client's socket
 * closes or the server stops (and keeps waiting for its end). *n is the
 * token count, *finished whether the end was reported. Returns 1 if the
 * client went away, -1 on timeout, else 0.
 */
int ms__gen_wait(ms__gen_t *g, size_t have, double timeout_s, size_t *n, int *finished);

/* 1 when a request with n tokens must end there (max_new_tokens reached,
 * or token n-1 is an EOS or stop token): its finish report is imminent. */
int ms__gen_ends_at(ms__gen_t *g, size_t n);

/* Token i of the output (i < the count ms__gen_wait returned). */
int ms__gen_token(ms__gen_t *g, size_t i);

/* The finish report (valid once finished); info->error, if any, points
 * into g. */
void ms__gen_finish(ms__gen_t *g, ms__finish_info_t *info);

/* Seconds since the request was created. */
double ms__gen_elapsed_s(const ms__gen_t *g);

/*
 * Turns tokens [from, to) (to <= the count from ms__gen_wait) into text:
 * returns a new JSON string holding the complete characters not returned
 * before; with final, also the held-back bytes (invalid ones as U+FFFD).
 * Calls must cover the tokens in order. "" when the model has no
 * tokenizer. NULL when out of memory.
 */
json_t *ms__gen_text(ms__gen_t *g, size_t from, size_t to, int final);

/* {"type": "length", "length": n} / {"type": "stop", "matched": id} /
 * {"type": "abort"|"error", "message": ...}: SGLang's finish_reason. */
json_t *ms__gen_finish_json(ms__gen_t *g);

#endif /* MEMSLEEP_SERVER_GEN_H */
