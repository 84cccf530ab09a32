/*
 * test_bad_input.c - every public function refuses bad input cleanly.
 *
 * Proves that each bad argument gets its documented code (EINVAL,
 * ENOTFOUND, ESTATE, EUNAVAIL), that the call leaves a non-empty message of
 * its own in memsleep_last_error(), and that it changes nothing: the stats
 * of every tag, every tag's asleep state, the list of tags and the caller's
 * out-arguments are as they were. Also that a failed alloc under a new tag
 * name does not bring the tag into being, and that memsleep_strerror() has
 * distinct text for every code.
 */
#include <limits.h>
#include <pthread.h>

#include "helpers.h"

#define SNAP_TAGS 64

/* Everything a caller can observe about the library's state. */
typedef struct snap {
  memsleep_stats_t all;                        /* stats(NULL) */
  int ntags;                                   /* memsleep_tags() */
  char names[SNAP_TAGS][MEMSLEEP_TAG_MAX + 1]; /* the tags, in order */
  int asleep[SNAP_TAGS];                       /* is_asleep of each */
  memsleep_stats_t per[SNAP_TAGS];             /* stats of each */
} snap_t;

static void snap_take(snap_t *s) {
  memset(s, 0, sizeof *s);
  s->all = test_stats(NULL);
  s->ntags = memsleep_tags(s->names, SNAP_TAGS);
  assert_true(s->ntags >= 0 && s->ntags <= SNAP_TAGS);
  for (int i = 0; i < s->ntags; i++) {
    s->asleep[i] = memsleep_is_asleep(s->names[i]);
    s->per[i] = test_stats(s->names[i]);
  }
}

static void snap_assert_same(const snap_t *a, const snap_t *b) {
  assert_stats_equal(a->all, b->all);
  assert_int_equal(a->ntags, b->ntags);
  for (int i = 0; i < a->ntags; i++) {
    assert_string_equal(a->names[i], b->names[i]);
    assert_int_equal(a->asleep[i], b->asleep[i]);
    assert_stats_equal(a->per[i], b->per[i]);
  }
}

/* Runs call, which must fail with code, set its own last error and change
 * nothing a caller can see. */
#define EXPECT_REFUSED(call, code)                                                                 \
  do {                                                                                             \
    snap_t before_, after_;                                                                        \
    snap_take(&before_);                                                                           \
    test_set_error_marker();                                                                       \
    int rc_ = (call);                                                                              \
    if (rc_ != (code))                                                                             \
      fail_msg("%s returned %d, want %d (%s); last error: %s", #call, rc_, (code),                 \
               memsleep_strerror(code), memsleep_last_error());                                    \
    assert_error_set();                                                                            \
    snap_take(&after_);                                                                            \
    snap_assert_same(&before_, &after_);                                                           \
  } while (0)

/* Allocation that must be refused with code; *ptr must stay untouched. */
static void expect_alloc_refused(size_t size, int device, const char *tag, unsigned flags,
                                 int code) {
  void *sentinel = (void *)(uintptr_t)0x1234;
  void *p = sentinel;
  EXPECT_REFUSED(memsleep_alloc(&p, size, device, tag, flags), code);
  assert_ptr_equal(p, sentinel);
}

static char tag64[65]; /* one character too long */
static char tag63[64]; /* just long enough */

static const char *const bad_tags[] = {"",      "a b",       "a/b", "\xc3\xbcn\xc3\xaf" /* "ünï" */,
                                       "tab\t", "new\nline", tag64, "quote\"",
                                       "star*"};
#define NBAD (sizeof bad_tags / sizeof bad_tags[0])

static int setup_names(void **state) {
  (void)state;
  memset(tag64, 'x', 64);
  tag64[64] = '\0';
  memset(tag63, 'y', 63);
  tag63[63] = '\0';
  return 0;
}

