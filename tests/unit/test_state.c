/*
 * test_state.c - the asleep/awake state of tags and what it allows.
 *
 * Proves that allocating into an asleep tag is ESTATE and allocates
 * nothing; that free works on awake and on asleep allocations (and freeing
 * an asleep BACKUP allocation gives back its backup); that release and
 * resume with ntags == 0 mean every awake and every asleep tag; and that a
 * tag stays known, with its state, after its last allocation is freed, and
 * can still be released and resumed; that memsleep_tags lists tags in order
 * of first use; and that the table of tags is bounded (4,096).
 */
#include "helpers.h"

#define MS_TAGS_CAP 256 /* more than this file uses before the last test */

static void test_alloc_into_asleep_tag_is_estate_and_allocates_nothing(void **state) {
  (void)state;
  void *p = test_alloc(65537, "st-asleep", MEMSLEEP_BACKUP);
  test_fill_random(p, 65537, 1);
  assert_ok(test_release1("st-asleep"));
  memsleep_stats_t tag_before = test_stats("st-asleep");
  memsleep_stats_t all_before = test_stats(NULL);
  const unsigned flags[] = {0, MEMSLEEP_BACKUP, MEMSLEEP_ZERO};
  for (size_t i = 0; i < 3; i++) {
    void *q = NULL;
    test_set_error_marker();
    assert_int_equal(memsleep_alloc(&q, 4096, MEMSLEEP_HOST, "st-asleep", flags[i]),
                     MEMSLEEP_ESTATE);
    assert_error_set();
    assert_null(q);
    assert_stats_equal(test_stats("st-asleep"), tag_before);
    assert_stats_equal(test_stats(NULL), all_before);
    assert_int_equal(memsleep_is_asleep("st-asleep"), 1);
  }
  /* Awake again, it takes allocations. */
  assert_ok(test_resume1("st-asleep"));
  void *q = test_alloc(4096, "st-asleep", 0);
  assert_random(p, 65537, 1);
  assert_ok(memsleep_free(q));
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

static void test_free_works_on_awake_allocations(void **state) {
  (void)state;
  void *p[3];
  const unsigned flags[] = {0, MEMSLEEP_BACKUP, MEMSLEEP_ZERO};
  for (size_t i = 0; i < 3; i++)
    p[i] = test_alloc(65537, "st-free-awake", flags[i]);
  for (size_t i = 0; i < 3; i++) {
    assert_ok(memsleep_free(p[i]));
    assert_int_equal(test_stats("st-free-awake").allocations, 2 - i);
  }
  assert_stats_zero();
}

/* Free while asleep: the allocation goes, its backup with it; the others
 * of the tag keep theirs. */
static void test_free_while_asleep_gives_back_its_backup(void **state) {
  (void)state;
  const size_t n1 = (size_t)1 << 20, n2 = 65537;
  void *b1 = test_alloc(n1, "st-free-asleep", MEMSLEEP_BACKUP);
  void *b2 = test_alloc(n2, "st-free-asleep", MEMSLEEP_BACKUP);
  void *z = test_alloc(8192, "st-free-asleep", MEMSLEEP_ZERO);
  void *plain = test_alloc(8192, "st-free-asleep", 0);
  test_fill_random(b1, n1, 1);
  test_fill_random(b2, n2, 2);
  assert_ok(test_release1("st-free-asleep"));
  memsleep_stats_t s0 = test_stats("st-free-asleep");
  assert_true(s0.backup_bytes >= n1 + n2);

  assert_ok(memsleep_free(b1));
  memsleep_stats_t s1 = test_stats("st-free-asleep");
  assert_int_equal(s1.allocations, 3);
  assert_int_equal(s1.reserved_bytes, s0.reserved_bytes - test_pages_of(n1));
  assert_int_equal(s1.resident_bytes, 0);
  assert_true(s1.backup_bytes < s0.backup_bytes);
  assert_true(s0.backup_bytes - s1.backup_bytes >= n1); /* b1's backup went */
  assert_true(s1.backup_bytes >= n2);                   /* b2's stayed */
  assert_int_equal(memsleep_is_asleep("st-free-asleep"), 1);

  assert_ok(memsleep_free(z));
  assert_ok(memsleep_free(plain));
  assert_int_equal(test_stats("st-free-asleep").allocations, 1);
  assert_int_equal(memsleep_is_asleep("st-free-asleep"), 1);

  assert_ok(test_resume1("st-free-asleep"));
  assert_random(b2, n2, 2);
  assert_int_equal(test_stats("st-free-asleep").backup_bytes, 0);
  assert_ok(memsleep_free(b2));
  assert_stats_zero();
}

/* ntags == 0: release takes every awake tag (leaving asleep ones be), resume
 * every asleep one (leaving awake ones be), with tags NULL or not. */
static void test_release_resume_with_no_tags_mean_all(void **state) {
  (void)state;
  void *a = test_alloc(4097, "st-all-a", MEMSLEEP_BACKUP);
  void *b = test_alloc(4097, "st-all-b", MEMSLEEP_BACKUP);
  void *c = test_alloc(4097, "st-all-c", MEMSLEEP_BACKUP);
  test_fill_random(a, 4097, 1);
  test_fill_random(b, 4097, 2);
  test_fill_random(c, 4097, 3);
  assert_ok(test_release1("st-all-c")); /* already asleep: not an error for "all" */

  assert_ok(memsleep_release(NULL, 0));
  assert_int_equal(memsleep_is_asleep("st-all-a"), 1);
  assert_int_equal(memsleep_is_asleep("st-all-b"), 1);
  assert_int_equal(memsleep_is_asleep("st-all-c"), 1);
  assert_int_equal(test_stats(NULL).resident_bytes, 0);
  /* Nothing awake is left: "all" of nothing still succeeds. */
  assert_ok(memsleep_release(NULL, 0));

  assert_ok(test_resume1("st-all-a"));
  const char *unused[] = {"st-all-b"};
  assert_ok(memsleep_resume(unused, 0)); /* ntags 0 wins over a non-NULL list */
  assert_int_equal(memsleep_is_asleep("st-all-a"), 0);
  assert_int_equal(memsleep_is_asleep("st-all-b"), 0);
  assert_int_equal(memsleep_is_asleep("st-all-c"), 0);
  assert_random(a, 4097, 1);
  assert_random(b, 4097, 2);
  assert_random(c, 4097, 3);
  assert_ok(memsleep_resume(NULL, 0)); /* nothing asleep: succeeds, changes nothing */

  assert_ok(memsleep_release(unused, 0));
  assert_int_equal(memsleep_is_asleep("st-all-b"), 1);
  assert_int_equal(memsleep_is_asleep("st-all-a"), 1);
  assert_ok(memsleep_resume(NULL, 0));
  assert_random(a, 4097, 1);
  assert_random(b, 4097, 2);
  assert_random(c, 4097, 3);
  assert_ok(memsleep_free(a));
  assert_ok(memsleep_free(b));
  assert_ok(memsleep_free(c));
  assert_stats_zero();
}

static void test_tag_stays_known_after_last_free(void **state) {
  (void)state;
  void *p = test_alloc(4096, "st-known", 0);
  assert_ok(memsleep_free(p));
  assert_int_equal(memsleep_is_asleep("st-known"), 0);
  memsleep_stats_t z = {0, 0, 0, 0};
  assert_stats_equal(test_stats("st-known"), z);
  char names[256][MEMSLEEP_TAG_MAX + 1];
  int n = memsleep_tags(names, 256);
  int found = 0;
  for (int i = 0; i < n && i < 256; i++)
    found |= strcmp(names[i], "st-known") == 0;
  assert_true(found);
  assert_stats_zero();
}

/* A tag that is asleep stays asleep after its last allocation is freed:
 * allocating into it is still ESTATE until it is resumed. */
static void test_asleep_state_survives_freeing_last_allocation(void **state) {
  (void)state;
  void *p = test_alloc(4096, "st-asleep-empty", MEMSLEEP_BACKUP);
  assert_ok(test_release1("st-asleep-empty"));
  assert_ok(memsleep_free(p));
  assert_int_equal(memsleep_is_asleep("st-asleep-empty"), 1);
  void *q = NULL;
  assert_int_equal(memsleep_alloc(&q, 4096, MEMSLEEP_HOST, "st-asleep-empty", 0), MEMSLEEP_ESTATE);
  assert_stats_zero();
  assert_ok(test_resume1("st-asleep-empty"));
  assert_int_equal(memsleep_is_asleep("st-asleep-empty"), 0);
  q = test_alloc(4096, "st-asleep-empty", 0);
  assert_ok(memsleep_free(q));
  assert_stats_zero();
}

static void test_release_of_tag_with_no_allocations_left_works(void **state) {
  (void)state;
  void *p = test_alloc(4096, "st-empty", MEMSLEEP_BACKUP);
  assert_ok(memsleep_free(p));
  assert_ok(test_release1("st-empty"));
  assert_int_equal(memsleep_is_asleep("st-empty"), 1);
  assert_int_equal(test_release1("st-empty"), MEMSLEEP_ESTATE);
  assert_ok(test_resume1("st-empty"));
  assert_int_equal(memsleep_is_asleep("st-empty"), 0);
  assert_int_equal(test_resume1("st-empty"), MEMSLEEP_ESTATE);
  /* And it takes allocations again, which go through a full cycle. */
  p = test_alloc(4097, "st-empty", MEMSLEEP_BACKUP);
  test_fill_random(p, 4097, 9);
  assert_ok(test_release1("st-empty"));
  assert_ok(test_resume1("st-empty"));
  assert_random(p, 4097, 9);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

/* The state is per tag: releasing one tag leaves the others awake, and
 * they keep taking allocations. */
static void test_state_is_per_tag(void **state) {
  (void)state;
  void *a = test_alloc(4096, "st-per-a", 0);
  void *b = test_alloc(4096, "st-per-b", 0);
  assert_ok(test_release1("st-per-a"));
  assert_int_equal(memsleep_is_asleep("st-per-a"), 1);
  assert_int_equal(memsleep_is_asleep("st-per-b"), 0);
  void *b2 = test_alloc(4096, "st-per-b", 0);
  assert_ok(memsleep_free(b2));
  assert_ok(test_resume1("st-per-a"));
  assert_ok(memsleep_free(a));
  assert_ok(memsleep_free(b));
  assert_stats_zero();
}

/* memsleep_tags lists every tag ever used, in order of first use, copying
 * at most cap names and returning how many there are. */
static void test_tags_are_listed_in_order_of_first_use(void **state) {
  (void)state;
  int before = memsleep_tags(NULL, 0);
  assert_true(before >= 0);
  const char *mine[] = {"st-order-c", "st-order-a", "st-order-b"};
  for (size_t i = 0; i < 3; i++)
    assert_ok(memsleep_free(test_alloc(4096, mine[i], 0)));
  assert_ok(memsleep_free(test_alloc(4096, "st-order-a", 0))); /* not listed twice */
  static char names[MS_TAGS_CAP][MEMSLEEP_TAG_MAX + 1];
  int n = memsleep_tags(names, MS_TAGS_CAP);
  assert_int_equal(n, before + 3);
  for (size_t i = 0; i < 3; i++)
    assert_string_equal(names[before + (int)i], mine[i]);
  /* A smaller cap copies only that many, and still says how many exist. */
  memset(names, 0, sizeof names);
  assert_int_equal(memsleep_tags(names, 1), n);
  assert_true(names[0][0] != '\0');
  assert_int_equal(names[1][0], '\0');
  assert_stats_zero();
}

/* The table of tags is bounded (4,096): past that, a new tag is refused
 * with ENOMEM and not created, while known tags keep working. Last in
 * this file, since it fills the table for the rest of the process. */
static void test_tag_table_is_bounded(void **state) {
  (void)state;
  int rc = 0, made = 0;
  char tag[32];
  for (int i = 0; i < 5000 && rc == 0; i++) {
    snprintf(tag, sizeof tag, "st-many-%d", i);
    void *p = NULL;
    rc = memsleep_alloc(&p, 4096, MEMSLEEP_HOST, tag, 0);
    if (rc == 0) {
      made++;
      assert_ok(memsleep_free(p));
    }
  }
  assert_int_equal(rc, MEMSLEEP_ENOMEM);
  assert_true(memsleep_last_error()[0] != '\0');
  assert_int_equal(memsleep_tags(NULL, 0), 4096);
  assert_int_equal(memsleep_is_asleep(tag), MEMSLEEP_ENOTFOUND);
  /* Known tags still work, the full table notwithstanding. */
  snprintf(tag, sizeof tag, "st-many-%d", made - 1);
  void *p = test_alloc(4097, tag, MEMSLEEP_BACKUP);
  test_fill_random(p, 4097, 4);
  assert_ok(test_release1(tag));
  assert_ok(test_resume1(tag));
  assert_random(p, 4097, 4);
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_alloc_into_asleep_tag_is_estate_and_allocates_nothing),
      cmocka_unit_test(test_free_works_on_awake_allocations),
      cmocka_unit_test(test_free_while_asleep_gives_back_its_backup),
      cmocka_unit_test(test_release_resume_with_no_tags_mean_all),
      cmocka_unit_test(test_tag_stays_known_after_last_free),
      cmocka_unit_test(test_asleep_state_survives_freeing_last_allocation),
      cmocka_unit_test(test_release_of_tag_with_no_allocations_left_works),
      cmocka_unit_test(test_state_is_per_tag),
      cmocka_unit_test(test_tags_are_listed_in_order_of_first_use),
      cmocka_unit_test(test_tag_table_is_bounded),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
