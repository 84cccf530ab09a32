/*
 * test_rollback.c - release and resume are all-or-nothing.
 *
 * With the fault injector (core/fault.h) every backend operation of a
 * release and of a resume is made to fail in turn, over two tags holding
 * BACKUP, ZERO and plain allocations. Proves that each failing call returns
 * MEMSLEEP_EBACKEND naming the injected fault, leaves both tags in exactly
 * the state they had, loses no backup, keeps the stats as they were, and
 * that the same call then succeeds when retried. With sticky faults (every
 * operation from the k-th on fails, rollback included) it proves the
 * library reports the error without crashing and that, once the faults
 * stop, a resume brings everything back with BACKUP contents intact,
 * without harming memory it does not own, and nothing leaks. Also that an
 * allocation whose backend calls fail leaves no tag and no memory behind.
 * Registered twice: moving pages (default) and copying them.
 */
#include "core/fault.h"
#include "helpers.h"

#define NALLOCS 12 /* 4 BACKUP, 4 ZERO, 4 plain, spread over two tags */

static const char *const set_tags[2] = {"rb-x", "rb-y"};

/* The allocations under test and what they should hold. */
typedef struct set {
  void *p[NALLOCS];
  size_t n[NALLOCS];
  unsigned flags[NALLOCS];
  const char *tag[NALLOCS];
} set_t;

static set_t g_set;

static const size_t set_sizes[] = {1, 4097, 65537, 4096, 12293, 100000};

static uint64_t seed_of(size_t i) {
  return 0x5eed0000u + i;
}

static void set_create(set_t *s) {
  static const unsigned kinds[3] = {MEMSLEEP_BACKUP, MEMSLEEP_ZERO, 0};
  for (size_t i = 0; i < NALLOCS; i++) {
    s->n[i] = set_sizes[i % 6];
    s->flags[i] = kinds[i % 3];
    s->tag[i] = set_tags[i % 2];
    s->p[i] = test_alloc(s->n[i], s->tag[i], s->flags[i]);
    if (s->flags[i] & MEMSLEEP_BACKUP)
      test_fill_random(s->p[i], s->n[i], seed_of(i));
  }
}

/* Writes non-zero bytes into the allocations without backup, so a later
 * check for zeros means something. The set must be awake. */
static void set_scribble(const set_t *s) {
  for (size_t i = 0; i < NALLOCS; i++)
    if (!(s->flags[i] & MEMSLEEP_BACKUP))
      memset(s->p[i], 0xa5, s->n[i]);
}

static void set_check_backups(const set_t *s) {
  for (size_t i = 0; i < NALLOCS; i++)
    if (s->flags[i] & MEMSLEEP_BACKUP) {
      size_t bad = test_check_random(s->p[i], s->n[i], seed_of(i));
      if (bad != SIZE_MAX)
        fail_msg("BACKUP allocation #%zu (%zu bytes, tag %s): byte %zu differs", i, s->n[i],
                 s->tag[i], bad);
    }
}

static void set_check_zeros(const set_t *s) {
  for (size_t i = 0; i < NALLOCS; i++)
    if (s->flags[i] & MEMSLEEP_ZERO) {
      size_t bad = test_find_not(s->p[i], s->n[i], 0);
      if (bad != SIZE_MAX)
        fail_msg("ZERO allocation #%zu (%zu bytes): byte %zu is not zero", i, s->n[i], bad);
    }
}

static void set_free(set_t *s) {
  for (size_t i = 0; i < NALLOCS; i++)
    assert_ok(memsleep_free(s->p[i]));
  memset(s, 0, sizeof *s);
}

static void assert_tags_asleep(int want) {
  for (size_t t = 0; t < 2; t++)
    if (memsleep_is_asleep(set_tags[t]) != want)
      fail_msg("tag %s: is_asleep %d, want %d", set_tags[t], memsleep_is_asleep(set_tags[t]), want);
}

/* The stats of both tags and of all. */
typedef struct figures {
  memsleep_stats_t tag[2];
  memsleep_stats_t all;
} figures_t;

static figures_t figures_now(void) {
  figures_t f;
  f.tag[0] = test_stats(set_tags[0]);
  f.tag[1] = test_stats(set_tags[1]);
  f.all = test_stats(NULL);
  return f;
}

