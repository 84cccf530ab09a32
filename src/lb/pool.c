/*
 * pool.c - the workers, their health checks and the choice of a worker
 * for each generation request (see pool.h).
 */
#include "lb/pool.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void ms__pool_init(ms__pool_t *p) {
  memset(p, 0, sizeof *p);
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  p->interval_ms = 2000;
  p->timeout_ms = 2000;
  p->connect_timeout_ms = 2000;
}

int ms__pool_add(ms__pool_t *p, const char *url, char *err, size_t errlen) {
  size_t n = strlen(url);
  while (n > 0 && url[n - 1] == '/')
    n--;
  if (strncmp(url, "http://", 7) != 0 || n <= 7) {
    snprintf(err, errlen, "worker '%s' is not an http:// URL (give http://HOST:PORT)", url);
    return -1;
  }
  if (n >= MS__LB_URL_MAX) {
    snprintf(err, errlen, "worker URL '%s' is longer than %d characters", url, MS__LB_URL_MAX - 1);
    return -1;
  }
  for (size_t i = 7; i < n; i++) {
    unsigned char c = (unsigned char)url[i];
    if (c <= ' ' || c >= 0x7f || c == '?' || c == '#') {
      snprintf(err, errlen, "worker URL '%s' has a space, a control character, '?' or '#'", url);
      return -1;
    }
  }
  if (p->n >= MS__LB_MAX_WORKERS) {
    snprintf(err, errlen, "more than %d workers", MS__LB_MAX_WORKERS);
    return -1;
  }
  for (size_t i = 0; i < p->n; i++) {
    if (strlen(p->w[i].url) == n && memcmp(p->w[i].url, url, n) == 0) {
      snprintf(err, errlen, "worker %.*s is given twice", (int)n, url);
      return -1;
    }
  }
  ms__worker_t *w = realloc(p->w, (p->n + 1) * sizeof *w);
  if (!w) {
    snprintf(err, errlen, "out of memory adding worker %s", url);
    return -1;
  }
  p->w = w;
  ms__worker_t *nw = &p->w[p->n++];
  memset(nw, 0, sizeof *nw);
  memcpy(nw->url, url, n);
  nw->url[n] = '\0';
  atomic_init(&nw->healthy, 1);
  atomic_init(&nw->in_flight, 0);
  atomic_init(&nw->requests, 0);
  return 0;
}

int ms__pool_add_file(ms__pool_t *p, const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, errlen, "cannot open workers file %s: %s", path, strerror(errno));
    return -1;
  }
  char line[1024];
  int lineno = 0, rc = 0;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    char *s = line;
    while (*s == ' ' || *s == '\t')
      s++;
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
      s[--n] = '\0';
    if (n == 0 || s[0] == '#')
      continue;
    char e[512];
    if (ms__pool_add(p, s, e, sizeof e) != 0) {
      snprintf(err, errlen, "%s:%d: %s", path, lineno, e);
      rc = -1;
      break;
    }
  }
  fclose(f);
  return rc;
}

CURL *ms__lb_easy(const char *url, long timeout_ms, long connect_timeout_ms) {
  CURL *e = curl_easy_init();
  if (!e)
    return NULL;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY, "");
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, connect_timeout_ms);
  curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
  return e;
}

void ms__lb_transport_error(CURL *e, CURLcode code, long timeout_ms, long connect_timeout_ms,
                            const char *timeout_flag, char *out, size_t outlen) {
  long os_errno = 0;
  curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &os_errno);
  curl_off_t connect_us = 0;
  curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connect_us);
  long status = 0;
  curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
  switch (code) {
  case CURLE_COULDNT_CONNECT:
    if (os_errno)
      snprintf(out, outlen, "could not connect: %s", strerror((int)os_errno));
    else
      snprintf(out, outlen, "could not connect");
    return;
  case CURLE_OPERATION_TIMEDOUT:
    if (connect_us == 0)
      snprintf(out, outlen, "could not connect within %ld ms (--connect-timeout)",
               connect_timeout_ms);
    else if (status == 0)
      snprintf(out, outlen, "no answer within %ld ms (%s); the worker may be hung", timeout_ms,
               timeout_flag);
    else
      snprintf(out, outlen,
               "the answer (status %ld) did not complete within %ld ms (%s); the worker may be "
               "hung",
               status, timeout_ms, timeout_flag);
    return;
  case CURLE_GOT_NOTHING:
    snprintf(out, outlen, "the worker closed the connection without answering");
    return;
  case CURLE_PARTIAL_FILE:
    snprintf(out, outlen,
             "the worker closed the connection in the middle of its answer (status %ld)", status);
    return;
  case CURLE_RECV_ERROR:
    if (os_errno)
      snprintf(out, outlen, "receiving the answer failed: %s", strerror((int)os_errno));
    else
      snprintf(out, outlen, "receiving the answer failed");
    return;
  case CURLE_SEND_ERROR:
    if (os_errno)
      snprintf(out, outlen, "sending the request failed: %s", strerror((int)os_errno));
    else
      snprintf(out, outlen, "sending the request failed");
    return;
  default:
    snprintf(out, outlen, "%s", curl_easy_strerror(code));
  }
}

/* One GET /health: the handle and where its verdict goes. */
typedef struct check {
  CURL *e;
  char url[MS__LB_URL_MAX + 16];
} check_t;

/* Discards a health answer's body (its status is all that counts). */
static size_t discard(char *data, size_t size, size_t nmemb, void *ud) {
  (void)data;
  (void)ud;
  return size * nmemb;
}

