/*
 * cuda_pin.c - prepares pinned backup buffers on background threads (see
 * cuda_pin.h). A job maps one range for all its buffers at once (every
 * mmap would stall the page faults of the other threads), fault workers
 * claim buffers in order and fault each one in whole, register threads
 * (MEMSLEEP_CUDA_PIN_REGISTRARS, default 2; buffer i on thread i % n)
 * register them with the driver, and a release
 * takes them in order, waiting only for the one it needs. Every buffer is
 * a multiple of MS__PIN_ALIGN long and starts on such a boundary, so huge
 * pages can back it and backup_free can munmap it alone.
 */
#include "cuda_pin.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MS__PIN_WORKERS_MAX    16
#define MS__PIN_REGISTRARS_MAX 4
#define MS__PIN_ALIGN          ((size_t)2 << 20)

enum { MS__PIN_PENDING, MS__PIN_FAULTED, MS__PIN_READY, MS__PIN_FAILED, MS__PIN_TAKEN };

struct ms__pin_job {
  int device;
  CUcontext ctx;
  size_t n;
  size_t *sizes;
  char *base;   /* one mapping holding every buffer */
  size_t *offs; /* buffer i starts at base + offs[i] */
  void **bufs;
  int *state;
  size_t next_fault; /* next buffer a fault worker claims */
  size_t next_take;  /* next buffer ms__pin_take hands out */
  int cancel;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t workers[MS__PIN_WORKERS_MAX];
  size_t nworkers;
  pthread_t registrars[MS__PIN_REGISTRARS_MAX];
  size_t nregistrars;
  size_t want_registrars; /* buffer i is registered by thread i % want_registrars */
  size_t next_registrar;  /* the id the next registrar thread takes */
};

size_t ms__pin_round(size_t size) {
  return (size + MS__PIN_ALIGN - 1) / MS__PIN_ALIGN * MS__PIN_ALIGN;
}

static int ms__pin_thp(void) {
  static int thp = -1; /* MEMSLEEP_CUDA_THP=0 leaves the kernel's default */
  if (thp < 0) {
    const char *env = getenv("MEMSLEEP_CUDA_THP");
    thp = !(env != NULL && strcmp(env, "0") == 0);
  }
  return thp;
}

/* Maps n bytes (a multiple of MS__PIN_ALIGN) aligned to MS__PIN_ALIGN. */
static char *ms__pin_map(size_t n) {
  char *raw =
      mmap(NULL, n + MS__PIN_ALIGN, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED)
    return NULL;
  uintptr_t at = ((uintptr_t)raw + MS__PIN_ALIGN - 1) / MS__PIN_ALIGN * MS__PIN_ALIGN;
  char *p = (char *)at;
  if (p > raw)
    munmap(raw, (size_t)(p - raw));
  size_t tail = (size_t)(raw + n + MS__PIN_ALIGN - (p + n));
  if (tail > 0)
    munmap(p + n, tail);
  if (ms__pin_thp())
    madvise(p, n, MADV_HUGEPAGE); /* fewer faults and pins; fine if refused */
  return p;
}

static void ms__pin_touch(char *p, size_t n) {
  for (size_t off = 0; off < n; off += 4096)
    p[off] = 0;
}

void *ms__pin_fault(size_t size) {
  size_t n = ms__pin_round(size);
  char *p = ms__pin_map(n);
  if (p != NULL)
    ms__pin_touch(p, n);
  return p;
}

static void *ms__pin_worker(void *arg) {
  ms__pin_job_t *j = arg;
  pthread_mutex_lock(&j->mu);
  while (!j->cancel && j->next_fault < j->n) {
    size_t i = j->next_fault++;
    pthread_mutex_unlock(&j->mu);
    ms__pin_touch(j->base + j->offs[i], ms__pin_round(j->sizes[i]));
    pthread_mutex_lock(&j->mu);
    j->bufs[i] = j->base + j->offs[i];
    j->state[i] = MS__PIN_FAULTED;
    pthread_cond_broadcast(&j->cv);
  }
  pthread_mutex_unlock(&j->mu);
  return NULL;
}

static void *ms__pin_registrar(void *arg) {
  ms__pin_job_t *j = arg;
  int entered = ms__cu.CtxPushCurrent(j->ctx) == MS__CU_SUCCESS;
  pthread_mutex_lock(&j->mu);
  size_t id = j->next_registrar++;
  for (size_t i = id; i < j->n && !j->cancel; i += j->want_registrars) {
    while (j->state[i] == MS__PIN_PENDING && !j->cancel)
      pthread_cond_wait(&j->cv, &j->mu);
    if (j->cancel || j->state[i] != MS__PIN_FAULTED)
      continue;
    pthread_mutex_unlock(&j->mu);
    size_t n = ms__pin_round(j->sizes[i]);
    int ok =
        entered && ms__cu.MemHostRegister(j->bufs[i], n, MS__CU_HOST_PORTABLE) == MS__CU_SUCCESS;
    pthread_mutex_lock(&j->mu);
    j->state[i] = ok ? MS__PIN_READY : MS__PIN_FAILED;
    pthread_cond_broadcast(&j->cv);
  }
  pthread_mutex_unlock(&j->mu);
  if (entered) {
    CUcontext old;
    ms__cu.CtxPopCurrent(&old);
  }
  return NULL;
}

