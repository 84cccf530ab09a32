/*
 * conn_guard.c - the watchdog that cuts connections whose request does not
 * arrive in time (see conn_guard.h).
 *
 * Every open connection has an entry in a list under one mutex. The
 * watchdog wakes every WATCH_MS and shuts down the socket of each entry
 * whose deadline passed. Shutting a socket down (not closing it) is what
 * libmicrohttpd itself does from other threads: the connection's thread
 * sees the end of the stream and closes the connection. The socket cannot
 * have been closed and its number reused meanwhile: libmicrohttpd calls
 * the "closed" notification, which takes the same mutex to remove the
 * entry, before it closes the socket.
 */
#include "common/conn_guard.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#define WATCH_MS        100
#define LOG_INTERVAL_MS 10000

typedef struct entry {
  struct ms__conn_guard *g;
  struct entry *prev, *next;
  int fd;
  long long deadline_ms; /* 0: no deadline (the request is being answered) */
  int cut;               /* its socket was shut down */
} entry_t;

struct ms__conn_guard {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int stop;
  entry_t *head;
  unsigned timeout_ms;
  const char *prog, *flag;
  atomic_ulong cut;         /* connections cut so far */
  unsigned long cut_logged; /* of those, the ones already logged */
  long long logged_ms;      /* when the last line was logged */
};

static long long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* The watchdog: every WATCH_MS, cuts the connections whose deadline
 * passed; logs how many at most once every LOG_INTERVAL_MS. */
static void *watch(void *arg) {
  ms__conn_guard_t *g = arg;
  pthread_mutex_lock(&g->mu);
  while (!g->stop) {
    struct timespec t;
    clock_gettime(CLOCK_REALTIME, &t);
    t.tv_nsec += WATCH_MS * 1000000L;
    if (t.tv_nsec >= 1000000000L) {
      t.tv_sec++;
      t.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&g->cv, &g->mu, &t);
    if (g->stop)
      break;
    long long now = now_ms();
    for (entry_t *e = g->head; e; e = e->next) {
      if (e->cut || e->deadline_ms == 0 || now < e->deadline_ms)
        continue;
      shutdown(e->fd, SHUT_RDWR);
      e->cut = 1;
      atomic_fetch_add(&g->cut, 1);
    }
    unsigned long cut = atomic_load(&g->cut);
    if (cut > g->cut_logged && now - g->logged_ms >= LOG_INTERVAL_MS) {
      fprintf(stderr,
              "%s: closed %lu connection%s whose request did not arrive whole within %u ms "
              "(%s)\n",
              g->prog, cut - g->cut_logged, cut - g->cut_logged == 1 ? "" : "s", g->timeout_ms,
              g->flag);
      g->cut_logged = cut;
      g->logged_ms = now;
    }
  }
  pthread_mutex_unlock(&g->mu);
  return NULL;
}

ms__conn_guard_t *ms__conn_guard_create(const char *prog, const char *flag, unsigned timeout_ms) {
  ms__conn_guard_t *g = calloc(1, sizeof *g);
  if (!g)
    return NULL;
  pthread_mutex_init(&g->mu, NULL);
  pthread_cond_init(&g->cv, NULL);
  g->timeout_ms = timeout_ms;
  g->prog = prog;
  g->flag = flag;
  g->logged_ms = now_ms() - LOG_INTERVAL_MS;
  atomic_init(&g->cut, 0);
  if (pthread_create(&g->thread, NULL, watch, g) != 0) {
    pthread_mutex_destroy(&g->mu);
    pthread_cond_destroy(&g->cv);
    free(g);
    return NULL;
  }
  return g;
}

void ms__conn_guard_destroy(ms__conn_guard_t *g) {
  if (!g)
    return;
  pthread_mutex_lock(&g->mu);
  g->stop = 1;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
  pthread_join(g->thread, NULL);
  while (g->head) {
    entry_t *e = g->head;
    g->head = e->next;
    free(e);
  }
  pthread_mutex_destroy(&g->mu);
  pthread_cond_destroy(&g->cv);
  free(g);
}

void ms__conn_guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                           enum MHD_ConnectionNotificationCode code) {
  ms__conn_guard_t *g = cls;
  if (!g)
    return;
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    entry_t *e = calloc(1, sizeof *e);
    if (!e || !ci) {
      free(e); /* unwatched: libmicrohttpd's idle timeout still holds */
      *socket_context = NULL;
      return;
    }
    e->g = g;
    e->fd = ci->connect_fd;
    pthread_mutex_lock(&g->mu);
    e->deadline_ms = now_ms() + g->timeout_ms;
    e->next = g->head;
    if (g->head)
      g->head->prev = e;
    g->head = e;
    pthread_mutex_unlock(&g->mu);
    *socket_context = e;
    return;
  }
  entry_t *e = *socket_context;
  if (!e)
    return;
  pthread_mutex_lock(&g->mu);
  if (e->prev)
    e->prev->next = e->next;
  else
    g->head = e->next;
  if (e->next)
    e->next->prev = e->prev;
  pthread_mutex_unlock(&g->mu);
  free(e);
  *socket_context = NULL;
}

/* The entry of conn, or NULL when it is not watched. */
static entry_t *entry_of(struct MHD_Connection *conn) {
  const union MHD_ConnectionInfo *ci =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
  return ci ? ci->socket_context : NULL;
}

void ms__conn_guard_request_in(struct MHD_Connection *conn) {
  entry_t *e = entry_of(conn);
  if (!e)
    return;
  pthread_mutex_lock(&e->g->mu);
  e->deadline_ms = 0;
  pthread_mutex_unlock(&e->g->mu);
}

void ms__conn_guard_answer_done(struct MHD_Connection *conn) {
  entry_t *e = entry_of(conn);
  if (!e)
    return;
  pthread_mutex_lock(&e->g->mu);
  e->deadline_ms = now_ms() + e->g->timeout_ms;
  pthread_mutex_unlock(&e->g->mu);
}

unsigned long ms__conn_guard_cut_count(ms__conn_guard_t *g) {
  return g ? atomic_load(&g->cut) : 0;
}
