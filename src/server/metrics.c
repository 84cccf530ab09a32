/*
 * metrics.c - counters of HTTP requests answered (see metrics.h).
 */
#include "server/metrics.h"

#include <stdio.h>
#include <string.h>

void ms__metrics_init(ms__metrics_t *m) {
  memset(m, 0, sizeof *m);
  pthread_mutex_init(&m->mu, NULL);
}

void ms__metrics_destroy(ms__metrics_t *m) {
  pthread_mutex_destroy(&m->mu);
}

void ms__metrics_count(ms__metrics_t *m, const char *endpoint, unsigned status) {
  pthread_mutex_lock(&m->mu);
  size_t i;
  for (i = 0; i < m->nrows; i++)
    if (m->rows[i].status == status && strcmp(m->rows[i].endpoint, endpoint) == 0)
      break;
  if (i == m->nrows) {
    if (m->nrows < MS__METRICS_MAX) {
      snprintf(m->rows[i].endpoint, sizeof m->rows[i].endpoint, "%s", endpoint);
      m->rows[i].status = status;
      m->nrows++;
    } else {
      i = MS__METRICS_MAX - 1;
    }
  }
  m->rows[i].count++;
  pthread_mutex_unlock(&m->mu);
}

void ms__metrics_count_disconnect(ms__metrics_t *m) {
  pthread_mutex_lock(&m->mu);
  m->streams_disconnected++;
  pthread_mutex_unlock(&m->mu);
}

void ms__metrics_count_unauthorized(ms__metrics_t *m) {
  pthread_mutex_lock(&m->mu);
  m->unauthorized++;
  pthread_mutex_unlock(&m->mu);
}

uint64_t ms__metrics_unauthorized(ms__metrics_t *m) {
  pthread_mutex_lock(&m->mu);
  uint64_t n = m->unauthorized;
  pthread_mutex_unlock(&m->mu);
  return n;
}

size_t ms__metrics_snapshot(ms__metrics_t *m, ms__metric_row_t *out, size_t cap,
                            uint64_t *disconnected) {
  pthread_mutex_lock(&m->mu);
  size_t n = m->nrows < cap ? m->nrows : cap;
  memcpy(out, m->rows, n * sizeof *out);
  if (disconnected)
    *disconnected = m->streams_disconnected;
  pthread_mutex_unlock(&m->mu);
  return n;
}