static void assert_figures_equal(figures_t a, figures_t b) {
  assert_stats_equal(a.tag[0], b.tag[0]);
  assert_stats_equal(a.tag[1], b.tag[1]);
  assert_stats_equal(a.all, b.all);
}

/* What the bookkeeping says is resident is what really is (the backend
 * measures it), for both tags. */
static void assert_stats_match_reality(void) {
  for (size_t t = 0; t < 2; t++) {
    memsleep_stats_t measured;
    assert_ok(memsleep_measure(set_tags[t], &measured));
    memsleep_stats_t booked = test_stats(set_tags[t]);
    if (measured.resident_bytes != booked.resident_bytes)
      fail_msg("tag %s: stats say %zu bytes resident, measured %zu", set_tags[t],
               booked.resident_bytes, measured.resident_bytes);
  }
}

/* The call that was made to fail says so. */
static void assert_injected_failure(int rc, long k) {
  if (rc != MEMSLEEP_EBACKEND)
    fail_msg("fault at operation %ld: call returned %d (%s), want MEMSLEEP_EBACKEND; %s", k, rc,
             memsleep_strerror(rc), memsleep_last_error());
  assert_error_mentions("injected");
}

static int set_setup(void **state) {
  (void)state;
  ms__fault_arm(0, 0);
  set_create(&g_set);
  return 0;
}

static int set_teardown(void **state) {
  (void)state;
  ms__fault_arm(0, 0);
  set_free(&g_set);
  assert_stats_zero();
  return 0;
}

/* Counts the backend operations of a successful release, and of release
 * plus resume, of the set. */
static void count_ops(long *nrelease, long *ntotal) {
  set_scribble(&g_set);
  ms__fault_arm(0, 0); /* resets the count */
  assert_ok(memsleep_release(set_tags, 2));
  *nrelease = ms__fault_count();
  assert_ok(memsleep_resume(set_tags, 2));
  *ntotal = ms__fault_count();
  assert_true(*nrelease >= NALLOCS); /* at least one operation per allocation */
  assert_true(*ntotal > *nrelease);
  set_check_backups(&g_set);
  set_check_zeros(&g_set);
}

/* Operation k of release-then-resume fails once: the failing call is
 * undone, and retrying it succeeds. */
static void test_single_fault_at_every_step_rolls_back(void **state) {
  (void)state;
  long nrelease = 0, ntotal = 0;
  count_ops(&nrelease, &ntotal);
  print_message("release: %ld backend operations, release + resume: %ld\n", nrelease, ntotal);

  for (long k = 1; k <= ntotal; k++) {
    set_scribble(&g_set);
    figures_t awake = figures_now();
    ms__fault_arm(k, 0);
    int rc = memsleep_release(set_tags, 2);
    if (rc != 0) {
      /* The release failed: both tags awake, contents in place, stats as
       * before, and the release can be retried. */
      assert_injected_failure(rc, k);
      assert_true(k <= nrelease);
      ms__fault_arm(0, 0);
      assert_tags_asleep(0);
      assert_figures_equal(figures_now(), awake);
      assert_stats_match_reality();
      set_check_backups(&g_set);
      assert_ok(memsleep_release(set_tags, 2));
    } else {
      /* The fault lies in the resume that follows. */
      assert_true(k > nrelease);
      assert_tags_asleep(1);
      figures_t asleep = figures_now();
      rc = memsleep_resume(set_tags, 2);
      assert_injected_failure(rc, k);
      ms__fault_arm(0, 0);
      assert_tags_asleep(1);
      assert_figures_equal(figures_now(), asleep);
      assert_stats_match_reality();
    }
    assert_tags_asleep(1);
    assert_ok(memsleep_resume(set_tags, 2));
    assert_tags_asleep(0);
    assert_figures_equal(figures_now(), awake);
    set_check_backups(&g_set);
    set_check_zeros(&g_set);
  }
}

/* The same for resume on its own: the tags are asleep, operation k of the
 * resume fails; they stay asleep with their backups, then resume. */
