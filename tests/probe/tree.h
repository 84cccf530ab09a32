/*
 * tree.h - a real process tree for the probe's tests, and a way to run the CLI.
 *
 * test_tree_start() forks a tree of processes shaped by a parent table
 * (process 0 is the root, a child of the test; process i is forked by
 * process parent[i]). Each process then waits for commands on its own
 * pipe: TREE_TOUCH maps and touches its share of memory, TREE_FREE unmaps
 * it; each acknowledges on a shared pipe. Closing the command pipes makes
 * every process reap its children and exit. The test always knows exactly
 * what the tree holds and when.
 *
 * test_run_cli() runs the memsleep-probe binary with extra environment
 * variables and captures its exit status, stdout and stderr.
 */
#ifndef MEMSLEEP_TESTS_PROBE_TREE_H
#define MEMSLEEP_TESTS_PROBE_TREE_H

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define TREE_MAX 8

enum { TREE_TOUCH = 't', TREE_FREE = 'f', TREE_READY = 'r' };

typedef struct test_tree_t {
  size_t n;             /* processes */
  pid_t pids[TREE_MAX]; /* pids[0] is the root */
  int cmd_fd[TREE_MAX]; /* write ends of each process's command pipe */
  int ack_fd;           /* read end of the shared acknowledgement pipe */
  size_t bytes_each;    /* what TREE_TOUCH maps in each process */
} test_tree_t;

/* What a process says after each command. */
typedef struct tree_ack_t {
  int index;
  pid_t pid;
  char what;
} tree_ack_t;

static inline double test_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline void test_sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Writes one byte per page of [p, p + n), without the sanitizers' instrumentation: under
 * TSan an instrumented store also fills shadow memory, which would count in the RSS. */
__attribute__((no_sanitize("address", "thread"))) static inline void
tree_touch_pages(volatile unsigned char *p, size_t n) {
  long page = sysconf(_SC_PAGESIZE);
  for (size_t off = 0; off < n; off += (size_t)page)
    p[off] = (unsigned char)(off / (size_t)page + 1);
}

static inline void tree_ack(int fd, int index, char what) {
  tree_ack_t a = {index, getpid(), what};
  if (write(fd, &a, sizeof a) != (ssize_t)sizeof a)
    _exit(3);
}

/* The life of process index: fork its children, then obey commands until EOF. */
static inline void tree_process(int index, const int *parent, size_t n, int (*cmd)[2], int ack,
                                size_t bytes) {
  pid_t kids[TREE_MAX];
  size_t nkids = 0;
  for (size_t j = 0; j < n; j++) {
    if (parent[j] != index)
      continue;
    pid_t k = fork();
    if (k < 0)
      _exit(4);
    if (k == 0) {
      tree_process((int)j, parent, n, cmd, ack, bytes);
      _exit(0);
    }
    kids[nkids++] = k;
  }
  for (size_t j = 0; j < n; j++)
    if ((int)j != index)
      close(cmd[j][0]);
  tree_ack(ack, index, TREE_READY);
  unsigned char *mem = NULL;
  char c;
  while (read(cmd[index][0], &c, 1) == 1) {
    if (c == TREE_TOUCH && mem == NULL && bytes > 0) {
      void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED)
        _exit(5);
      mem = p;
      tree_touch_pages(mem, bytes);
    } else if (c == TREE_FREE && mem != NULL) {
      munmap(mem, bytes);
      mem = NULL;
    }
    tree_ack(ack, index, c);
  }
  for (size_t j = 0; j < nkids; j++)
    waitpid(kids[j], NULL, 0);
}

/* Reads one acknowledgement (30 s at most). */
static inline tree_ack_t tree_read_ack(test_tree_t *t) {
  tree_ack_t a;
  memset(&a, 0, sizeof a);
  struct pollfd p = {t->ack_fd, POLLIN, 0};
  if (poll(&p, 1, 30000) != 1)
    fail_msg("process tree: no acknowledgement within 30 s");
  ssize_t got = read(t->ack_fd, &a, sizeof a);
  if (got != (ssize_t)sizeof a)
    fail_msg("process tree: acknowledgement read returned %zd (%s)", got, strerror(errno));
  return a;
}

/* Forks the tree; returns when every process is ready and t->pids is filled. */
static inline void test_tree_start(test_tree_t *t, const int *parent, size_t n, size_t bytes_each) {
  assert_true(n >= 1 && n <= TREE_MAX);
  assert_int_equal(parent[0], -1);
  signal(SIGPIPE, SIG_IGN);
  memset(t, 0, sizeof *t);
  t->n = n;
  t->bytes_each = bytes_each;
  int cmd[TREE_MAX][2];
  int ack[2];
  /* Close-on-exec: a CLI the test runs meanwhile must not hold the tree's pipes open. */
  assert_int_equal(pipe2(ack, O_CLOEXEC), 0);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(pipe2(cmd[i], O_CLOEXEC), 0);
  fflush(stdout);
  fflush(stderr);
  pid_t root = fork();
  assert_true(root >= 0);
  if (root == 0) {
    close(ack[0]);
    for (size_t i = 0; i < n; i++)
      close(cmd[i][1]);
    tree_process(0, parent, n, cmd, ack[1], bytes_each);
    _exit(0);
  }
  close(ack[1]);
  for (size_t i = 0; i < n; i++) {
    close(cmd[i][0]);
    t->cmd_fd[i] = cmd[i][1];
  }
  t->ack_fd = ack[0];
  for (size_t i = 0; i < n; i++) {
    tree_ack_t a = tree_read_ack(t);
    assert_int_equal(a.what, TREE_READY);
    assert_true(a.index >= 0 && (size_t)a.index < n);
    t->pids[a.index] = a.pid;
  }
  assert_int_equal(t->pids[0], root);
}

