/*
 * json_util.h - JSON and UTF-8 helpers shared by the HTTP handlers.
 *
 * Request bodies are parsed with jansson and checked field by field; every
 * check that fails writes one sentence naming the field, the value that was
 * wrong and what is accepted, which the handler sends back as
 * {"error": ...} with status 400. Text that goes out in JSON must be valid
 * UTF-8: model output may not be, so it is cleaned here (invalid bytes
 * become U+FFFD), and a streaming writer can ask how much of a byte string
 * is made of complete characters.
 */
#ifndef MEMSLEEP_SERVER_JSON_UTIL_H
#define MEMSLEEP_SERVER_JSON_UTIL_H

#include <jansson.h>
#include <stddef.h>

#include "core/error.h"

/* Size of the buffers that hold one error sentence for a client. */
#define MS__ERRMSG_MAX 1024

/*
 * Length of the longest prefix of s[0..n) that ends on a character
 * boundary: every complete character and every byte that can never start a
 * valid sequence is in it; a trailing sequence that is valid so far but
 * cut short is not (more bytes may complete it).
 */
size_t ms__utf8_complete_prefix(const char *s, size_t n);

/*
 * Appends s[0..n) to a json string made valid UTF-8: each maximal invalid
 * subpart becomes U+FFFD (as the Unicode standard recommends). Returns a
 * new jansson string (caller owns the reference) or NULL when out of
 * memory.
 */
json_t *ms__json_text(const char *s, size_t n);

/*
 * Parses body[0..len) as a JSON object. On failure returns NULL and writes
 * the reason (with line and column) into err.
 */
json_t *ms__json_parse_object(const char *body, size_t len, char *err, size_t errlen);

/* Writes a formatted message into err (always NUL-terminated). Returns -1
 * so that a check can "return ms__errf(...)". */
int ms__errf(char *err, size_t errlen, const char *fmt, ...) MS__PRINTF(3, 4);

/* Name of a JSON value's type for messages: "string", "integer", ... */
const char *ms__json_type_name(const json_t *v);

/*
 * Field checks. Each looks up key in obj; an absent or null field leaves
 * *out unchanged and returns 0. A present field of the wrong type or
 * outside [min, max] returns -1 with a message naming the field.
 */
int ms__json_get_int(const json_t *obj, const char *key, long long min, long long max,
                     long long *out, char *err, size_t errlen);
int ms__json_get_num(const json_t *obj, const char *key, double min, double max, double *out,
                     char *err, size_t errlen);
int ms__json_get_bool(const json_t *obj, const char *key, int *out, char *err, size_t errlen);

/*
 * Checks that every key of obj is in the NULL-terminated list allowed;
 * returns -1 naming the first stranger (and the accepted keys) otherwise.
 * what names the object in the message ("sampling_params").
 */
int ms__json_only_keys(const json_t *obj, const char *what, const char *const *allowed, char *err,
                       size_t errlen);

#endif /* MEMSLEEP_SERVER_JSON_UTIL_H */