static void test_alloc_null_ptr_is_einval(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_alloc(NULL, 4096, MEMSLEEP_HOST, "bi-nullptr", 0), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_is_asleep("bi-nullptr"), MEMSLEEP_ENOTFOUND);
  assert_stats_zero();
}

static void test_alloc_zero_size_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(0, MEMSLEEP_HOST, "bi-size0", 0, MEMSLEEP_EINVAL);
  expect_alloc_refused(0, MEMSLEEP_HOST, "bi-size0", MEMSLEEP_BACKUP, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_alloc_absurd_size_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(SIZE_MAX, MEMSLEEP_HOST, "bi-huge", 0, MEMSLEEP_EINVAL);
  expect_alloc_refused(SIZE_MAX - 4095, MEMSLEEP_HOST, "bi-huge", 0, MEMSLEEP_EINVAL);
  expect_alloc_refused((size_t)1 << 60, MEMSLEEP_HOST, "bi-huge", 0, MEMSLEEP_EINVAL);
  expect_alloc_refused((size_t)1 << 60, MEMSLEEP_HOST, "bi-huge", MEMSLEEP_BACKUP, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

/* Valid, but more than the machine could ever map (64 TiB): no room. */
static void test_alloc_larger_than_memory_is_enomem(void **state) {
  (void)state;
  expect_alloc_refused((size_t)1 << 46, MEMSLEEP_HOST, "bi-toobig", 0, MEMSLEEP_ENOMEM);
  expect_alloc_refused((size_t)1 << 46, MEMSLEEP_HOST, "bi-toobig", MEMSLEEP_BACKUP,
                       MEMSLEEP_ENOMEM);
  assert_int_equal(memsleep_is_asleep("bi-toobig"), MEMSLEEP_ENOTFOUND);
  assert_stats_zero();
}

static void test_alloc_unknown_flags_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-flags", 0x4u, MEMSLEEP_EINVAL);
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-flags", 0x5u, MEMSLEEP_EINVAL);
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-flags", 0x80000000u, MEMSLEEP_EINVAL);
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-flags", ~0u, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_alloc_backup_and_zero_together_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-bz", MEMSLEEP_BACKUP | MEMSLEEP_ZERO,
                       MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_alloc_bad_tag_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(4096, MEMSLEEP_HOST, NULL, 0, MEMSLEEP_EINVAL);
  for (size_t i = 0; i < NBAD; i++)
    expect_alloc_refused(4096, MEMSLEEP_HOST, bad_tags[i], 0, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_alloc_negative_device_is_einval(void **state) {
  (void)state;
  expect_alloc_refused(4096, -2, "bi-dev", 0, MEMSLEEP_EINVAL);
  expect_alloc_refused(4096, INT_MIN, "bi-dev", 0, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

/* Without a CUDA driver (main() points MEMSLEEP_LIBCUDA at nothing) every
 * CUDA ordinal is unavailable; an ordinal no machine has is a bad argument. */
static void test_alloc_cuda_device_is_eunavail(void **state) {
  (void)state;
  expect_alloc_refused(4096, 0, "bi-cuda", 0, MEMSLEEP_EUNAVAIL);
  expect_alloc_refused(4096, 1, "bi-cuda", MEMSLEEP_BACKUP, MEMSLEEP_EUNAVAIL);
  expect_alloc_refused(4096, INT_MAX, "bi-cuda", 0, MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_alloc_63_char_tag_is_ok(void **state) {
  (void)state;
  void *p = test_alloc(4096, tag63, MEMSLEEP_BACKUP);
  assert_int_equal(memsleep_is_asleep(tag63), 0);
  char names[SNAP_TAGS][MEMSLEEP_TAG_MAX + 1];
  int n = memsleep_tags(names, SNAP_TAGS);
  int found = 0;
  for (int i = 0; i < n && i < SNAP_TAGS; i++)
    found |= strcmp(names[i], tag63) == 0;
  assert_true(found);
  assert_ok(test_release1(tag63));
  assert_ok(test_resume1(tag63));
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

/* A tag comes into being only with a successful allocation. */
static void test_failed_alloc_creates_no_tag(void **state) {
  (void)state;
  expect_alloc_refused(0, MEMSLEEP_HOST, "bi-new-1", 0, MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_is_asleep("bi-new-1"), MEMSLEEP_ENOTFOUND);
  expect_alloc_refused(4096, MEMSLEEP_HOST, "bi-new-2", 0x4u, MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_is_asleep("bi-new-2"), MEMSLEEP_ENOTFOUND);
  expect_alloc_refused(4096, -2, "bi-new-3", 0, MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_is_asleep("bi-new-3"), MEMSLEEP_ENOTFOUND);
  expect_alloc_refused(4096, 0, "bi-new-4", 0, MEMSLEEP_EUNAVAIL);
  assert_int_equal(memsleep_is_asleep("bi-new-4"), MEMSLEEP_ENOTFOUND);
  expect_alloc_refused(SIZE_MAX, MEMSLEEP_HOST, "bi-new-5", 0, MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_is_asleep("bi-new-5"), MEMSLEEP_ENOTFOUND);
  memsleep_stats_t s;
  assert_int_equal(memsleep_stats("bi-new-1", &s), MEMSLEEP_ENOTFOUND);
  assert_stats_zero();
}

static void test_free_null_is_einval(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_free(NULL), MEMSLEEP_EINVAL);
  assert_stats_zero();
}

static void test_free_unknown_pointer_is_enotfound(void **state) {
  (void)state;
  int on_stack = 0;
  char *heap = malloc(64);
  assert_non_null(heap);
  unsigned char *p = test_alloc(3 * 4096, "bi-free", MEMSLEEP_BACKUP);
  test_fill_random(p, 3 * 4096, 5);
  EXPECT_REFUSED(memsleep_free(&on_stack), MEMSLEEP_ENOTFOUND);
  EXPECT_REFUSED(memsleep_free(heap), MEMSLEEP_ENOTFOUND);
  EXPECT_REFUSED(memsleep_free(p + 1), MEMSLEEP_ENOTFOUND);    /* inside an allocation */
  EXPECT_REFUSED(memsleep_free(p + 4096), MEMSLEEP_ENOTFOUND); /* a later page of it */
  assert_random(p, 3 * 4096, 5);                               /* still there, untouched */
  assert_ok(memsleep_free(p));
  free(heap);
  assert_stats_zero();
}

static void test_double_free_is_enotfound(void **state) {
  (void)state;
  void *p = test_alloc(4096, "bi-free", 0);
  void *q = test_alloc(4096, "bi-free", 0);
  assert_ok(memsleep_free(p));
  EXPECT_REFUSED(memsleep_free(p), MEMSLEEP_ENOTFOUND);
  assert_ok(memsleep_free(q));
  EXPECT_REFUSED(memsleep_free(q), MEMSLEEP_ENOTFOUND);
  assert_stats_zero();
}

/* A state to refuse against: "bi-awake" awake with contents, "bi-asleep"
 * asleep with a backup. */
typedef struct fixture {
  void *awake;  /* BACKUP, seed 41, in "bi-awake" */
  void *asleep; /* BACKUP, seed 42, in "bi-asleep" */
} fixture_t;

#define FIX_BYTES 65537

static int fixture_setup(void **state) {
  static fixture_t f;
  if (memsleep_alloc(&f.awake, FIX_BYTES, MEMSLEEP_HOST, "bi-awake", MEMSLEEP_BACKUP) != 0 ||
      memsleep_alloc(&f.asleep, FIX_BYTES, MEMSLEEP_HOST, "bi-asleep", MEMSLEEP_BACKUP) != 0)
    return -1;
  test_fill_random(f.awake, FIX_BYTES, 41);
  test_fill_random(f.asleep, FIX_BYTES, 42);
  if (test_release1("bi-asleep") != 0)
    return -1;
  *state = &f;
  return 0;
}

/* Checks the fixture is intact, then frees it; stats return to zero. */
static int fixture_teardown(void **state) {
  fixture_t *f = *state;
  assert_int_equal(memsleep_is_asleep("bi-awake"), 0);
  assert_int_equal(memsleep_is_asleep("bi-asleep"), 1);
  assert_random(f->awake, FIX_BYTES, 41);
  assert_ok(test_resume1("bi-asleep"));
  assert_random(f->asleep, FIX_BYTES, 42);
  assert_ok(memsleep_free(f->awake));
  assert_ok(memsleep_free(f->asleep));
  assert_stats_zero();
  return 0;
}

static void test_release_resume_null_tags_with_count_is_einval(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_release(NULL, 1), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_resume(NULL, 1), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_release(NULL, 3), MEMSLEEP_EINVAL);
}

static void test_release_resume_bad_tag_name_is_einval(void **state) {
  (void)state;
  const char *null_tag[] = {"bi-awake", NULL};
  EXPECT_REFUSED(memsleep_release(null_tag, 2), MEMSLEEP_EINVAL);
  const char *null_tag2[] = {"bi-asleep", NULL};
  EXPECT_REFUSED(memsleep_resume(null_tag2, 2), MEMSLEEP_EINVAL);
  for (size_t i = 0; i < NBAD; i++) {
    const char *rel[] = {"bi-awake", bad_tags[i]};
    EXPECT_REFUSED(memsleep_release(rel, 2), MEMSLEEP_EINVAL);
    const char *res[] = {bad_tags[i], "bi-asleep"};
    EXPECT_REFUSED(memsleep_resume(res, 2), MEMSLEEP_EINVAL);
  }
}

static void test_release_resume_tag_named_twice_is_einval(void **state) {
  (void)state;
  const char *rel[] = {"bi-awake", "bi-awake"};
  EXPECT_REFUSED(memsleep_release(rel, 2), MEMSLEEP_EINVAL);
  const char *res[] = {"bi-asleep", "bi-asleep"};
  EXPECT_REFUSED(memsleep_resume(res, 2), MEMSLEEP_EINVAL);
  /* Named twice among others, and not next to each other. */
  const char *rel3[] = {"bi-awake", "bi-asleep", "bi-awake"};
  EXPECT_REFUSED(memsleep_release(rel3, 3), MEMSLEEP_EINVAL);
}

static void test_release_resume_unknown_tag_is_enotfound(void **state) {
  (void)state;
  const char *rel[] = {"bi-awake", "bi-never-used"};
  EXPECT_REFUSED(memsleep_release(rel, 2), MEMSLEEP_ENOTFOUND);
  const char *res[] = {"bi-never-used", "bi-asleep"};
  EXPECT_REFUSED(memsleep_resume(res, 2), MEMSLEEP_ENOTFOUND);
  assert_int_equal(memsleep_is_asleep("bi-never-used"), MEMSLEEP_ENOTFOUND);
}

static void test_release_of_asleep_tag_is_estate(void **state) {
  (void)state;
  EXPECT_REFUSED(test_release1("bi-asleep"), MEMSLEEP_ESTATE);
}

static void test_resume_of_awake_tag_is_estate(void **state) {
  (void)state;
  EXPECT_REFUSED(test_resume1("bi-awake"), MEMSLEEP_ESTATE);
}

/* A list mixing an awake tag with an asleep one: neither changes, in either
 * order, for release and for resume. */
static void test_mixed_awake_and_asleep_list_changes_neither(void **state) {
  fixture_t *f = *state;
  const char *ab[] = {"bi-awake", "bi-asleep"};
  const char *ba[] = {"bi-asleep", "bi-awake"};
  EXPECT_REFUSED(memsleep_release(ab, 2), MEMSLEEP_ESTATE);
  EXPECT_REFUSED(memsleep_release(ba, 2), MEMSLEEP_ESTATE);
  EXPECT_REFUSED(memsleep_resume(ab, 2), MEMSLEEP_ESTATE);
  EXPECT_REFUSED(memsleep_resume(ba, 2), MEMSLEEP_ESTATE);
  assert_random(f->awake, FIX_BYTES, 41); /* the awake tag's memory is still there */
}

static void test_is_asleep_unknown_tag_is_enotfound(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_is_asleep("bi-never-used"), MEMSLEEP_ENOTFOUND);
  EXPECT_REFUSED(memsleep_is_asleep(NULL), MEMSLEEP_EINVAL);
  for (size_t i = 0; i < NBAD; i++)
    EXPECT_REFUSED(memsleep_is_asleep(bad_tags[i]), MEMSLEEP_EINVAL);
}

static void test_stats_bad_input(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_stats(NULL, NULL), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_stats("bi-awake", NULL), MEMSLEEP_EINVAL);
  memsleep_stats_t s, sentinel;
  memset(&sentinel, 0x5c, sizeof sentinel);
  s = sentinel;
  EXPECT_REFUSED(memsleep_stats("bi-never-used", &s), MEMSLEEP_ENOTFOUND);
  assert_memory_equal(&s, &sentinel, sizeof s);
  for (size_t i = 0; i < NBAD; i++) {
    EXPECT_REFUSED(memsleep_stats(bad_tags[i], &s), MEMSLEEP_EINVAL);
    assert_memory_equal(&s, &sentinel, sizeof s);
  }
}

static void test_measure_bad_input(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_measure(NULL, NULL), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_measure("bi-awake", NULL), MEMSLEEP_EINVAL);
  memsleep_stats_t s, sentinel;
  memset(&sentinel, 0x5c, sizeof sentinel);
  s = sentinel;
  EXPECT_REFUSED(memsleep_measure("bi-never-used", &s), MEMSLEEP_ENOTFOUND);
  assert_memory_equal(&s, &sentinel, sizeof s);
  for (size_t i = 0; i < NBAD; i++) {
    EXPECT_REFUSED(memsleep_measure(bad_tags[i], &s), MEMSLEEP_EINVAL);
    assert_memory_equal(&s, &sentinel, sizeof s);
  }
}

static void test_tags_null_names_is_einval(void **state) {
  (void)state;
  EXPECT_REFUSED(memsleep_tags(NULL, 1), MEMSLEEP_EINVAL);
  /* Asking only for the count is fine. */
  assert_true(memsleep_tags(NULL, 0) >= 2);
}

static void test_region_bad_input_is_refused(void **state) {
  (void)state;
  char tag[MEMSLEEP_TAG_MAX + 1];
  EXPECT_REFUSED(memsleep_region_push(NULL, 0), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_region_push("bi-region", 0x4u), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_region_push("bi-region", MEMSLEEP_BACKUP | MEMSLEEP_ZERO),
                 MEMSLEEP_EINVAL);
  for (size_t i = 0; i < NBAD; i++)
    EXPECT_REFUSED(memsleep_region_push(bad_tags[i], 0), MEMSLEEP_EINVAL);
  EXPECT_REFUSED(memsleep_region_pop(), MEMSLEEP_ESTATE);
  EXPECT_REFUSED(memsleep_region_current(NULL, NULL), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_region_current(tag, NULL), 0); /* no region was opened */
  assert_string_equal(tag, "");
  assert_stats_zero();
}

static void test_strerror_gives_distinct_text_for_each_code(void **state) {
  (void)state;
  const int codes[] = {MEMSLEEP_OK,        MEMSLEEP_EINVAL,   MEMSLEEP_ENOMEM,  MEMSLEEP_ESTATE,
                       MEMSLEEP_ENOTFOUND, MEMSLEEP_EBACKEND, MEMSLEEP_EUNAVAIL};
  const size_t n = sizeof codes / sizeof codes[0];
  for (size_t i = 0; i < n; i++) {
    const char *a = memsleep_strerror(codes[i]);
    assert_non_null(a);
    assert_true(strlen(a) > 0);
    for (size_t j = 0; j < i; j++)
      assert_string_not_equal(a, memsleep_strerror(codes[j]));
  }
  const int unknown[] = {1, -7, -100, INT_MIN, INT_MAX};
  for (size_t i = 0; i < 5; i++) {
    const char *u = memsleep_strerror(unknown[i]);
    assert_non_null(u);
    assert_true(strlen(u) > 0);
    for (size_t j = 0; j < n; j++)
      assert_string_not_equal(u, memsleep_strerror(codes[j]));
  }
  assert_stats_zero();
}

static void *thread_last_error(void *arg) {
  (void)arg;
  /* A new thread starts with no error, and sets its own. */
  int fresh = memsleep_last_error()[0] == '\0';
  int rc = memsleep_free(NULL);
  int set = rc == MEMSLEEP_EINVAL && memsleep_last_error()[0] != '\0';
  return (void *)(uintptr_t)(fresh && set);
}

/* The last error belongs to the thread: another thread's failure neither
 * shows in it nor overwrites it. */
static void test_last_error_is_per_thread(void **state) {
  (void)state;
  assert_int_equal(memsleep_is_asleep("bi-mine-only"), MEMSLEEP_ENOTFOUND);
  char mine[512];
  snprintf(mine, sizeof mine, "%s", memsleep_last_error());
  assert_non_null(strstr(mine, "bi-mine-only"));
  pthread_t t;
  void *ok = NULL;
  assert_int_equal(pthread_create(&t, NULL, thread_last_error, NULL), 0);
  assert_int_equal(pthread_join(t, &ok), 0);
  assert_true(ok != NULL);
  assert_string_equal(memsleep_last_error(), mine);
  assert_stats_zero();
}

int main(void) {
  setenv("MEMSLEEP_LIBCUDA", "/nonexistent/libcuda.so.1", 1); /* no driver, on any machine */
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alloc_null_ptr_is_einval),
      cmocka_unit_test(test_alloc_zero_size_is_einval),
      cmocka_unit_test(test_alloc_absurd_size_is_einval),
      cmocka_unit_test(test_alloc_larger_than_memory_is_enomem),
      cmocka_unit_test(test_alloc_unknown_flags_is_einval),
      cmocka_unit_test(test_alloc_backup_and_zero_together_is_einval),
      cmocka_unit_test(test_alloc_bad_tag_is_einval),
      cmocka_unit_test(test_alloc_negative_device_is_einval),
      cmocka_unit_test(test_alloc_cuda_device_is_eunavail),
      cmocka_unit_test(test_alloc_63_char_tag_is_ok),
      cmocka_unit_test(test_failed_alloc_creates_no_tag),
      cmocka_unit_test(test_free_null_is_einval),
      cmocka_unit_test(test_free_unknown_pointer_is_enotfound),
      cmocka_unit_test(test_double_free_is_enotfound),
      cmocka_unit_test_setup_teardown(test_release_resume_null_tags_with_count_is_einval,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_release_resume_bad_tag_name_is_einval, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_release_resume_tag_named_twice_is_einval, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_release_resume_unknown_tag_is_enotfound, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_release_of_asleep_tag_is_estate, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_resume_of_awake_tag_is_estate, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_mixed_awake_and_asleep_list_changes_neither,
                                      fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_is_asleep_unknown_tag_is_enotfound, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test_setup_teardown(test_stats_bad_input, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_measure_bad_input, fixture_setup, fixture_teardown),
      cmocka_unit_test_setup_teardown(test_tags_null_names_is_einval, fixture_setup,
                                      fixture_teardown),
      cmocka_unit_test(test_region_bad_input_is_refused),
      cmocka_unit_test(test_strerror_gives_distinct_text_for_each_code),
      cmocka_unit_test(test_last_error_is_per_thread),
  };
  return cmocka_run_group_tests(tests, setup_names, NULL);
}