static void test_single_fault_in_resume_keeps_tags_asleep(void **state) {
  (void)state;
  set_scribble(&g_set);
  figures_t awake = figures_now();
  ms__fault_arm(0, 0);
  assert_ok(memsleep_release(set_tags, 2));
  figures_t asleep = figures_now();
  ms__fault_arm(0, 0);
  assert_ok(memsleep_resume(set_tags, 2));
  long nresume = ms__fault_count();
  assert_true(nresume >= NALLOCS);

  for (long k = 1; k <= nresume; k++) {
    set_scribble(&g_set);
    assert_ok(memsleep_release(set_tags, 2));
    assert_figures_equal(figures_now(), asleep);
    ms__fault_arm(k, 0);
    int rc = memsleep_resume(set_tags, 2);
    assert_injected_failure(rc, k);
    ms__fault_arm(0, 0);
    assert_tags_asleep(1);
    assert_figures_equal(figures_now(), asleep);
    assert_stats_match_reality();
    /* A second failure, at the first operation of the retry, changes
     * nothing either. */
    ms__fault_arm(1, 0);
    assert_injected_failure(memsleep_resume(set_tags, 2), 1);
    ms__fault_arm(0, 0);
    assert_tags_asleep(1);
    assert_figures_equal(figures_now(), asleep);

    assert_ok(memsleep_resume(set_tags, 2));
    assert_tags_asleep(0);
    assert_figures_equal(figures_now(), awake);
    set_check_backups(&g_set);
    set_check_zeros(&g_set);
  }
}

/* Memory the library does not own, allocated while a failed call has left
 * things half done; it must come out of the recovery untouched. */
typedef struct bystanders {
  void *p[NALLOCS];
  size_t n[NALLOCS];
} bystanders_t;

static void bystanders_create(bystanders_t *b, long k) {
  for (size_t i = 0; i < NALLOCS; i++) {
    b->n[i] = g_set.n[i]; /* the sizes of the holes a stray unmap would leave */
    b->p[i] = test_alloc(b->n[i], "rb-bystander", 0);
    test_fill_random(b->p[i], b->n[i], (uint64_t)k * 1000 + i);
  }
}

typedef struct probe_arg {
  const bystanders_t *b;
  long k;
} probe_arg_t;

static int child_check_bystanders(void *arg) {
  const probe_arg_t *a = arg;
  for (size_t i = 0; i < NALLOCS; i++)
    if (test_check_random(a->b->p[i], a->b->n[i], (uint64_t)a->k * 1000 + i) != SIZE_MAX)
      return 10 + (int)i;
  return 0;
}

/* Index of the first bystander that cannot be read or was changed, or -1
 * if all are intact (found out in a child: a stray munmap makes it fault). */
static int bystanders_first_damaged(const bystanders_t *b, long k) {
  probe_arg_t a = {b, k};
  int status = test_in_child(child_check_bystanders, &a);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
    return -1;
  /* Find which one, each in its own child. */
  for (size_t i = 0; i < NALLOCS; i++)
    if (test_probe_random(b->p[i], b->n[i], (uint64_t)k * 1000 + i) != 1)
      return (int)i;
  return NALLOCS;
}

/* Every operation from the k-th on fails, the rollback's own included. The
 * library reports the failure; after the faults stop, resuming the tags
 * that are asleep brings everything back, and memory allocated in between
 * is not touched. */
