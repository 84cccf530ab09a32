/*
 * error.h - error codes to text, and the thread's last-error detail.
 *
 * Every failing path in libmemsleep ends in ms__fail(), which formats a
 * message naming what failed and the values involved into a thread-local
 * buffer that memsleep_last_error() returns.
 */
#ifndef MEMSLEEP_CORE_ERROR_H
#define MEMSLEEP_CORE_ERROR_H

#if defined(__GNUC__)
#define MS__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define MS__PRINTF(a, b)
#endif

/* Records a formatted message as the thread's last error; returns code. */
int ms__fail(int code, const char *fmt, ...) MS__PRINTF(2, 3);

/* Appends to the thread's last error (used when a rollback adds detail). */
void ms__fail_append(const char *fmt, ...) MS__PRINTF(1, 2);

#endif /* MEMSLEEP_CORE_ERROR_H */