/* Fault workers: 8 by default (fewer when there are fewer CPUs). More
 * contend for the same kernel locks as the registration: on an H100 host
 * with 16 CPUs, 8 workers and 2 registrars pinned 16 GiB in 0.67 s,
 * steadier than 4 (0.95 s) or 12-15 (0.55-0.83 s). */
static size_t ms__pin_workers_wanted(void) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  long dflt = cpus > 1 ? cpus - 1 : 1;
  if (dflt > 8)
    dflt = 8;
  return (size_t)ms__cu_env_long("MEMSLEEP_CUDA_PIN_THREADS", dflt, 1, MS__PIN_WORKERS_MAX);
}

ms__pin_job_t *ms__pin_start(int device, CUcontext ctx, const size_t *sizes, size_t n) {
  if (n == 0)
    return NULL;
  ms__pin_job_t *j = calloc(1, sizeof *j);
  if (j == NULL)
    return NULL;
  j->sizes = malloc(n * sizeof *j->sizes);
  j->offs = malloc(n * sizeof *j->offs);
  j->bufs = calloc(n, sizeof *j->bufs);
  j->state = calloc(n, sizeof *j->state);
  size_t total = 0;
  for (size_t i = 0; j->offs != NULL && i < n; i++) {
    j->offs[i] = total;
    total += ms__pin_round(sizes[i]);
  }
  if (j->sizes == NULL || j->offs == NULL || j->bufs == NULL || j->state == NULL ||
      (j->base = ms__pin_map(total)) == NULL) {
    free(j->sizes);
    free(j->offs);
    free(j->bufs);
    free(j->state);
    free(j);
    return NULL;
  }
  for (size_t i = 0; i < n; i++)
    j->sizes[i] = sizes[i];
  j->device = device;
  j->ctx = ctx;
  j->n = n;
  pthread_mutex_init(&j->mu, NULL);
  pthread_cond_init(&j->cv, NULL);
  size_t want = ms__pin_workers_wanted();
  if (want > n)
    want = n;
  for (size_t w = 0; w < want; w++)
    if (pthread_create(&j->workers[j->nworkers], NULL, ms__pin_worker, j) == 0)
      j->nworkers++;
  j->want_registrars =
      (size_t)ms__cu_env_long("MEMSLEEP_CUDA_PIN_REGISTRARS", 2, 1, MS__PIN_REGISTRARS_MAX);
  for (size_t r = 0; j->nworkers > 0 && r < j->want_registrars; r++)
    if (pthread_create(&j->registrars[j->nregistrars], NULL, ms__pin_registrar, j) == 0)
      j->nregistrars++;
  if (j->nregistrars < j->want_registrars) {
    ms__pin_stop(j); /* each registrar serves its share of the buffers: need them all */
    return NULL;
  }
  return j;
}

void *ms__pin_take(ms__pin_job_t *j, size_t size) {
  if (j == NULL)
    return NULL;
  void *p = NULL;
  pthread_mutex_lock(&j->mu);
  size_t i = j->next_take;
  if (i < j->n && j->sizes[i] == size) {
    while (j->state[i] == MS__PIN_PENDING || j->state[i] == MS__PIN_FAULTED)
      pthread_cond_wait(&j->cv, &j->mu);
    if (j->state[i] == MS__PIN_READY) {
      p = j->bufs[i];
      j->bufs[i] = NULL;
      j->state[i] = MS__PIN_TAKEN;
    }
    j->next_take++;
  }
  pthread_mutex_unlock(&j->mu);
  return p;
}

void ms__pin_stop(ms__pin_job_t *j) {
  if (j == NULL)
    return;
  pthread_mutex_lock(&j->mu);
  j->cancel = 1;
  pthread_cond_broadcast(&j->cv);
  pthread_mutex_unlock(&j->mu);
  for (size_t w = 0; w < j->nworkers; w++)
    pthread_join(j->workers[w], NULL);
  for (size_t r = 0; r < j->nregistrars; r++)
    pthread_join(j->registrars[r], NULL);
  int entered = 0;
  for (size_t i = 0; i < j->n; i++) {
    if (j->state[i] == MS__PIN_TAKEN)
      continue; /* the core owns it now */
    if (j->state[i] == MS__PIN_READY) {
      if (!entered)
        entered = ms__cu.CtxPushCurrent(j->ctx) == MS__CU_SUCCESS;
      ms__cu.MemHostUnregister(j->bufs[i]);
    }
    munmap(j->base + j->offs[i], ms__pin_round(j->sizes[i]));
  }
  if (entered) {
    CUcontext old;
    ms__cu.CtxPopCurrent(&old);
  }
  pthread_cond_destroy(&j->cv);
  pthread_mutex_destroy(&j->mu);
  free(j->sizes);
  free(j->offs);
  free(j->bufs);
  free(j->state);
  free(j);
}