/* Records the verdict of one check on worker i; logs changes of state. */
static void verdict(ms__pool_t *p, size_t i, int ok, const char *why) {
  ms__worker_t *w = &p->w[i];
  int was = atomic_exchange(&w->healthy, ok);
  pthread_mutex_lock(&p->mu);
  if (ok)
    w->last_error[0] = '\0';
  else
    snprintf(w->last_error, sizeof w->last_error, "%s", why);
  pthread_mutex_unlock(&p->mu);
  if (was && !ok)
    fprintf(stderr, "memsleep-lb: worker %s out of rotation: %s\n", w->url, why);
  else if (!was && ok)
    fprintf(stderr, "memsleep-lb: worker %s back in rotation\n", w->url);
}

void ms__pool_check_now(ms__pool_t *p) {
  CURLM *m = curl_multi_init();
  check_t *c = calloc(p->n, sizeof *c);
  if (!m || !c) {
    curl_multi_cleanup(m);
    free(c);
    return;
  }
  for (size_t i = 0; i < p->n; i++) {
    snprintf(c[i].url, sizeof c[i].url, "%s/health", p->w[i].url);
    c[i].e = ms__lb_easy(c[i].url, p->timeout_ms, p->connect_timeout_ms);
    if (!c[i].e)
      continue;
    curl_easy_setopt(c[i].e, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c[i].e, CURLOPT_PRIVATE, (char *)&c[i]);
    curl_multi_add_handle(m, c[i].e);
  }
  int running = 1;
  while (running) {
    if (curl_multi_perform(m, &running) != CURLM_OK)
      break;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left))) {
      if (msg->msg != CURLMSG_DONE)
        continue;
      size_t i = 0;
      while (i < p->n && c[i].e != msg->easy_handle)
        i++;
      if (i == p->n)
        continue;
      long status = 0;
      curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
      CURLcode rc = msg->data.result;
      char why[256];
      if (rc == CURLE_OK && status >= 200 && status < 300) {
        verdict(p, i, 1, "");
      } else {
        if (rc != CURLE_OK)
          ms__lb_transport_error(msg->easy_handle, rc, p->timeout_ms, p->connect_timeout_ms,
                                 "--health-timeout", why, sizeof why);
        else
          snprintf(why, sizeof why, "GET /health answered %ld", status);
        verdict(p, i, 0, why);
      }
    }
    if (running)
      curl_multi_poll(m, NULL, 0, 100, NULL);
  }
  for (size_t i = 0; i < p->n; i++) {
    if (!c[i].e)
      continue;
    curl_multi_remove_handle(m, c[i].e);
    curl_easy_cleanup(c[i].e);
  }
  curl_multi_cleanup(m);
  free(c);
}

/* The health-check thread: a round, then a wait of interval_ms (cut
 * short by ms__pool_free), until told to stop. */
static void *health_main(void *arg) {
  ms__pool_t *p = arg;
  pthread_mutex_lock(&p->mu);
  while (!p->stop) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_sec += p->interval_ms / 1000;
    t.tv_nsec += (p->interval_ms % 1000) * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
      t.tv_sec++;
      t.tv_nsec -= 1000000000L;
    }
    while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &t) == 0)
      ;
    if (p->stop)
      break;
    pthread_mutex_unlock(&p->mu);
    ms__pool_check_now(p);
    pthread_mutex_lock(&p->mu);
  }
  pthread_mutex_unlock(&p->mu);
  return NULL;
}

int ms__pool_start(ms__pool_t *p) {
  if (pthread_create(&p->thread, NULL, health_main, p) != 0)
    return -1;
  p->thread_started = 1;
  return 0;
}

void ms__pool_free(ms__pool_t *p) {
  if (p->thread_started) {
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    p->thread_started = 0;
  }
  free(p->w);
  p->w = NULL;
  p->n = 0;
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv);
}

ms__worker_t *ms__pool_acquire(ms__pool_t *p, const unsigned char *skip) {
  pthread_mutex_lock(&p->mu);
  ms__worker_t *best = NULL;
  long best_load = 0;
  size_t best_i = 0;
  for (size_t k = 0; k < p->n; k++) {
    size_t i = (p->rr + k) % p->n;
    ms__worker_t *w = &p->w[i];
    if ((skip && skip[i]) || !atomic_load(&w->healthy))
      continue;
    long load = atomic_load(&w->in_flight);
    if (!best || load < best_load) {
      best = w;
      best_load = load;
      best_i = i;
    }
  }
  if (best) {
    atomic_fetch_add(&best->in_flight, 1);
    atomic_fetch_add(&best->requests, 1);
    p->rr = best_i + 1;
  }
  pthread_mutex_unlock(&p->mu);
  return best;
}

void ms__pool_done(ms__worker_t *w) {
  atomic_fetch_sub(&w->in_flight, 1);
}

void ms__pool_mark_down(ms__pool_t *p, ms__worker_t *w, const char *reason) {
  verdict(p, (size_t)(w - p->w), 0, reason);
}

size_t ms__pool_healthy(ms__pool_t *p) {
  size_t h = 0;
  for (size_t i = 0; i < p->n; i++)
    h += atomic_load(&p->w[i].healthy) ? 1 : 0;
  return h;
}

void ms__pool_last_error(ms__pool_t *p, const ms__worker_t *w, char *out, size_t outlen) {
  pthread_mutex_lock(&p->mu);
  snprintf(out, outlen, "%s", w->last_error);
  pthread_mutex_unlock(&p->mu);
}
