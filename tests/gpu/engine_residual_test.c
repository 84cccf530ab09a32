/*
 * engine_residual_test.c - after a full release, the GPU engine's process
 * holds no more GPU memory than a bare CUDA process (issue point
 * "nothing outside a region").
 *
 * Two child processes of this program run one after the other on CUDA
 * device 0, each stopping at named stages while this parent (which never
 * touches CUDA) measures it:
 *
 *   bare    the same binary (so the same libraries: cudart, cuBLAS, the
 *           engine's kernels, memsleep), which does what the engine does at
 *           start-up that is not model memory: makes device 0 current
 *           (ms__device_check: the CUDA context). Stage "bare".
 *   engine  an engine (C API, as memsleep-serve uses it) on a model of
 *           Qwen2-0.5B's shape made by ms__model_write_random, bf16 on the
 *           GPU, after a greedy request: stage "loaded"; then every tag
 *           released (ms__engine_graphs_release for cuda_graph, then
 *           memsleep_release(NULL, 0)): stage "released".
 *
 * At each stage the parent takes the process's GPU memory from
 * memsleep-probe (--pid P --no-children --gpu --json) and from nvidia-smi
 * (--query-compute-apps), and the child reports cudaMemGetInfo's free
 * memory of the device. Checks: at "released" the process is within
 * MARGIN of "bare" by the probe (and by nvidia-smi where it sees the
 * process), and the device's free memory is back within MARGIN of what it
 * was beside the bare process. Printed: the footprint at "loaded", the
 * residual, and the reclaimed fraction (of the whole footprint, and of what
 * the engine added above the bare process).
 *
 *   engine_residual_test PROBE        (PROBE: the memsleep-probe program)
 *
 * Exits 0 (pass), 1 (fail) or 77 (skipped: no usable CUDA device, or the
 * probe cannot see GPU memory per process here), with a table last.
 */
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "engine/device.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "memsleep/memsleep.h"

#define MIB    ((double)(1 << 20))
#define MARGIN ((long long)16 << 20)
#define STAGES 8

/* ---- the children ------------------------------------------------------ */

/* Tells the parent the stage and the device's free memory, then waits for
 * its go-ahead (a line on stdin). */
static int stage(const char *name) {
  size_t free_b = 0, total_b = 0;
  cudaError_t e = cudaMemGetInfo(&free_b, &total_b);
  printf("stage %s %zu %zu %s\n", name, free_b, total_b, e == cudaSuccess ? "ok" : "error");
  fflush(stdout);
  char line[64];
  return fgets(line, sizeof line, stdin) ? 0 : -1;
}

static int fail_child(const char *what) {
  printf("error %s: %s\n", what, memsleep_last_error());
  fflush(stdout);
  return 1;
}

typedef struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n, done;
} waiter_t;

static void on_token(void *u, int tok) {
  (void)tok;
  waiter_t *w = u;
  pthread_mutex_lock(&w->mu);
  w->n++;
  pthread_mutex_unlock(&w->mu);
}

static void on_finish(void *u, const ms__finish_info_t *info) {
  (void)info;
  waiter_t *w = u;
  pthread_mutex_lock(&w->mu);
  w->done = 1;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static int role_engine(const char *dir) {
  ms__engine_options_t o;
  memset(&o, 0, sizeof o);
  o.model_dir = dir;
  o.device = 0;
  o.max_batch = 64;
  o.max_context = 2048;
  if (ms__device_check(0) != 0)
    return fail_child("cuda:0");
  if (stage("context") != 0)
    return 1;
  ms__engine_t *e = NULL;
  if (ms__engine_create(&o, &e) != 0)
    return fail_child("engine on cuda:0");
  waiter_t w = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0};
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 32;
  sp.ignore_eos = 1;
  int prompt[20];
  for (int i = 0; i < 20; i++)
    prompt[i] = (i * 31 + 7) % 500;
  ms__request_cb_t cb = {on_token, on_finish, &w};
  if (ms__engine_submit(e, prompt, 20, &sp, &cb, NULL) != 0)
    return fail_child("submit");
  pthread_mutex_lock(&w.mu);
  while (!w.done)
    pthread_cond_wait(&w.cv, &w.mu);
  pthread_mutex_unlock(&w.mu);
  if (w.n != 32)
    return fail_child("greedy request (fewer tokens than asked)");
  if (stage("loaded") != 0)
    return 1;
  /* Every tag, as memsleep-serve's release of every tag: memsleep's and
   * the decode graphs' executables (tag cuda_graph). */
  if (ms__engine_wait_idle(e, 10000, NULL) != 0 || ms__engine_graphs_release(e) != 0 ||
      memsleep_release(NULL, 0) != 0)
    return fail_child("release of every tag");
  if (stage("released") != 0)
    return 1;
  /* For the report: what stays once the engine is gone altogether. */
  ms__engine_destroy(e);
  return stage("destroyed");
}

