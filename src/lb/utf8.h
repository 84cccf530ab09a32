/*
 * utf8.h - makes arbitrary bytes valid UTF-8 for JSON answers.
 *
 * A worker's error body may be anything (binary, cut in the middle of a
 * character by the 500-byte cap); the load balancer puts it in a JSON
 * string, which must be valid UTF-8. Each maximal invalid subpart becomes
 * U+FFFD, the practice the Unicode standard recommends (and Python's
 * bytes.decode("utf-8", "replace") follows).
 */
#ifndef MEMSLEEP_LB_UTF8_H
#define MEMSLEEP_LB_UTF8_H

#include <stddef.h>

/*
 * Returns a new NUL-terminated copy of s[0..n) in which every maximal
 * invalid subpart is replaced by U+FFFD (EF BF BD); *out_len gets its
 * length (NUL bytes of the input are kept, so it may contain NULs).
 * The caller frees it. NULL when out of memory.
 */
char *ms__utf8_sanitize(const char *s, size_t n, size_t *out_len);

#endif /* MEMSLEEP_LB_UTF8_H */
