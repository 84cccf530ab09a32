/*
 * test_cuda_oom.c - resume while another process holds the GPU.
 *
 * The RL handoff's failure case: the inference side released its memory, a
 * trainer took the GPU, and the inference side resumes too early. This test
 * releases a BACKUP tag (two 1 GiB allocations and a small one), starts a
 * second process (this program again, with --hold) that cudaMallocs the
 * device's free memory until only 256 MiB are left, and then resumes. The
 * resume must fail with MEMSLEEP_ENOMEM, its message must say how many bytes
 * were needed and how many were free, the tag must stay asleep with its
 * backups and figures intact, and no device memory may stay mapped by the
 * failed attempt. Once the other process has freed its memory and exited,
 * the same resume must succeed and every byte must be back.
 *
 * The second process is started with posix_spawn (a fresh exec of this
 * binary): forking a process that has a CUDA context is not safe.
 *
 *   test_cuda_oom            (exit 0 pass, 1 fail, 77 no CUDA device)
 *   test_cuda_oom --hold BYTES   (the other process: leaves BYTES free)
 */
#include <ctype.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <strings.h>
#include <sys/wait.h>
#include <unistd.h>

#include "gpu_test.h"

extern char **environ;

#define DEV            0
#define BIG            GT_GIB         /* each of the two large allocations */
#define LEAVE_FREE     (256 * GT_MIB) /* what the other process leaves free */
#define FREE_TOLERANCE (128 * GT_MIB) /* between our free figure and the message's */

/* The other process: takes all but `leave` bytes of the device with
 * cudaMalloc, says "held H free F", frees when told "free" (or when its
 * stdin closes), says "freed" and exits. */
static int hold_main(size_t leave) {
  enum { MAXP = 4096 };
  static void *ptrs[MAXP];
  size_t n = 0, held = 0, chunk = GT_GIB, free_b = 0, total_b = 0;
  setvbuf(stdout, NULL, _IOLBF, 0);
  alarm(600); /* never outlive a stuck parent for long */
  cudaError_t e = cudaSetDevice(DEV);
  if (e == cudaSuccess)
    e = cudaFree(NULL);
  if (e != cudaSuccess) {
    printf("error starting CUDA: %s\n", cudaGetErrorName(e));
    return 1;
  }
  while (n < MAXP && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess &&
         free_b > leave + 2 * GT_MIB) {
    size_t want = (free_b - leave) < chunk ? free_b - leave : chunk;
    want = want / (2 * GT_MIB) * (2 * GT_MIB);
    if (want == 0)
      break;
    void *p = NULL;
    if (cudaMalloc(&p, want) == cudaSuccess) {
      ptrs[n++] = p;
      held += want;
      continue;
    }
    cudaGetLastError(); /* an out-of-memory is not sticky; clear it */
    if (chunk <= 2 * GT_MIB)
      break;
    chunk /= 2;
  }
  cudaMemGetInfo(&free_b, &total_b);
  printf("held %zu free %zu\n", held, free_b);
  char line[64];
  while (fgets(line, sizeof line, stdin) != NULL && strncmp(line, "free", 4) != 0)
    ;
  for (size_t i = 0; i < n; i++)
    cudaFree(ptrs[i]);
  e = cudaDeviceSynchronize();
  printf("freed %s\n", cudaGetErrorName(e));
  return e == cudaSuccess ? 0 : 1;
}

/* The other process, as seen from here. */
typedef struct holder {
  pid_t pid; /* 0: not running */
  FILE *to, *from;
} holder_t;

