/*
 * test_release_no_backup.c - memsleep_release_flags(MEMSLEEP_RELEASE_NO_BACKUP).
 *
 * Proves that a release told to keep no backup frees the physical memory of
 * MEMSLEEP_BACKUP allocations too, holds no backup bytes while asleep (the
 * process's resident set drops by the whole allocation), resumes to usable
 * memory at the same address, and that the next ordinary release keeps a
 * backup again. Unknown flags are EINVAL and change nothing.
 */
#include "helpers.h"

#define BIG ((size_t)64 << 20)

static void test_no_backup_release_frees_backed_up_memory_and_keeps_no_backup(void **state) {
  (void)state;
  void *p = test_alloc(BIG, "nb-weights", MEMSLEEP_BACKUP);
  test_fill_random(p, BIG, 11);
  size_t rss_before = test_rss_bytes();
  const char *tags[] = {"nb-weights"};
  assert_ok(memsleep_release_flags(tags, 1, MEMSLEEP_RELEASE_NO_BACKUP));
  size_t rss_after = test_rss_bytes();
  memsleep_stats_t s = test_stats("nb-weights");
  assert_int_equal(s.resident_bytes, 0);
  assert_int_equal(s.backup_bytes, 0);
  assert_int_equal(memsleep_is_asleep("nb-weights"), 1);
  /* Nothing kept anywhere: the resident set falls by (nearly) all of it. */
  assert_true(rss_before > rss_after);
  assert_true(rss_before - rss_after >= BIG / 100 * 95);

  void *same = p;
  assert_ok(memsleep_resume(tags, 1));
  assert_ptr_equal(p, same);
  memset(p, 0x5a, BIG); /* writable again; contents were discarded */
  assert_int_equal(test_stats("nb-weights").resident_bytes, test_pages_of(BIG));

  /* An ordinary release keeps a backup again. */
  test_fill_random(p, BIG, 12);
  assert_ok(memsleep_release(tags, 1));
  assert_true(test_stats("nb-weights").backup_bytes >= BIG);
  assert_ok(memsleep_resume(tags, 1));
  assert_random(p, BIG, 12);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

static void test_unknown_release_flags_are_einval_and_change_nothing(void **state) {
  (void)state;
  void *p = test_alloc(4096, "nb-flags", MEMSLEEP_BACKUP);
  memsleep_stats_t before = test_stats("nb-flags");
  const char *tags[] = {"nb-flags"};
  test_set_error_marker();
  assert_int_equal(memsleep_release_flags(tags, 1, 0x2), MEMSLEEP_EINVAL);
  assert_error_set();
  assert_int_equal(memsleep_is_asleep("nb-flags"), 0);
  assert_stats_equal(test_stats("nb-flags"), before);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_backup_release_frees_backed_up_memory_and_keeps_no_backup),
      cmocka_unit_test(test_unknown_release_flags_are_einval_and_change_nothing),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
