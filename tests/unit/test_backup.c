/*
 * test_backup.c - MEMSLEEP_BACKUP contents survive release/resume.
 *
 * Proves that allocations made with MEMSLEEP_BACKUP read back byte-for-byte
 * what was written before a release, at the same address, for sizes around
 * page boundaries and up to a few MiB, with several allocations in one tag
 * and over several cycles; and that releasing one tag leaves another tag's
 * contents and state untouched. Registered twice: moving pages (default)
 * and copying them (MEMSLEEP_HOST_MOVE=0).
 */
#include "helpers.h"

static const size_t sizes[] = {
    1,
    2,
    7,
    4095,
    4096,
    4097,
    8191,
    65537,
    ((size_t)1 << 20) + 3,
    (size_t)3 << 20,
    ((size_t)5 << 20) + 17,
};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_backup_one_byte_survives(void **state) {
  (void)state;
  unsigned char *p = test_alloc(1, "bk-one", MEMSLEEP_BACKUP);
  p[0] = 0xa7;
  assert_ok(test_release1("bk-one"));
  assert_ok(test_resume1("bk-one"));
  assert_int_equal(p[0], 0xa7);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

/* Every size in its own tag: one allocation per tag, one cycle. */
static void test_backup_each_size_survives_release_resume(void **state) {
  (void)state;
  for (size_t i = 0; i < NSIZES; i++) {
    char tag[32];
    snprintf(tag, sizeof tag, "bk-size-%zu", i);
    void *p = test_alloc(sizes[i], tag, MEMSLEEP_BACKUP);
    test_fill_random(p, sizes[i], 1000 + i);
    assert_ok(test_release1(tag));
    assert_int_equal(memsleep_is_asleep(tag), 1);
    assert_ok(test_resume1(tag));
    assert_int_equal(memsleep_is_asleep(tag), 0);
    assert_random(p, sizes[i], 1000 + i);
    assert_ok(memsleep_free(p));
  }
  assert_stats_zero();
}

/* All sizes in one tag, several cycles, new data written between cycles;
 * the pointers the user holds stay the ones memsleep_free() knows. */
static void test_backup_many_allocations_one_tag_several_cycles(void **state) {
  (void)state;
  void *p[NSIZES];
  void *orig[NSIZES];
  for (size_t i = 0; i < NSIZES; i++) {
    p[i] = test_alloc(sizes[i], "bk-many", MEMSLEEP_BACKUP);
    orig[i] = p[i];
  }
  for (uint64_t cycle = 0; cycle < 4; cycle++) {
    for (size_t i = 0; i < NSIZES; i++)
      test_fill_random(p[i], sizes[i], cycle * 100 + i);
    assert_ok(test_release1("bk-many"));
    assert_ok(test_resume1("bk-many"));
    for (size_t i = 0; i < NSIZES; i++) {
      assert_ptr_equal(p[i], orig[i]);
      assert_random(p[i], sizes[i], cycle * 100 + i);
    }
    /* A second cycle without rewriting keeps the same bytes too. */
    assert_ok(test_release1("bk-many"));
    assert_ok(test_resume1("bk-many"));
    for (size_t i = 0; i < NSIZES; i++)
      assert_random(p[i], sizes[i], cycle * 100 + i);
  }
  for (size_t i = 0; i < NSIZES; i++)
    assert_ok(memsleep_free(orig[i])); /* the address is still the allocation's */
  assert_stats_zero();
}

/* Release with ntags == 0 (every awake tag) and resume with ntags == 0
 * keep BACKUP contents as well. */
static void test_backup_survives_release_all_resume_all(void **state) {
  (void)state;
  void *a = test_alloc(65537, "bk-all-a", MEMSLEEP_BACKUP);
  void *b = test_alloc(4097, "bk-all-b", MEMSLEEP_BACKUP);
  test_fill_random(a, 65537, 11);
  test_fill_random(b, 4097, 12);
  assert_ok(memsleep_release(NULL, 0));
  assert_int_equal(memsleep_is_asleep("bk-all-a"), 1);
  assert_int_equal(memsleep_is_asleep("bk-all-b"), 1);
  assert_ok(memsleep_resume(NULL, 0));
  assert_random(a, 65537, 11);
  assert_random(b, 4097, 12);
  assert_ok(memsleep_free(a));
  assert_ok(memsleep_free(b));
  assert_stats_zero();
}

/* Releasing tag A does not touch tag B: B stays awake, readable, writable,
 * with its contents and stats as they were. */
static void test_partial_release_leaves_other_tag_untouched(void **state) {
  (void)state;
  const size_t na = ((size_t)1 << 20) + 3, nb = 65537;
  void *a = test_alloc(na, "bk-part-a", MEMSLEEP_BACKUP);
  void *b = test_alloc(nb, "bk-part-b", MEMSLEEP_BACKUP);
  void *b0 = test_alloc(4097, "bk-part-b", 0);
  test_fill_random(a, na, 21);
  test_fill_random(b, nb, 22);
  test_fill_random(b0, 4097, 23);
  memsleep_stats_t sb = test_stats("bk-part-b");

  assert_ok(test_release1("bk-part-a"));
  assert_int_equal(memsleep_is_asleep("bk-part-a"), 1);
  assert_int_equal(memsleep_is_asleep("bk-part-b"), 0);
  assert_stats_equal(test_stats("bk-part-b"), sb);
  assert_random(b, nb, 22);
  assert_random(b0, 4097, 23); /* not even the no-backup allocation of B is lost */
  test_fill_random(b, nb, 24); /* and B stays writable */
  assert_random(b, nb, 24);

  assert_ok(test_resume1("bk-part-a"));
  assert_random(a, na, 21);
  assert_random(b, nb, 24);
  assert_stats_equal(test_stats("bk-part-b"), sb);
  assert_ok(memsleep_free(a));
  assert_ok(memsleep_free(b));
  assert_ok(memsleep_free(b0));
  assert_stats_zero();
}

/* Memory written after a resume is what the next cycle keeps. */
static void test_backup_keeps_writes_made_after_resume(void **state) {
  (void)state;
  const size_t n = 3 * 4096 + 5;
  unsigned char *p = test_alloc(n, "bk-rewrite", MEMSLEEP_BACKUP);
  test_fill_random(p, n, 31);
  assert_ok(test_release1("bk-rewrite"));
  assert_ok(test_resume1("bk-rewrite"));
  assert_random(p, n, 31);
  test_fill_random(p + 4096, n - 4096, 32);
  assert_ok(test_release1("bk-rewrite"));
  assert_ok(test_resume1("bk-rewrite"));
  assert_random(p, 4096, 31);
  assert_random(p + 4096, n - 4096, 32);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_backup_one_byte_survives),
      cmocka_unit_test(test_backup_each_size_survives_release_resume),
      cmocka_unit_test(test_backup_many_allocations_one_tag_several_cycles),
      cmocka_unit_test(test_backup_survives_release_all_resume_all),
      cmocka_unit_test(test_partial_release_leaves_other_tag_untouched),
      cmocka_unit_test(test_backup_keeps_writes_made_after_resume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
