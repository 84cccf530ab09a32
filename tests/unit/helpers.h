/*
 * helpers.h - small shared helpers for the unit tests.
 *
 * Seeded random contents (fill and check), the process's resident set from
 * /proc, stats comparisons, a check that the last error was set by the call
 * just made, and a fork-based probe that reads memory in a child so a test
 * can see a fault without dying of it. Every helper is static inline: each
 * test file is its own executable and uses what it needs.
 */
#ifndef MEMSLEEP_TESTS_HELPERS_H
#define MEMSLEEP_TESTS_HELPERS_H

#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "memsleep/memsleep.h"

/* splitmix64: a tiny seeded generator, so every run writes the same bytes. */
static inline uint64_t test_rand_next(uint64_t *state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/* Fills n bytes at p with the stream of seed. */
static inline void test_fill_random(void *p, size_t n, uint64_t seed) {
  unsigned char *b = p;
  uint64_t s = seed;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = test_rand_next(&s);
    memcpy(b + i, &v, 8);
  }
  if (i < n) {
    uint64_t v = test_rand_next(&s);
    memcpy(b + i, &v, n - i);
  }
}

/* Offset of the first byte at p that differs from the stream of seed, or
 * SIZE_MAX if all n bytes match. */
static inline size_t test_check_random(const void *p, size_t n, uint64_t seed) {
  const unsigned char *b = p;
  uint64_t s = seed;
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = test_rand_next(&s);
    size_t len = n - i < 8 ? n - i : 8;
    if (memcmp(b + i, &v, len) != 0) {
      unsigned char w[8];
      memcpy(w, &v, 8);
      for (size_t j = 0; j < len; j++)
        if (b[i + j] != w[j])
          return i + j;
    }
  }
  return SIZE_MAX;
}

/* Offset of the first byte at p that is not c, or SIZE_MAX. */
static inline size_t test_find_not(const void *p, size_t n, unsigned char c) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++)
    if (b[i] != c)
      return i;
  return SIZE_MAX;
}

/* Fails the test unless the n bytes at p are seed's stream. */
#define assert_random(p, n, seed) assert_int_equal(test_check_random((p), (n), (seed)), SIZE_MAX)
/* Fails the test unless the n bytes at p are all zero. */
#define assert_zeros(p, n) assert_int_equal(test_find_not((p), (n), 0), SIZE_MAX)

/* The process's resident set in bytes: the Rss: line of
 * /proc/self/smaps_rollup, or /proc/self/statm where that is missing. */
static inline size_t test_rss_bytes(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (f != NULL) {
    char line[256];
    size_t kb = 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, f) != NULL)
      found = sscanf(line, "Rss: %zu kB", &kb) == 1;
    fclose(f);
    if (found)
      return kb * 1024;
  }
  f = fopen("/proc/self/statm", "r");
  assert_non_null(f);
  size_t size_pages = 0, rss_pages = 0;
  assert_int_equal(fscanf(f, "%zu %zu", &size_pages, &rss_pages), 2);
  fclose(f);
  return rss_pages * (size_t)sysconf(_SC_PAGESIZE);
}

static inline size_t test_page_bytes(void) {
  return (size_t)sysconf(_SC_PAGESIZE);
}

/* Rounds n up to whole pages: what an allocation of n bytes reserves. */
static inline size_t test_pages_of(size_t n) {
  size_t page = test_page_bytes();
  return (n + page - 1) / page * page;
}

static inline memsleep_stats_t test_stats(const char *tag) {
  memsleep_stats_t s;
  memset(&s, 0xa5, sizeof s);
  int rc = memsleep_stats(tag, &s);
  if (rc != 0)
    fail_msg("memsleep_stats(%s): %s (%s)", tag ? tag : "NULL", memsleep_strerror(rc),
             memsleep_last_error());
  return s;
}

static inline void assert_stats_equal(memsleep_stats_t a, memsleep_stats_t b) {
  assert_int_equal(a.allocations, b.allocations);
  assert_int_equal(a.reserved_bytes, b.reserved_bytes);
  assert_int_equal(a.resident_bytes, b.resident_bytes);
  assert_int_equal(a.backup_bytes, b.backup_bytes);
}

