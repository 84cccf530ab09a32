/*
 * metrics.h - counters of HTTP requests answered, by endpoint and status.
 *
 * The engine keeps its own counters (tokens, finished requests, queue
 * length); these are the ones only the HTTP layer sees. /metrics prints
 * both in Prometheus text format.
 */
#ifndef MEMSLEEP_SERVER_METRICS_H
#define MEMSLEEP_SERVER_METRICS_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define MS__METRICS_MAX 128 /* distinct (endpoint, status) pairs kept */

typedef struct ms__metric_row {
  char endpoint[48]; /* the route's path, or "other" for unknown paths */
  unsigned status;   /* HTTP status code */
  uint64_t count;
} ms__metric_row_t;

typedef struct ms__metrics {
  pthread_mutex_t mu;
  ms__metric_row_t rows[MS__METRICS_MAX];
  size_t nrows;
  uint64_t streams_disconnected; /* streams whose client went away early */
  uint64_t unauthorized;         /* requests refused 401: no key or a wrong one */
} ms__metrics_t;

void ms__metrics_init(ms__metrics_t *m);
void ms__metrics_destroy(ms__metrics_t *m);

/* Counts one answer with status on endpoint. Extra pairs past
 * MS__METRICS_MAX are folded into the last row's count. */
void ms__metrics_count(ms__metrics_t *m, const char *endpoint, unsigned status);

void ms__metrics_count_disconnect(ms__metrics_t *m);

/* Counts one request refused for want of the right key. */
void ms__metrics_count_unauthorized(ms__metrics_t *m);

/* Requests refused 401 so far. */
uint64_t ms__metrics_unauthorized(ms__metrics_t *m);

/* Copies the rows into out (cap rows at most); returns how many. */
size_t ms__metrics_snapshot(ms__metrics_t *m, ms__metric_row_t *out, size_t cap,
                            uint64_t *disconnected);

#endif /* MEMSLEEP_SERVER_METRICS_H */
