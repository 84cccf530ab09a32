/*
 * pool.h - the workers behind the load balancer and their health.
 *
 * Each worker is a base URL (http://host:port). A background thread asks
 * every worker GET /health each --health-interval, all in parallel on one
 * curl multi handle, each bounded by --health-timeout. A worker that fails
 * (no connection, no answer in time, an answer other than 2xx) is taken
 * out of rotation; it is put back as soon as it answers 2xx again.
 * Generation goes to the healthy worker with the fewest requests in
 * flight (ties go round-robin); control fan-out goes to every worker,
 * healthy or not, so that a sick worker is reported rather than skipped.
 */
#ifndef MEMSLEEP_LB_POOL_H
#define MEMSLEEP_LB_POOL_H

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

/* Longest worker URL. */
#define MS__LB_URL_MAX 256
/* Most workers. */
#define MS__LB_MAX_WORKERS 256

typedef struct ms__worker {
  char url[MS__LB_URL_MAX]; /* base URL without a trailing '/' */
  atomic_int healthy;       /* 1 while in rotation */
  atomic_long in_flight;    /* generation requests forwarded and not done */
  atomic_ulong requests;    /* generation requests forwarded so far */
  char last_error[256];     /* why it left rotation (under the pool's mutex) */
} ms__worker_t;

typedef struct ms__pool {
  ms__worker_t *w; /* the workers, n of them */
  size_t n;
  pthread_mutex_t mu; /* guards pick, last_error, stop */
  pthread_cond_t cv;  /* wakes the health thread to stop */
  int stop;           /* the health thread should end */
  int thread_started;
  pthread_t thread;
  size_t rr; /* round-robin start of the next pick */
  long interval_ms, timeout_ms, connect_timeout_ms;
} ms__pool_t;

/* An empty pool. */
void ms__pool_init(ms__pool_t *p);

/*
 * Adds the worker at url (http://host:port, an optional trailing '/').
 * Returns 0, or -1 with a message in err (bad URL, too many, duplicate,
 * out of memory).
 */
int ms__pool_add(ms__pool_t *p, const char *url, char *err, size_t errlen);

/*
 * Adds every worker listed in the file at path: one URL a line; blank
 * lines and lines starting with '#' are skipped. Returns 0, or -1 with a
 * message in err naming the file and line.
 */
int ms__pool_add_file(ms__pool_t *p, const char *path, char *err, size_t errlen);

/* Runs one health-check round now, on the calling thread. */
void ms__pool_check_now(ms__pool_t *p);

/* Starts the health-check thread. Returns 0 or -1 (no thread). */
int ms__pool_start(ms__pool_t *p);

/* Stops the health-check thread (if started) and frees the workers. */
void ms__pool_free(ms__pool_t *p);

/*
 * Picks the healthy worker with the fewest requests in flight, skipping
 * those with skip[i] set (skip may be NULL), and counts one more request
 * in flight on it. NULL when none is left. Pair with ms__pool_done.
 */
ms__worker_t *ms__pool_acquire(ms__pool_t *p, const unsigned char *skip);

/* Counts the end of a request that ms__pool_acquire gave w. */
void ms__pool_done(ms__worker_t *w);

/* Takes w out of rotation now, with reason (until its next good check). */
void ms__pool_mark_down(ms__pool_t *p, ms__worker_t *w, const char *reason);

/* Number of workers in rotation. */
size_t ms__pool_healthy(ms__pool_t *p);

/* Copies w's last health error into out (empty when none). */
void ms__pool_last_error(ms__pool_t *p, const ms__worker_t *w, char *out, size_t outlen);

/*
 * A curl easy handle for url with the settings every request to a worker
 * shares (no signals, no proxy from the environment, no "Expect:
 * 100-continue" delay is set by the caller's headers), bounded by
 * timeout_ms in total and connect_timeout_ms to connect. NULL when out of
 * memory.
 */
CURL *ms__lb_easy(const char *url, long timeout_ms, long connect_timeout_ms);

/*
 * The sentence for a transfer of e that ended with code (no status
 * received, or a transfer cut short): "could not connect: Connection
 * refused", "no complete answer within 1500 ms (--control-timeout)", ...
 * timeout_flag names the option that set the total bound.
 */
void ms__lb_transport_error(CURL *e, CURLcode code, long timeout_ms, long connect_timeout_ms,
                            const char *timeout_flag, char *out, size_t outlen);

#endif /* MEMSLEEP_LB_POOL_H */