/* Nothing is leaked: every figure of the sum over all tags is zero. */
static inline void assert_stats_zero(void) {
  memsleep_stats_t z = {0, 0, 0, 0};
  assert_stats_equal(test_stats(NULL), z);
}

/* Fails the test (printing the last error) unless call returns 0. */
#define assert_ok(call)                                                                            \
  do {                                                                                             \
    int rc_ok_ = (call);                                                                           \
    if (rc_ok_ != 0)                                                                               \
      fail_msg("%s returned %d (%s): %s", #call, rc_ok_, memsleep_strerror(rc_ok_),                \
               memsleep_last_error());                                                             \
  } while (0)

/* Allocates on the host and fails the test if that fails. */
static inline void *test_alloc(size_t size, const char *tag, unsigned flags) {
  void *p = NULL;
  int rc = memsleep_alloc(&p, size, MEMSLEEP_HOST, tag, flags);
  if (rc != 0)
    fail_msg("memsleep_alloc(%zu, \"%s\", 0x%x): %s (%s)", size, tag, flags, memsleep_strerror(rc),
             memsleep_last_error());
  assert_non_null(p);
  return p;
}

static inline int test_release1(const char *tag) {
  return memsleep_release(&tag, 1);
}
static inline int test_resume1(const char *tag) {
  return memsleep_resume(&tag, 1);
}

/* Sets the thread's last error to a known message, so a test can tell
 * that the call after it wrote its own. */
#define TEST_MARKER_TAG "marker-tag-never-used"
static inline void test_set_error_marker(void) {
  assert_int_equal(memsleep_is_asleep(TEST_MARKER_TAG), MEMSLEEP_ENOTFOUND);
  assert_non_null(strstr(memsleep_last_error(), TEST_MARKER_TAG));
}

/* The call since test_set_error_marker() left a non-empty message of its own. */
static inline void assert_error_set(void) {
  const char *e = memsleep_last_error();
  assert_non_null(e);
  if (e[0] == '\0' || strstr(e, TEST_MARKER_TAG) != NULL)
    fail_msg("last error not set by the failing call: \"%s\"", e);
}

/* The last error mentions what (e.g. "injected"). */
static inline void assert_error_mentions(const char *what) {
  const char *e = memsleep_last_error();
  if (strstr(e, what) == NULL)
    fail_msg("last error \"%s\" does not mention \"%s\"", e, what);
}

/* How a child process ended, read from a waitpid() status. */
enum { TEST_CHILD_OK = 0, TEST_CHILD_FAILED = 1 };

/* Runs fn(arg) in a forked child with the default action for SIGSEGV and
 * SIGBUS (cmocka's and the sanitizers' handlers would catch them) and
 * returns the waitpid() status. fn returns the child's exit code. */
static inline int test_in_child(int (*fn)(void *), void *arg) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    _exit(fn(arg));
  }
  int status = 0;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  return status;
}

/* The child of test_in_child() died of a memory fault. */
static inline int test_died_of_fault(int status) {
  return WIFSIGNALED(status) && (WTERMSIG(status) == SIGSEGV || WTERMSIG(status) == SIGBUS);
}

typedef struct test_region {
  const void *p; /* start */
  size_t n;      /* bytes */
  uint64_t seed; /* expected contents: seed's stream */
} test_region_t;

static inline int test_child_check_random(void *arg) {
  const test_region_t *r = arg;
  return test_check_random(r->p, r->n, r->seed) == SIZE_MAX ? TEST_CHILD_OK : TEST_CHILD_FAILED;
}

/* Whether n bytes at p can be read and hold seed's stream, found out in a
 * child: 1 yes, 0 readable but different, -1 reading them faults. */
static inline int test_probe_random(const void *p, size_t n, uint64_t seed) {
  test_region_t r = {p, n, seed};
  int status = test_in_child(test_child_check_random, &r);
  if (test_died_of_fault(status))
    return -1;
  return WIFEXITED(status) && WEXITSTATUS(status) == TEST_CHILD_OK ? 1 : 0;
}

#endif /* MEMSLEEP_TESTS_HELPERS_H */