static int role_bare(void) {
  if (ms__device_check(0) != 0)
    return fail_child("cuda:0");
  if (stage("bare") != 0)
    return 1;
  /* For the report only: what a cuBLASLt handle (the engine's) and a
   * cuBLAS handle (which the engine does not use) cost beside it. */
  cublasLtHandle_t lt;
  if (cublasLtCreate(&lt) != CUBLAS_STATUS_SUCCESS)
    return fail_child("cublasLtCreate");
  if (stage("+cublasLt") != 0)
    return 1;
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS)
    return fail_child("cublasCreate");
  int rc = stage("+cublas");
  cublasDestroy(h);
  cublasLtDestroy(lt);
  return rc;
}

/* ---- the parent -------------------------------------------------------- */

typedef struct figure {
  char name[16];
  long long probe;    /* process GPU bytes by memsleep-probe, -1: unknown */
  long long smi;      /* by nvidia-smi, -1: not listed */
  long long dev_free; /* cudaMemGetInfo free bytes, reported by the child */
  long long dev_total;
} figure_t;

/* The process's GPU bytes on any GPU by memsleep-probe; -1 when unknown
 * (*why says why). */
static long long probe_bytes(const char *probe, pid_t pid, char *why, size_t cap) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' --pid %d --no-children --gpu --json", probe, (int)pid);
  FILE *f = popen(cmd, "r");
  if (!f) {
    snprintf(why, cap, "cannot run %s", probe);
    return -1;
  }
  char buf[16384];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  pclose(f);
  json_error_t err;
  json_t *j = json_loads(buf, 0, &err), *g = j ? json_object_get(j, "gpu") : NULL;
  long long v = -1;
  if (g && json_is_true(json_object_get(g, "known")))
    v = json_integer_value(json_object_get(g, "total_bytes"));
  else
    snprintf(why, cap, "probe: %s",
             g ? json_string_value(json_object_get(g, "detail")) : "no JSON output");
  json_decref(j);
  return v;
}

/* The process's used GPU memory by nvidia-smi in bytes; -1 when not listed. */
static long long smi_bytes(pid_t pid) {
  FILE *f = popen("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits "
                  "2>/dev/null",
                  "r");
  if (!f)
    return -1;
  long long v = -1, p, mib;
  char line[256];
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "%lld, %lld", &p, &mib) == 2 && p == pid)
      v = mib << 20;
  pclose(f);
  return v;
}

/* Runs this program as a child in role (with arg) and measures each stage
 * it stops at into figs[*nf ..]. Returns 0, 77 (child skipped) or 1. */
static int run_child(const char *self, const char *probe, const char *role, const char *arg,
                     figure_t *figs, int *nf, char *why, size_t cap) {
  int to[2], from[2];
  if (pipe(to) != 0 || pipe(from) != 0)
    return 1;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(to[0], 0);
    dup2(from[1], 1);
    close(to[1]);
    close(from[0]);
    execl(self, self, "--role", role, arg, (char *)NULL);
    _exit(127);
  }
  close(to[0]);
  close(from[1]);
  FILE *in = fdopen(from[0], "r"), *out = fdopen(to[1], "w");
  char line[512];
  int rc = 0;
  while (fgets(line, sizeof line, in)) {
    figure_t fg;
    memset(&fg, 0, sizeof fg);
    char ok[16];
    if (sscanf(line, "stage %15s %lld %lld %15s", fg.name, &fg.dev_free, &fg.dev_total, ok) == 4) {
      if (strcmp(ok, "ok") != 0)
        fg.dev_free = -1;
      fg.probe = probe_bytes(probe, pid, why, cap);
      fg.smi = smi_bytes(pid);
      fprintf(stderr, "  %-9s probe %9.1f MiB  nvidia-smi %9.1f MiB  device free %10.1f MiB\n",
              fg.name, fg.probe / MIB, fg.smi / MIB, fg.dev_free / MIB);
      if (*nf < STAGES)
        figs[(*nf)++] = fg;
      fputs("go\n", out);
      fflush(out);
    } else {
      fprintf(stderr, "  %s child: %s", role, line);
      rc = 1;
    }
  }
  fclose(out);
  fclose(in);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    rc = 1;
  return rc;
}

