/*
 * test_resident.c - a release really gives physical memory back, and the
 * stats say what is there.
 *
 * Proves that releasing 256 MiB of memory without backup shrinks the
 * process's resident set (Rss in /proc/self/smaps_rollup) by at least 95%
 * of it, and that the stats follow: resident bytes drop to zero while
 * reserved bytes stay, backup bytes hold at least the BACKUP allocations'
 * size while they sleep and drop to zero after resume, reserved bytes are
 * page-rounded, the stats of all tags (NULL) are the sum over tags, and the
 * resident bytes reported match what memsleep_measure() finds. Freeing
 * (awake, or asleep with a backup) shrinks the resident set as well.
 */
#include "helpers.h"

#define BIG_BYTES ((size_t)256 << 20)
#define BIG_PARTS 4

/* Resident bytes of tag as the backend measures them. */
static size_t measured_resident(const char *tag) {
  memsleep_stats_t m;
  assert_ok(memsleep_measure(tag, &m));
  return m.resident_bytes;
}

static void test_release_drops_rss_by_the_released_bytes(void **state) {
  (void)state;
  const size_t part = BIG_BYTES / BIG_PARTS;
  void *p[BIG_PARTS];
  for (size_t i = 0; i < BIG_PARTS; i++) {
    /* ZERO and plain both have no backup: their pages just go. */
    p[i] = test_alloc(part, "res-big", i % 2 ? MEMSLEEP_ZERO : 0);
    memset(p[i], 0x42 + (int)i, part); /* every page touched */
  }
  memsleep_stats_t awake = test_stats("res-big");
  assert_int_equal(awake.allocations, BIG_PARTS);
  assert_int_equal(awake.reserved_bytes, BIG_BYTES);
  assert_int_equal(awake.resident_bytes, BIG_BYTES);
  assert_int_equal(awake.backup_bytes, 0);

  size_t rss_before = test_rss_bytes();
  assert_ok(test_release1("res-big"));
  size_t rss_after = test_rss_bytes();

  memsleep_stats_t asleep = test_stats("res-big");
  assert_int_equal(asleep.allocations, BIG_PARTS);
  assert_int_equal(asleep.reserved_bytes, BIG_BYTES);
  assert_int_equal(asleep.resident_bytes, 0);
  assert_int_equal(asleep.backup_bytes, 0);
  assert_int_equal(measured_resident("res-big"), 0);

  size_t dropped = rss_before > rss_after ? rss_before - rss_after : 0;
  print_message("rss %zu kB -> %zu kB: dropped %zu kB of %zu kB released\n", rss_before >> 10,
                rss_after >> 10, dropped >> 10, BIG_BYTES >> 10);
  /* This holds under AddressSanitizer too (checked): its shadow of this
   * range is only read, never populated, so there is nothing to skip. */
  assert_true(dropped >= BIG_BYTES / 100 * 95);

  /* Resume brings the pages back: the resident set grows again. */
  assert_ok(test_resume1("res-big"));
  assert_stats_equal(test_stats("res-big"), awake);
  assert_true(test_rss_bytes() >= rss_after + BIG_BYTES / 100 * 95);

  for (size_t i = 0; i < BIG_PARTS; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

/* Freeing gives the pages back as well (nothing is kept reserved). */
static void test_free_drops_rss(void **state) {
  (void)state;
  void *p = test_alloc(BIG_BYTES / 2, "res-free", 0);
  memset(p, 0x24, BIG_BYTES / 2);
  size_t rss_before = test_rss_bytes();
  assert_ok(memsleep_free(p));
  size_t rss_after = test_rss_bytes();
  assert_true(rss_before > rss_after);
  assert_true(rss_before - rss_after >= BIG_BYTES / 2 / 100 * 95);
  assert_stats_zero();
}

/* Freeing an asleep BACKUP allocation gives its backup's memory back to
 * the system, not just out of the stats. */
static void test_free_while_asleep_drops_rss_of_the_backup(void **state) {
  (void)state;
  const size_t n = BIG_BYTES / 4;
  void *p = test_alloc(n, "res-free-asleep", MEMSLEEP_BACKUP);
  test_fill_random(p, n, 3);
  assert_ok(test_release1("res-free-asleep"));
  assert_true(test_stats("res-free-asleep").backup_bytes >= n);
  size_t rss_before = test_rss_bytes();
  assert_ok(memsleep_free(p));
  size_t rss_after = test_rss_bytes();
  assert_int_equal(test_stats("res-free-asleep").backup_bytes, 0);
  assert_true(rss_before > rss_after);
  assert_true(rss_before - rss_after >= n / 100 * 95);
  assert_ok(test_resume1("res-free-asleep"));
  assert_stats_zero();
}

static void test_backup_bytes_hold_the_contents_while_asleep(void **state) {
  (void)state;
  const size_t n1 = ((size_t)16 << 20) + 3, n2 = 4097;
  void *b1 = test_alloc(n1, "res-backup", MEMSLEEP_BACKUP);
  void *b2 = test_alloc(n2, "res-backup", MEMSLEEP_BACKUP);
  void *z = test_alloc(65536, "res-backup", MEMSLEEP_ZERO);
  test_fill_random(b1, n1, 1);
  test_fill_random(b2, n2, 2);
  memsleep_stats_t awake = test_stats("res-backup");
  assert_int_equal(awake.allocations, 3);
  assert_int_equal(awake.reserved_bytes,
                   test_pages_of(n1) + test_pages_of(n2) + test_pages_of(65536));
  assert_int_equal(awake.resident_bytes, awake.reserved_bytes);
  assert_int_equal(awake.backup_bytes, 0);

  assert_ok(test_release1("res-backup"));
  memsleep_stats_t asleep = test_stats("res-backup");
  assert_int_equal(asleep.allocations, 3);
  assert_int_equal(asleep.reserved_bytes, awake.reserved_bytes);
  assert_int_equal(asleep.resident_bytes, 0);
  assert_true(asleep.backup_bytes >= n1 + n2);
  /* Only BACKUP allocations have a backup (at most their pages). */
  assert_true(asleep.backup_bytes <= test_pages_of(n1) + test_pages_of(n2));

  assert_ok(test_resume1("res-backup"));
  assert_stats_equal(test_stats("res-backup"), awake);
  assert_random(b1, n1, 1);
  assert_random(b2, n2, 2);

  assert_ok(memsleep_free(b1));
  assert_ok(memsleep_free(b2));
  assert_ok(memsleep_free(z));
  assert_stats_zero();
}

/* The resident bytes the stats report are what the backend measures is
 * there: all of it awake, none of it asleep, for every policy. */
static void test_reported_resident_bytes_are_measured_truth(void **state) {
  (void)state;
  const unsigned flags[] = {0, MEMSLEEP_BACKUP, MEMSLEEP_ZERO};
  void *p[3];
  for (size_t i = 0; i < 3; i++) {
    p[i] = test_alloc(((size_t)4 << 20) + 5, "res-measure", flags[i]);
    memset(p[i], 0x3c, ((size_t)4 << 20) + 5);
  }
  memsleep_stats_t awake = test_stats("res-measure");
  assert_int_equal(measured_resident("res-measure"), awake.resident_bytes);
  assert_int_equal(awake.resident_bytes, 3 * test_pages_of(((size_t)4 << 20) + 5));

  assert_ok(test_release1("res-measure"));
  assert_int_equal(test_stats("res-measure").resident_bytes, 0);
  assert_int_equal(measured_resident("res-measure"), 0);
  memsleep_stats_t all;
  assert_ok(memsleep_measure(NULL, &all));
  assert_int_equal(all.resident_bytes, test_stats(NULL).resident_bytes);

  assert_ok(test_resume1("res-measure"));
  assert_int_equal(measured_resident("res-measure"), awake.resident_bytes);
  assert_stats_equal(test_stats("res-measure"), awake);
  for (size_t i = 0; i < 3; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

static void test_reserved_bytes_are_page_rounded(void **state) {
  (void)state;
  const size_t page = test_page_bytes();
  const size_t sizes[] = {1, page - 1, page, page + 1, 65537};
  size_t want = 0;
  void *p[5];
  for (size_t i = 0; i < 5; i++) {
    p[i] = test_alloc(sizes[i], "res-round", 0);
    want += test_pages_of(sizes[i]);
    memsleep_stats_t s = test_stats("res-round");
    assert_int_equal(s.allocations, i + 1);
    assert_int_equal(s.reserved_bytes, want);
    assert_int_equal(s.resident_bytes, want);
  }
  for (size_t i = 0; i < 5; i++)
    assert_ok(memsleep_free(p[i]));
  memsleep_stats_t z = {0, 0, 0, 0};
  assert_stats_equal(test_stats("res-round"), z);
  assert_stats_zero();
}

static void test_stats_of_null_are_the_sum_over_tags(void **state) {
  (void)state;
  void *a1 = test_alloc(4096, "res-sum-a", MEMSLEEP_BACKUP);
  void *a2 = test_alloc(3 * 4096, "res-sum-a", 0);
  void *b1 = test_alloc(65537, "res-sum-b", MEMSLEEP_BACKUP);
  void *c1 = test_alloc(8192, "res-sum-c", MEMSLEEP_ZERO);
  assert_ok(test_release1("res-sum-b")); /* one tag asleep, with a backup */

  const char *tags[] = {"res-sum-a", "res-sum-b", "res-sum-c"};
  memsleep_stats_t sum = {0, 0, 0, 0};
  for (size_t i = 0; i < 3; i++) {
    memsleep_stats_t s = test_stats(tags[i]);
    sum.allocations += s.allocations;
    sum.reserved_bytes += s.reserved_bytes;
    sum.resident_bytes += s.resident_bytes;
    sum.backup_bytes += s.backup_bytes;
  }
  memsleep_stats_t all = test_stats(NULL);
  assert_stats_equal(all, sum);
  assert_int_equal(all.allocations, 4);
  assert_int_equal(all.reserved_bytes, test_pages_of(4096) + test_pages_of(3 * 4096) +
                                           test_pages_of(65537) + test_pages_of(8192));
  assert_int_equal(all.resident_bytes,
                   test_pages_of(4096) + test_pages_of(3 * 4096) + test_pages_of(8192));
  assert_true(all.backup_bytes >= 65537);

  assert_ok(test_resume1("res-sum-b"));
  assert_ok(memsleep_free(a1));
  assert_ok(memsleep_free(a2));
  assert_ok(memsleep_free(b1));
  assert_ok(memsleep_free(c1));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_release_drops_rss_by_the_released_bytes),
      cmocka_unit_test(test_free_drops_rss),
      cmocka_unit_test(test_free_while_asleep_drops_rss_of_the_backup),
      cmocka_unit_test(test_backup_bytes_hold_the_contents_while_asleep),
      cmocka_unit_test(test_reported_resident_bytes_are_measured_truth),
      cmocka_unit_test(test_reserved_bytes_are_page_rounded),
      cmocka_unit_test(test_stats_of_null_are_the_sum_over_tags),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
