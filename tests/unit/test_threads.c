/*
 * test_threads.c - the memory core under several threads at once.
 *
 * Proves that four threads can allocate, write, verify and free in their
 * own tags (and release and resume those now and then) while another
 * thread releases and resumes other tags, with every BACKUP allocation
 * intact after every resume and the stats back to zero at the end; that
 * threads allocating into a tag that another thread keeps releasing and
 * resuming each get either success or MEMSLEEP_ESTATE, never anything
 * else, and can always free, while stats and measurements go on
 * answering; and that frees race releases safely. Bounded iteration counts
 * keep it short under the sanitizers; it must be clean under
 * ThreadSanitizer, so the threads report failures through atomics, never
 * through cmocka.
 */
#include <pthread.h>
#include <stdatomic.h>

#include "helpers.h"

#define WORKERS        4
#define WORKER_ITERS   400
#define WORKER_ALLOCS  4
#define SLEEPER_CYCLES 100
#define FLIP_THREADS   3
#define FLIP_ALLOCS    1000
#define FLIP_CYCLES    150

/* The first failure any thread saw; the test reports it from main. */
static atomic_int g_failures;
static pthread_mutex_t g_msg_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_msg[512];

static void thread_fail(const char *what, int rc) {
  if (atomic_fetch_add(&g_failures, 1) == 0) {
    pthread_mutex_lock(&g_msg_lock);
    snprintf(g_msg, sizeof g_msg, "%s: rc %d (%s): %s", what, rc, memsleep_strerror(rc),
             memsleep_last_error());
    pthread_mutex_unlock(&g_msg_lock);
  }
}

static void assert_no_thread_failed(void) {
  int n = atomic_load(&g_failures);
  if (n != 0) {
    pthread_mutex_lock(&g_msg_lock);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", g_msg);
    pthread_mutex_unlock(&g_msg_lock);
    fail_msg("%d failures in threads; first: %s", n, msg);
  }
}

static void reset_failures(void) {
  atomic_store(&g_failures, 0);
  pthread_mutex_lock(&g_msg_lock);
  g_msg[0] = '\0';
  pthread_mutex_unlock(&g_msg_lock);
}

typedef struct worker {
  int id;
  char tag[32];
} worker_t;

/* Allocates, fills, verifies and frees in its own tag; every 16 rounds it
 * also puts its tag to sleep and back with its allocations live. */
static void *worker_main(void *arg) {
  worker_t *w = arg;
  uint64_t rng = 0xabc0u + (uint64_t)w->id;
  static const unsigned kinds[3] = {MEMSLEEP_BACKUP, 0, MEMSLEEP_ZERO};
  for (int it = 0; it < WORKER_ITERS && atomic_load(&g_failures) == 0; it++) {
    void *p[WORKER_ALLOCS];
    size_t n[WORKER_ALLOCS];
    unsigned flags[WORKER_ALLOCS];
    uint64_t seed[WORKER_ALLOCS];
    for (int i = 0; i < WORKER_ALLOCS; i++) {
      n[i] = 1 + (size_t)(test_rand_next(&rng) % 65536);
      flags[i] = kinds[(size_t)(it + i) % 3];
      seed[i] = test_rand_next(&rng);
      int rc = memsleep_alloc(&p[i], n[i], MEMSLEEP_HOST, w->tag, flags[i]);
      if (rc != 0) {
        thread_fail("worker alloc", rc);
        for (int j = 0; j < i; j++)
          memsleep_free(p[j]);
        return NULL;
      }
      test_fill_random(p[i], n[i], seed[i]);
    }
    if (it % 16 == 15) {
      const char *tag = w->tag;
      int rc = memsleep_release(&tag, 1);
      if (rc != 0)
        thread_fail("worker release", rc);
      else if (memsleep_is_asleep(tag) != 1)
        thread_fail("worker tag not asleep after release", 0);
      rc = rc == 0 ? memsleep_resume(&tag, 1) : rc;
      if (rc != 0)
        thread_fail("worker resume", rc);
    }
    for (int i = 0; i < WORKER_ALLOCS; i++) {
      int lost = (it % 16 == 15) && !(flags[i] & MEMSLEEP_BACKUP);
      if (!lost && test_check_random(p[i], n[i], seed[i]) != SIZE_MAX)
        thread_fail("worker contents differ", 0);
      int rc = memsleep_free(p[i]);
      if (rc != 0)
        thread_fail("worker free", rc);
    }
  }
  return NULL;
}

#define SLEEP_ALLOCS 6
static const char *const sleep_tags[2] = {"th-sleep-a", "th-sleep-b"};

typedef struct sleeper {
  void *p[SLEEP_ALLOCS];
  size_t n[SLEEP_ALLOCS];
  unsigned flags[SLEEP_ALLOCS];
} sleeper_t;

/* Releases and resumes the sleep tags (one, the other, or both) over and
 * over, checking BACKUP contents and ZERO zeros after every resume and
 * writing new contents for the next cycle. */
