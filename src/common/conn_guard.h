/*
 * conn_guard.h - the request-read deadline of a libmicrohttpd daemon.
 *
 * libmicrohttpd's connection timeout is an idle timeout: a client that
 * sends a byte a second is never idle, and could hold a connection (and,
 * with one thread per connection, a thread) for as long as it likes. The
 * guard gives each request a deadline instead: from the moment the
 * connection opens, or the previous answer on it ends, the whole request
 * (headers and body) must be in within the timeout. Past it, a watchdog
 * thread shuts the socket down, which makes libmicrohttpd close the
 * connection; nothing else is disturbed. The time spent answering (a
 * generation may take minutes, a stream longer) does not count.
 *
 * Wiring: MHD_OPTION_NOTIFY_CONNECTION with ms__conn_guard_notify and the
 * guard as its argument; ms__conn_guard_request_in from the access handler
 * once the request is whole; ms__conn_guard_answer_done from the
 * request-completed callback. Destroy the guard after MHD_stop_daemon.
 */
#ifndef MEMSLEEP_COMMON_CONN_GUARD_H
#define MEMSLEEP_COMMON_CONN_GUARD_H

#include <microhttpd.h>

typedef struct ms__conn_guard ms__conn_guard_t;

/*
 * A guard that gives each request timeout_ms to arrive, and starts its
 * watchdog thread. prog names the program in the line it logs on stderr
 * (at most one every 10 s) when it cuts connections; flag names the
 * option that sets the timeout. NULL when out of memory or threads.
 */
ms__conn_guard_t *ms__conn_guard_create(const char *prog, const char *flag, unsigned timeout_ms);

/* Stops the watchdog and frees the guard (NULL is fine). */
void ms__conn_guard_destroy(ms__conn_guard_t *g);

/* libmicrohttpd's connection callback (MHD_OPTION_NOTIFY_CONNECTION):
 * starts watching a connection when it opens, forgets it when it closes. */
void ms__conn_guard_notify(void *cls, struct MHD_Connection *conn, void **socket_context,
                           enum MHD_ConnectionNotificationCode code);

/* The request on conn has arrived whole: no deadline while it is answered. */
void ms__conn_guard_request_in(struct MHD_Connection *conn);

/* The answer on conn is done: the next request's deadline starts now. */
void ms__conn_guard_answer_done(struct MHD_Connection *conn);

/* Connections cut so far because their request was late. */
unsigned long ms__conn_guard_cut_count(ms__conn_guard_t *g);

#endif /* MEMSLEEP_COMMON_CONN_GUARD_H */