static const figure_t *find(const figure_t *f, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(f[i].name, name) == 0)
      return &f[i];
  return NULL;
}

static int make_model(const char *dir) {
  ms__model_spec_t s;
  ms__model_spec_default(&s, MS__ARCH_QWEN2);
  s.vocab_size = 151936;
  s.hidden_size = 896;
  s.intermediate_size = 4864;
  s.num_layers = 24;
  s.num_heads = 14;
  s.num_kv_heads = 2;
  s.max_position = 4096;
  s.rope_theta = 1000000.0f;
  s.dtype = MS__WDTYPE_BF16;
  s.seed = 3;
  return ms__model_write_random(dir, &s, NULL, NULL, NULL, NULL);
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "--role") == 0)
    return strcmp(argv[2], "bare") == 0 ? role_bare() : role_engine(argc > 3 ? argv[3] : "");
  if (argc != 2) {
    fprintf(stderr, "usage: %s MEMSLEEP_PROBE\n", argv[0]);
    return 2;
  }
  /* The parent never initialises CUDA: its context would count on the
   * device. Whether a device is there is the bare child's to find. */
  char self[4096];
  ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
  if (sl <= 0)
    return 1;
  self[sl] = '\0';
  figure_t f[STAGES];
  int nf = 0;
  char why[512] = "";
  int rb = run_child(self, argv[1], "bare", "", f, &nf, why, sizeof why);
  char root[] = "/tmp/memsleep-residual-XXXXXX";
  if (rb == 0 && (!mkdtemp(root) || make_model(root) != 0)) {
    fprintf(stderr, "FAIL: cannot write a model into %s: %s\n", root, memsleep_last_error());
    return 1;
  }
  int re = rb == 0 ? run_child(self, argv[1], "engine", root, f, &nf, why, sizeof why) : 1;
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
  if (rb == 0 && system(cmd) != 0)
    fprintf(stderr, "warning: could not remove %s\n", root);
  const figure_t *b = find(f, nf, "bare"), *l = find(f, nf, "loaded"), *r = find(f, nf, "released");
  if (rb != 0 && !b) {
    printf("SKIP: no usable CUDA device (the bare process could not start)\n");
    return 77;
  }
  if (b && b->probe < 0) {
    printf("SKIP: memsleep-probe cannot see this process's GPU memory here (%s)\n", why);
    return 77;
  }
  if (re != 0 || !b || !l || !r) {
    printf("FAIL: the engine process did not reach every stage\n");
    return 1;
  }
  long long d_probe = r->probe - b->probe, d_free = b->dev_free - r->dev_free;
  long long d_smi = r->smi >= 0 && b->smi >= 0 ? r->smi - b->smi : 0;
  int ok_probe = d_probe <= MARGIN,
      ok_free = b->dev_free >= 0 && r->dev_free >= 0 && d_free <= MARGIN;
  int ok_smi = d_smi <= MARGIN;
  double foot = (double)l->probe, added = (double)(l->probe - b->probe);
  printf("\n%-52s %12s\n", "GPU memory of the process", "MiB");
  printf("%-52s %12.1f\n", "bare (context, same libraries), by memsleep-probe", b->probe / MIB);
  printf("%-52s %12.1f\n", "engine, loaded and after a request", l->probe / MIB);
  printf("%-52s %12.1f\n", "engine, after releasing every tag", r->probe / MIB);
  printf("%-52s %12.1f  %s\n", "released - bare (memsleep-probe), limit 16", d_probe / MIB,
         ok_probe ? "PASS" : "FAIL");
  if (r->smi >= 0 && b->smi >= 0)
    printf("%-52s %12.1f  %s\n", "released - bare (nvidia-smi), limit 16", d_smi / MIB,
           ok_smi ? "PASS" : "FAIL");
  else
    printf("%-52s %12s\n", "released - bare (nvidia-smi)", "not listed");
  printf("%-52s %12.1f  %s\n", "device free: bare - released (cudaMemGetInfo)", d_free / MIB,
         ok_free ? "PASS" : "FAIL");
  printf("%-52s %11.1f%%\n", "reclaimed: of the whole footprint", 100.0 * (foot - r->probe) / foot);
  printf("%-52s %11.1f%%\n", "reclaimed: of what the engine added to bare",
         100.0 * (double)(l->probe - r->probe) / added);
  return ok_probe && ok_free && ok_smi ? 0 : 1;
}