static void *sleeper_main(void *arg) {
  sleeper_t *s = arg;
  for (int c = 0; c < SLEEPER_CYCLES && atomic_load(&g_failures) == 0; c++) {
    const char *const *tags = c % 3 == 1 ? &sleep_tags[1] : sleep_tags;
    size_t ntags = c % 3 == 2 ? 2 : 1;
    int rc = memsleep_release(tags, ntags);
    if (rc != 0) {
      thread_fail("sleeper release", rc);
      break;
    }
    for (size_t t = 0; t < ntags; t++)
      if (memsleep_is_asleep(tags[t]) != 1)
        thread_fail("sleeper tag not asleep after release", 0);
    rc = memsleep_resume(tags, ntags);
    if (rc != 0) {
      thread_fail("sleeper resume", rc);
      break;
    }
    for (int i = 0; i < SLEEP_ALLOCS; i++) {
      if (s->flags[i] & MEMSLEEP_BACKUP) {
        if (test_check_random(s->p[i], s->n[i], (uint64_t)(c * 100 + i)) != SIZE_MAX)
          thread_fail("sleeper BACKUP contents differ after resume", 0);
        test_fill_random(s->p[i], s->n[i], (uint64_t)((c + 1) * 100 + i));
      } else if (s->flags[i] & MEMSLEEP_ZERO) {
        int was_released = i % 2 == 0 ? ntags == 2 || c % 3 == 0 : ntags == 2 || c % 3 == 1;
        if (was_released && test_find_not(s->p[i], s->n[i], 0) != SIZE_MAX)
          thread_fail("sleeper ZERO not zero after resume", 0);
        memset(s->p[i], 0x5a, s->n[i]);
      }
    }
  }
  return NULL;
}

static void test_threads_allocate_while_other_tags_sleep_and_wake(void **state) {
  (void)state;
  reset_failures();
  sleeper_t s;
  for (int i = 0; i < SLEEP_ALLOCS; i++) {
    s.n[i] = (size_t)(i + 1) * 40000 + 3;
    s.flags[i] = i % 3 == 2 ? MEMSLEEP_ZERO : MEMSLEEP_BACKUP;
    s.p[i] = test_alloc(s.n[i], sleep_tags[i % 2], s.flags[i]);
    if (s.flags[i] & MEMSLEEP_BACKUP)
      test_fill_random(s.p[i], s.n[i], (uint64_t)i);
    else
      memset(s.p[i], 0x5a, s.n[i]);
  }

  worker_t w[WORKERS];
  pthread_t tid[WORKERS + 1];
  for (int i = 0; i < WORKERS; i++) {
    w[i].id = i;
    snprintf(w[i].tag, sizeof w[i].tag, "th-work-%d", i);
    assert_int_equal(pthread_create(&tid[i], NULL, worker_main, &w[i]), 0);
  }
  assert_int_equal(pthread_create(&tid[WORKERS], NULL, sleeper_main, &s), 0);
  for (int i = 0; i <= WORKERS; i++)
    assert_int_equal(pthread_join(tid[i], NULL), 0);

  /* Whatever happened, leave nothing behind before reporting. */
  for (size_t t = 0; t < 2; t++)
    if (memsleep_is_asleep(sleep_tags[t]) == 1)
      memsleep_resume(&sleep_tags[t], 1);
  for (int i = 0; i < SLEEP_ALLOCS; i++)
    assert_ok(memsleep_free(s.p[i]));
  assert_no_thread_failed();
  for (int i = 0; i < WORKERS; i++)
    assert_int_equal(memsleep_is_asleep(w[i].tag), 0);
  assert_stats_zero();
}

/* Allocation into a tag that flips between asleep and awake. */
static atomic_int g_flip_ok, g_flip_estate, g_flip_done;

static void *flip_alloc_main(void *arg) {
  uintptr_t id = (uintptr_t)arg;
  for (int i = 0; i < FLIP_ALLOCS && atomic_load(&g_failures) == 0; i++) {
    void *p = NULL;
    unsigned flags = (unsigned)(id + (uintptr_t)i) % 3 == 0 ? MEMSLEEP_BACKUP : 0;
    int rc = memsleep_alloc(&p, 4096 * (1 + (size_t)i % 4), MEMSLEEP_HOST, "th-flip", flags);
    if (rc == 0) {
      atomic_fetch_add(&g_flip_ok, 1);
      /* Not touched: the tag may be asleep by now. Free works either way. */
      rc = memsleep_free(p);
      if (rc != 0)
        thread_fail("free of an allocation in the flipping tag", rc);
    } else if (rc == MEMSLEEP_ESTATE) {
      atomic_fetch_add(&g_flip_estate, 1);
    } else {
      thread_fail("alloc into the flipping tag: neither success nor ESTATE", rc);
    }
  }
  return NULL;
}

typedef struct flipper {
  void *p;  /* a BACKUP allocation of the tag */
  size_t n; /* its size */
} flipper_t;