static int holder_start(holder_t *h, size_t leave) {
  char exe[4096];
  ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (len <= 0) {
    perror("readlink /proc/self/exe");
    return -1;
  }
  exe[len] = '\0';
  int to[2], from[2];
  if (pipe2(to, O_CLOEXEC) != 0)
    return -1;
  if (pipe2(from, O_CLOEXEC) != 0) {
    close(to[0]);
    close(to[1]);
    return -1;
  }
  char leave_s[32];
  snprintf(leave_s, sizeof leave_s, "%zu", leave);
  char *argv[] = {exe, "--hold", leave_s, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, to[0], 0);
  posix_spawn_file_actions_adddup2(&fa, from[1], 1);
  int err = posix_spawn(&h->pid, exe, &fa, NULL, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  close(to[0]);
  close(from[1]);
  if (err != 0) {
    fprintf(stderr, "posix_spawn %s: %s\n", exe, strerror(err));
    h->pid = 0;
    close(to[1]);
    close(from[0]);
    return -1;
  }
  h->to = fdopen(to[1], "w");
  h->from = fdopen(from[0], "r");
  return h->to != NULL && h->from != NULL ? 0 : -1;
}

/* Tells the other process to free and waits for it; returns its exit
 * status, or -1. */
static int holder_stop(holder_t *h) {
  if (h->pid == 0)
    return -1;
  if (h->to != NULL) {
    fputs("free\n", h->to);
    fclose(h->to);
    h->to = NULL;
  }
  char line[128];
  if (h->from != NULL) {
    while (fgets(line, sizeof line, h->from) != NULL)
      printf("other process: %s", line);
    fclose(h->from);
    h->from = NULL;
  }
  int status = 0;
  pid_t r = waitpid(h->pid, &status, 0);
  h->pid = 0;
  if (r < 0)
    return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Whether msg contains a decimal number in [lo, hi]. */
static int mentions_number(const char *msg, size_t lo, size_t hi) {
  for (const char *q = msg; *q != '\0'; q++) {
    if (!isdigit((unsigned char)*q) || (q > msg && isdigit((unsigned char)q[-1])))
      continue;
    unsigned long long v = strtoull(q, NULL, 10);
    if (v >= lo && v <= hi)
      return 1;
  }
  return 0;
}

static int mentions_word(const char *msg, const char *word) {
  size_t n = strlen(word);
  for (const char *q = msg; *q != '\0'; q++)
    if (strncasecmp(q, word, n) == 0)
      return 1;
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--hold") == 0)
    return hold_main((size_t)strtoull(argv[2], NULL, 10));
  int rc = gt_begin("test_cuda_oom", DEV);
  if (rc != 0)
    return rc;
  signal(SIGPIPE, SIG_IGN); /* a dead child must not kill us through its pipe */
  const char *tags[] = {"o-weights"};
  const size_t sizes[] = {BIG, BIG, GT_MIB};
  enum { N = 3 };
  void *p[N] = {NULL};
  holder_t h = {0, NULL, NULL};

  size_t free0 = gt_free_bytes();
  GT_CHECK(free0 >= 2 * BIG + 2 * GT_GIB, "needs 4 GiB of free device memory, %.0f MiB free",
           gt_mib(free0));
  for (size_t i = 0; i < N; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], MEMSLEEP_BACKUP));
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 10 + i));
  }
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  memsleep_stats_t asleep = gt_stats(tags[0]);
  gt_print_stats("released:", asleep);

  GT_CHECK(holder_start(&h, LEAVE_FREE) == 0, "could not start the other process");
  char line[256] = "";
  size_t held = 0, child_free = 0;
  GT_CHECK(fgets(line, sizeof line, h.from) != NULL &&
               sscanf(line, "held %zu free %zu", &held, &child_free) == 2,
           "the other process did not report what it holds: \"%s\"", line);
  size_t free_held = gt_free_bytes();
  printf("other process (pid %d) holds %.0f MiB; free now %.0f MiB; the tag needs %.0f MiB\n",
         (int)h.pid, gt_mib(held), gt_mib(free_held), gt_mib(asleep.reserved_bytes));
  GT_CHECK(free_held < BIG,
           "the other process left %.0f MiB free, enough for a 1 GiB mapping: the test cannot "
           "provoke the out-of-memory",
           gt_mib(free_held));

  rc = memsleep_resume(tags, 1);
  char msg[1024];
  snprintf(msg, sizeof msg, "%s", memsleep_last_error() ? memsleep_last_error() : "");
  printf("resume while the GPU is full: %d (%s): %s\n", rc, memsleep_strerror(rc), msg);
  GT_CHECK(rc == MEMSLEEP_ENOMEM, "resume with the GPU full returned %d (%s), want ENOMEM", rc,
           memsleep_strerror(rc));
  GT_CHECK(mentions_word(msg, "free"), "the message does not say how much was free: \"%s\"", msg);
  GT_CHECK(mentions_number(msg, BIG, asleep.reserved_bytes + GT_MIB),
           "the message names no byte count between %zu and %zu as needed: \"%s\"", (size_t)BIG,
           asleep.reserved_bytes + GT_MIB, msg);
  GT_CHECK(mentions_number(msg, free_held > FREE_TOLERANCE ? free_held - FREE_TOLERANCE : 0,
                           free_held + FREE_TOLERANCE < BIG ? free_held + FREE_TOLERANCE : BIG - 1),
           "the message names no free byte count near %zu (cudaMemGetInfo): \"%s\"", free_held,
           msg);
  GT_CHECK(memsleep_is_asleep(tags[0]) == 1, "the tag is not asleep after a failed resume");
  memsleep_stats_t after = gt_stats(tags[0]);
  GT_CHECK(after.allocations == asleep.allocations &&
               after.reserved_bytes == asleep.reserved_bytes && after.resident_bytes == 0 &&
               after.backup_bytes == asleep.backup_bytes,
           "figures changed by the failed resume: resident %zu, backup %zu (was %zu)",
           after.resident_bytes, after.backup_bytes, asleep.backup_bytes);
  GT_CHECK(gt_measure(tags[0]).resident_bytes == 0,
           "memory measured resident after the failed resume");
  size_t free_failed = gt_free_bytes();
  GT_CHECK(free_failed + GT_SLACK >= free_held,
           "the failed resume kept %.1f MiB of device memory mapped",
           gt_diff_mib(free_held, free_failed));

  int status = holder_stop(&h);
  GT_CHECK(status == 0, "the other process exited with status %d", status);
  size_t free_now = gt_free_bytes();
  for (double t = gt_now_s(); free_now < asleep.reserved_bytes + 64 * GT_MIB && gt_now_s() - t < 10;
       free_now = gt_free_bytes())
    usleep(10000);
  printf("other process gone: free %.0f MiB\n", gt_mib(free_now));
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK(memsleep_is_asleep(tags[0]) == 0, "the tag is asleep after the retried resume");
  for (size_t i = 0; i < N; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 10 + i, "BACKUP allocation after the retried resume");
out:
  if (h.pid != 0)
    holder_stop(&h);
  gt_free_all(p, N);
  return gt_end();
}