/* Sends command c to every process and waits until all have done it. */
static inline void test_tree_command(test_tree_t *t, char c) {
  for (size_t i = 0; i < t->n; i++)
    assert_int_equal(write(t->cmd_fd[i], &c, 1), 1);
  for (size_t i = 0; i < t->n; i++)
    assert_int_equal(tree_read_ack(t).what, c);
}

/* Sends command c without waiting; test_tree_wait() collects the acknowledgements. */
static inline void test_tree_send(test_tree_t *t, char c) {
  for (size_t i = 0; i < t->n; i++)
    assert_int_equal(write(t->cmd_fd[i], &c, 1), 1);
}

static inline void test_tree_wait(test_tree_t *t, char c) {
  for (size_t i = 0; i < t->n; i++)
    assert_int_equal(tree_read_ack(t).what, c);
}

/* Ends every process of the tree and reaps the root. */
static inline void test_tree_stop(test_tree_t *t) {
  for (size_t i = 0; i < t->n; i++)
    close(t->cmd_fd[i]);
  close(t->ack_fd);
  int status = 0;
  assert_int_equal(waitpid(t->pids[0], &status, 0), t->pids[0]);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* Formats into a malloc'ed string (the caller frees). */
static inline char *test_format(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  assert_true(len >= 0);
  char *s = malloc((size_t)len + 1);
  assert_non_null(s);
  va_start(ap, fmt);
  vsnprintf(s, (size_t)len + 1, fmt, ap);
  va_end(ap);
  return s;
}

/* A finished (or running) run of the CLI. */
typedef struct test_cli_t {
  pid_t pid; /* while running */
  FILE *out; /* its stdout, then its text */
  FILE *err;
  int status; /* exit status, or -1 if it did not exit normally */
  char *stdout_text;
  char *stderr_text;
} test_cli_t;

static inline char *tree_slurp(FILE *f) {
  fflush(f);
  long len = ftell(f);
  assert_true(len >= 0);
  rewind(f);
  char *s = calloc(1, (size_t)len + 1);
  assert_non_null(s);
  if (len > 0)
    assert_int_equal(fread(s, 1, (size_t)len, f), (size_t)len);
  fclose(f);
  return s;
}

/*
 * Starts cli with argv (NULL-terminated, argv[0] included) and the
 * environment changed by env: "NAME=value" sets, "NAME" unsets
 * (NULL-terminated; may be NULL).
 */
static inline void test_cli_start(test_cli_t *r, const char *cli, const char *const *argv,
                                  const char *const *env) {
  memset(r, 0, sizeof *r);
  r->out = tmpfile();
  r->err = tmpfile();
  assert_non_null(r->out);
  assert_non_null(r->err);
  fflush(stdout);
  fflush(stderr);
  r->pid = fork();
  assert_true(r->pid >= 0);
  if (r->pid == 0) {
    dup2(fileno(r->out), STDOUT_FILENO);
    dup2(fileno(r->err), STDERR_FILENO);
    for (size_t i = 0; env != NULL && env[i] != NULL; i++) {
      const char *eq = strchr(env[i], '=');
      if (eq == NULL) {
        unsetenv(env[i]);
      } else {
        char name[128];
        size_t len = (size_t)(eq - env[i]);
        if (len >= sizeof name)
          _exit(126);
        memcpy(name, env[i], len);
        name[len] = '\0';
        setenv(name, eq + 1, 1);
      }
    }
    execv(cli, (char *const *)argv);
    _exit(127);
  }
}

/* Waits for the run started by test_cli_start() and collects its output. */
static inline void test_cli_finish(test_cli_t *r) {
  int status = 0;
  assert_int_equal(waitpid(r->pid, &status, 0), r->pid);
  r->status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r->stdout_text = tree_slurp(r->out);
  r->out = NULL; /* closed by tree_slurp */
  r->stderr_text = tree_slurp(r->err);
  r->err = NULL;
  if (r->status == 127)
    fail_msg("could not run the CLI");
  /* A sanitizer report in the CLI exits 1, which a gate test could take for "above". */
  if (strstr(r->stderr_text, "Sanitizer") != NULL || strstr(r->stderr_text, "runtime error:"))
    fail_msg("the CLI reported a sanitizer error:\n%s", r->stderr_text);
}

static inline void test_cli_run(test_cli_t *r, const char *cli, const char *const *argv,
                                const char *const *env) {
  test_cli_start(r, cli, argv, env);
  test_cli_finish(r);
}

static inline void test_cli_free(test_cli_t *r) {
  free(r->stdout_text);
  free(r->stderr_text);
  memset(r, 0, sizeof *r);
}

/* The number after "key": in text, searching from the first occurrence of after
 * (NULL: the start). Fails the test when missing. */
static inline unsigned long long test_json_number(const char *text, const char *after,
                                                  const char *key) {
  const char *from = text;
  if (after != NULL) {
    from = strstr(text, after);
    if (from == NULL)
      fail_msg("\"%s\" not in output: %s", after, text);
  }
  char pattern[96];
  snprintf(pattern, sizeof pattern, "\"%s\":", key);
  const char *at = strstr(from, pattern);
  if (at == NULL)
    fail_msg("\"%s\" not in output: %s", key, text);
  return strtoull(at + strlen(pattern), NULL, 10);
}

#define MIB (1024ULL * 1024ULL)

#endif /* MEMSLEEP_TESTS_PROBE_TREE_H */