static void *flipper_main(void *arg) {
  flipper_t *f = arg;
  const char *tag = "th-flip";
  for (int c = 0; c < FLIP_CYCLES && atomic_load(&g_failures) == 0; c++) {
    int rc = memsleep_release(&tag, 1);
    if (rc != 0) {
      thread_fail("flipper release", rc);
      break;
    }
    rc = memsleep_resume(&tag, 1);
    if (rc != 0) {
      thread_fail("flipper resume", rc);
      break;
    }
    if (test_check_random(f->p, f->n, 99) != SIZE_MAX)
      thread_fail("flipper BACKUP contents differ after resume", 0);
  }
  atomic_store(&g_flip_done, 1);
  return NULL;
}

/* Reads the stats and measures residency while the tag flips: both always
 * answer, and never report more resident than reserved bytes. */
static void *flip_watch_main(void *arg) {
  (void)arg;
  while (!atomic_load(&g_flip_done) && atomic_load(&g_failures) == 0) {
    memsleep_stats_t s, m;
    int rc = memsleep_stats(NULL, &s);
    if (rc != 0)
      thread_fail("stats while the tag flips", rc);
    rc = memsleep_measure("th-flip", &m);
    if (rc != 0)
      thread_fail("measure while the tag flips", rc);
    if (s.resident_bytes > s.reserved_bytes || m.resident_bytes > m.reserved_bytes)
      thread_fail("more resident than reserved", 0);
  }
  return NULL;
}

static void test_alloc_into_tag_being_released_succeeds_or_is_estate(void **state) {
  (void)state;
  reset_failures();
  atomic_store(&g_flip_ok, 0);
  atomic_store(&g_flip_estate, 0);
  atomic_store(&g_flip_done, 0);
  flipper_t f = {NULL, 200003};
  f.p = test_alloc(f.n, "th-flip", MEMSLEEP_BACKUP);
  test_fill_random(f.p, f.n, 99);

  pthread_t tid[FLIP_THREADS + 2];
  for (uintptr_t i = 0; i < FLIP_THREADS; i++)
    assert_int_equal(pthread_create(&tid[i], NULL, flip_alloc_main, (void *)i), 0);
  assert_int_equal(pthread_create(&tid[FLIP_THREADS], NULL, flipper_main, &f), 0);
  assert_int_equal(pthread_create(&tid[FLIP_THREADS + 1], NULL, flip_watch_main, NULL), 0);
  for (int i = 0; i < FLIP_THREADS + 2; i++)
    assert_int_equal(pthread_join(tid[i], NULL), 0);

  if (memsleep_is_asleep("th-flip") == 1)
    test_resume1("th-flip");
  assert_ok(memsleep_free(f.p));
  assert_no_thread_failed();
  print_message("allocations into the flipping tag: %d succeeded, %d ESTATE\n",
                atomic_load(&g_flip_ok), atomic_load(&g_flip_estate));
  assert_int_equal(atomic_load(&g_flip_ok) + atomic_load(&g_flip_estate),
                   FLIP_THREADS * FLIP_ALLOCS);
  assert_int_equal(memsleep_is_asleep("th-flip"), 0);
  assert_stats_zero();
}

/* Many threads freeing allocations of one tag while it is released and
 * resumed: every free succeeds exactly once and nothing leaks. */
typedef struct free_job {
  void **p;
  size_t n;
} free_job_t;

static void *free_main(void *arg) {
  free_job_t *j = arg;
  for (size_t i = 0; i < j->n; i++) {
    int rc = memsleep_free(j->p[i]);
    if (rc != 0)
      thread_fail("free while the tag flips", rc);
  }
  return NULL;
}

static void test_free_while_tag_is_released_and_resumed(void **state) {
  (void)state;
  reset_failures();
  enum { PER = 150 };
  static void *p[FLIP_THREADS][PER];
  for (int t = 0; t < FLIP_THREADS; t++)
    for (int i = 0; i < PER; i++) {
      p[t][i] = test_alloc(4096, "th-free-flip", i % 2 ? MEMSLEEP_BACKUP : MEMSLEEP_ZERO);
      memset(p[t][i], 0x6b, 4096);
    }
  free_job_t jobs[FLIP_THREADS];
  pthread_t tid[FLIP_THREADS];
  for (int t = 0; t < FLIP_THREADS; t++) {
    jobs[t].p = p[t];
    jobs[t].n = PER;
    assert_int_equal(pthread_create(&tid[t], NULL, free_main, &jobs[t]), 0);
  }
  const char *tag = "th-free-flip";
  for (int c = 0; c < 30; c++) {
    int rc = memsleep_release(&tag, 1);
    if (rc != 0)
      thread_fail("release while frees run", rc);
    rc = memsleep_resume(&tag, 1);
    if (rc != 0)
      thread_fail("resume while frees run", rc);
  }
  for (int t = 0; t < FLIP_THREADS; t++)
    assert_int_equal(pthread_join(tid[t], NULL), 0);
  assert_no_thread_failed();
  assert_int_equal(memsleep_is_asleep(tag), 0);
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_threads_allocate_while_other_tags_sleep_and_wake),
      cmocka_unit_test(test_alloc_into_tag_being_released_succeeds_or_is_estate),
      cmocka_unit_test(test_free_while_tag_is_released_and_resumed),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