static void test_sticky_faults_then_recovery_restores_everything(void **state) {
  (void)state;
  long nrelease = 0, ntotal = 0;
  count_ops(&nrelease, &ntotal);

  long damaged_k = 0;
  int damaged_i = -1;
  for (long k = 1; k <= ntotal && damaged_k == 0; k++) {
    set_scribble(&g_set);
    figures_t awake = figures_now();
    ms__fault_arm(k, 1);
    int rc = memsleep_release(set_tags, 2);
    int released = rc == 0;
    if (released)
      rc = memsleep_resume(set_tags, 2);
    ms__fault_arm(0, 0);
    assert_injected_failure(rc, k);
    for (size_t t = 0; t < 2; t++) {
      int a = memsleep_is_asleep(set_tags[t]);
      assert_true(a == 0 || a == 1);
    }
    figures_t after = figures_now();
    assert_int_equal(after.tag[0].allocations, awake.tag[0].allocations);
    assert_int_equal(after.tag[1].allocations, awake.tag[1].allocations);
    assert_int_equal(after.tag[0].reserved_bytes, awake.tag[0].reserved_bytes);
    assert_int_equal(after.tag[1].reserved_bytes, awake.tag[1].reserved_bytes);
    assert_stats_match_reality();

    bystanders_t by;
    bystanders_create(&by, k);

    /* Recovery: resume whatever is asleep. */
    for (size_t t = 0; t < 2; t++)
      if (memsleep_is_asleep(set_tags[t]) == 1)
        assert_ok(test_resume1(set_tags[t]));
    assert_tags_asleep(0);
    memsleep_stats_t x = test_stats(set_tags[0]), y = test_stats(set_tags[1]);
    assert_stats_equal(x, awake.tag[0]);
    assert_stats_equal(y, awake.tag[1]);
    set_check_backups(&g_set);
    if (released)
      set_check_zeros(&g_set); /* they had been released for real */

    damaged_i = bystanders_first_damaged(&by, k);
    if (damaged_i >= 0)
      damaged_k = k;
    for (size_t i = 0; i < NALLOCS; i++)
      assert_ok(memsleep_free(by.p[i]));
    if (damaged_k != 0)
      break;

    /* And a whole cycle works again. */
    assert_ok(memsleep_release(set_tags, 2));
    assert_ok(memsleep_resume(set_tags, 2));
    set_check_backups(&g_set);
    set_check_zeros(&g_set);
  }
  if (damaged_k != 0)
    fail_msg("sticky fault at operation %ld (release has %ld, release + resume %ld): after "
             "recovery, allocation #%d (%zu bytes) of tag rb-bystander, made between the failed "
             "call and the recovering resume, can no longer be read or lost its contents: the "
             "recovery unmapped memory the library does not own",
             damaged_k, nrelease, ntotal, damaged_i,
             damaged_i < NALLOCS ? g_set.n[damaged_i] : (size_t)0);
}

/* An allocation whose reserve or map fails returns EBACKEND, leaves no tag
 * behind if the tag was new, and no memory. */
static void test_failed_alloc_leaves_no_tag_and_no_memory(void **state) {
  (void)state;
  int failures = 0;
  for (long k = 1;; k++) {
    char tag[48];
    snprintf(tag, sizeof tag, "rb-alloc-new-%ld", k);
    void *p = NULL;
    ms__fault_arm(k, 0);
    int rc = memsleep_alloc(&p, 65537, MEMSLEEP_HOST, tag, MEMSLEEP_BACKUP);
    ms__fault_arm(0, 0);
    if (rc == 0) {
      assert_ok(memsleep_free(p));
      break;
    }
    failures++;
    assert_injected_failure(rc, k);
    assert_null(p);
    assert_int_equal(memsleep_is_asleep(tag), MEMSLEEP_ENOTFOUND);
    assert_stats_zero();
    assert_true(k < 100);
  }
  assert_true(failures >= 2); /* reserve, then map */

  /* Into an existing tag: the tag and its allocations stay as they were. */
  void *keep = test_alloc(4097, "rb-alloc-old", MEMSLEEP_BACKUP);
  test_fill_random(keep, 4097, 77);
  memsleep_stats_t before = test_stats("rb-alloc-old");
  for (long k = 1; k <= failures; k++) {
    void *p = NULL;
    ms__fault_arm(k, 0);
    int rc = memsleep_alloc(&p, 65537, MEMSLEEP_HOST, "rb-alloc-old", 0);
    ms__fault_arm(0, 0);
    assert_injected_failure(rc, k);
    assert_int_equal(memsleep_is_asleep("rb-alloc-old"), 0);
    assert_stats_equal(test_stats("rb-alloc-old"), before);
  }
  assert_ok(test_release1("rb-alloc-old"));
  assert_ok(test_resume1("rb-alloc-old"));
  assert_random(keep, 4097, 77);
  assert_ok(memsleep_free(keep));
  assert_stats_zero();
}

/* Two BACKUP allocations asleep in "rb-moved"; a resume with every
 * operation from the second on failing, then the faults stop; then memory
 * the library does not own is allocated, in the sizes of the holes a failed
 * resume may leave. What finish() does next must not touch that memory. */
