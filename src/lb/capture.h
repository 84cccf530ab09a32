/*
 * capture.h - a byte buffer that keeps at most a fixed number of bytes.
 *
 * The fan-out stores what each worker answers through one of these: at
 * most 500 bytes of an error body (the "detail" of a failure), at most
 * MS__LB_ANSWER_MAX bytes of a success. Once a body passes its cap the
 * transfer is aborted, so a worker that sends a gigabyte costs the load
 * balancer 500 bytes of memory and one closed connection.
 */
#ifndef MEMSLEEP_LB_CAPTURE_H
#define MEMSLEEP_LB_CAPTURE_H

#include <stddef.h>

/* Bytes of an error body kept as a failure's "detail". */
#define MS__LB_DETAIL_MAX 500
/* Bytes of a successful control answer kept (and listed in the 200). */
#define MS__LB_ANSWER_MAX 65536

typedef struct ms__capture {
  char *buf;     /* the bytes kept (NULL until the first append) */
  size_t len;    /* bytes in buf */
  size_t cap;    /* most bytes buf may ever hold */
  size_t alloc_; /* bytes allocated for buf (without its NUL) */
  int truncated; /* more bytes were offered than cap allows */
} ms__capture_t;

/* An empty capture that keeps at most cap bytes. */
void ms__capture_init(ms__capture_t *c, size_t cap);

/*
 * Keeps as much of data[0..n) as still fits. Returns the number of bytes
 * kept; when that is less than n, c->truncated is set (the caller then
 * stops the transfer). Returns (size_t)-1 when out of memory.
 */
size_t ms__capture_append(ms__capture_t *c, const char *data, size_t n);

/* Frees the bytes; c is empty (same cap) afterwards. */
void ms__capture_free(ms__capture_t *c);

#endif /* MEMSLEEP_LB_CAPTURE_H */