#define MOVED_BYTES      ((size_t)64 << 10)
#define MOVED_BYSTANDERS 8

typedef struct moved {
  void *a[2];                 /* the BACKUP allocations, seeds 0 and 1 */
  void *by[MOVED_BYSTANDERS]; /* bystanders, seeds 100 + i */
} moved_t;

static void moved_fail_resume(moved_t *m) {
  for (int i = 0; i < 2; i++) {
    m->a[i] = test_alloc(MOVED_BYTES, "rb-moved", MEMSLEEP_BACKUP);
    test_fill_random(m->a[i], MOVED_BYTES, (uint64_t)i);
  }
  assert_ok(test_release1("rb-moved"));
  ms__fault_arm(2, 1); /* the first allocation comes back, the rest fails */
  int rc = test_resume1("rb-moved");
  ms__fault_arm(0, 0);
  assert_injected_failure(rc, 2);
  assert_int_equal(memsleep_is_asleep("rb-moved"), 1);
  for (int i = 0; i < MOVED_BYSTANDERS; i++) {
    m->by[i] = test_alloc(MOVED_BYTES, "rb-moved-by", 0);
    test_fill_random(m->by[i], MOVED_BYTES, 100 + (uint64_t)i);
  }
}

/* Frees the bystanders and says which was damaged (-1: none). */
static int moved_bystanders_damaged(moved_t *m) {
  int damaged = -1;
  for (int i = 0; i < MOVED_BYSTANDERS; i++)
    if (damaged < 0 && test_probe_random(m->by[i], MOVED_BYTES, 100 + (uint64_t)i) != 1)
      damaged = i;
  for (int i = 0; i < MOVED_BYSTANDERS; i++)
    assert_ok(memsleep_free(m->by[i]));
  return damaged;
}

/* After a failed resume whose rollback could not take back an allocation it
 * had already brought back, the next (successful) resume must not free a
 * backup that no longer exists: memory allocated in between stays mapped. */
static void test_resume_after_failed_rollback_leaves_other_memory_alone(void **state) {
  (void)state;
  moved_t m;
  moved_fail_resume(&m);
  assert_ok(test_resume1("rb-moved"));
  assert_int_equal(memsleep_is_asleep("rb-moved"), 0);
  assert_random(m.a[0], MOVED_BYTES, 0);
  assert_random(m.a[1], MOVED_BYTES, 1);
  int damaged = moved_bystanders_damaged(&m);
  assert_ok(memsleep_free(m.a[0]));
  assert_ok(memsleep_free(m.a[1]));
  assert_stats_zero();
  if (damaged >= 0)
    fail_msg("bystander allocation #%d (%zu bytes), made after the failed resume, was unmapped "
             "or changed by the resume that followed",
             damaged, MOVED_BYTES);
}

/* The same, when the allocations are freed (asleep) instead of resumed. */
static void test_free_after_failed_rollback_leaves_other_memory_alone(void **state) {
  (void)state;
  moved_t m;
  moved_fail_resume(&m);
  assert_ok(memsleep_free(m.a[0]));
  assert_ok(memsleep_free(m.a[1]));
  int damaged = moved_bystanders_damaged(&m);
  assert_ok(test_resume1("rb-moved"));
  assert_stats_zero();
  if (damaged >= 0)
    fail_msg("bystander allocation #%d (%zu bytes), made after the failed resume, was unmapped "
             "or changed by freeing the allocations of the asleep tag",
             damaged, MOVED_BYTES);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_single_fault_at_every_step_rolls_back, set_setup,
                                      set_teardown),
      cmocka_unit_test_setup_teardown(test_single_fault_in_resume_keeps_tags_asleep, set_setup,
                                      set_teardown),
      cmocka_unit_test(test_failed_alloc_leaves_no_tag_and_no_memory),
      cmocka_unit_test_setup_teardown(test_sticky_faults_then_recovery_restores_everything,
                                      set_setup, set_teardown),
      cmocka_unit_test(test_resume_after_failed_rollback_leaves_other_memory_alone),
      cmocka_unit_test(test_free_after_failed_rollback_leaves_other_memory_alone),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
