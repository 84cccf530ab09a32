/*
 * test_regions.c - the thread-local stack of regions.
 *
 * Proves that regions nest (push/pop), that memsleep_region_current gives
 * the innermost tag and flags (and "" / 0 with none open), that popping an
 * empty stack is ESTATE, that the depth limit MEMSLEEP_REGION_DEPTH_MAX
 * refuses the next push with EINVAL, that bad tags and flags are EINVAL and
 * leave the stack as it was, and that each thread has its own stack.
 */
#include <pthread.h>

#include "helpers.h"

/* Checks the innermost region is (tag, flags), or none when tag is NULL. */
static void assert_current(const char *tag, unsigned flags) {
  char out[MEMSLEEP_TAG_MAX + 1];
  unsigned f = 0xdead;
  memset(out, 'z', sizeof out);
  int rc = memsleep_region_current(out, &f);
  if (tag == NULL) {
    assert_int_equal(rc, 0);
    assert_string_equal(out, "");
    assert_int_equal(f, 0);
  } else {
    assert_int_equal(rc, 1);
    assert_string_equal(out, tag);
    assert_int_equal(f, flags);
  }
}

static void test_no_region_is_open_at_first(void **state) {
  (void)state;
  assert_current(NULL, 0);
  char out[MEMSLEEP_TAG_MAX + 1];
  assert_int_equal(memsleep_region_current(out, NULL), 0); /* flags may be NULL */
  assert_stats_zero();
}

static void test_push_pop_nest_and_current_is_innermost(void **state) {
  (void)state;
  assert_ok(memsleep_region_push("rg-outer", MEMSLEEP_BACKUP));
  assert_current("rg-outer", MEMSLEEP_BACKUP);
  assert_ok(memsleep_region_push("rg-middle", 0));
  assert_current("rg-middle", 0);
  assert_ok(memsleep_region_push("rg-inner", MEMSLEEP_ZERO));
  assert_current("rg-inner", MEMSLEEP_ZERO);
  char out[MEMSLEEP_TAG_MAX + 1];
  assert_int_equal(memsleep_region_current(out, NULL), 1);
  assert_string_equal(out, "rg-inner");
  assert_ok(memsleep_region_pop());
  assert_current("rg-middle", 0);
  assert_ok(memsleep_region_pop());
  assert_current("rg-outer", MEMSLEEP_BACKUP);
  assert_ok(memsleep_region_pop());
  assert_current(NULL, 0);
  assert_stats_zero();
}

static void test_pop_of_empty_stack_is_estate(void **state) {
  (void)state;
  test_set_error_marker();
  assert_int_equal(memsleep_region_pop(), MEMSLEEP_ESTATE);
  assert_error_set();
  assert_current(NULL, 0);
  assert_ok(memsleep_region_push("rg-once", 0));
  assert_ok(memsleep_region_pop());
  assert_int_equal(memsleep_region_pop(), MEMSLEEP_ESTATE);
  assert_stats_zero();
}

static void test_depth_limit_refuses_the_next_push(void **state) {
  (void)state;
  char tag[32];
  for (int i = 0; i < MEMSLEEP_REGION_DEPTH_MAX; i++) {
    snprintf(tag, sizeof tag, "rg-depth-%d", i);
    assert_ok(memsleep_region_push(tag, i % 2 ? MEMSLEEP_BACKUP : 0));
  }
  test_set_error_marker();
  assert_int_equal(memsleep_region_push("rg-one-too-many", 0), MEMSLEEP_EINVAL);
  assert_error_set();
  snprintf(tag, sizeof tag, "rg-depth-%d", MEMSLEEP_REGION_DEPTH_MAX - 1);
  assert_current(tag, (MEMSLEEP_REGION_DEPTH_MAX - 1) % 2 ? MEMSLEEP_BACKUP : 0);
  for (int i = MEMSLEEP_REGION_DEPTH_MAX - 1; i >= 0; i--) {
    snprintf(tag, sizeof tag, "rg-depth-%d", i);
    assert_current(tag, i % 2 ? MEMSLEEP_BACKUP : 0);
    assert_ok(memsleep_region_pop());
  }
  assert_current(NULL, 0);
  assert_int_equal(memsleep_region_pop(), MEMSLEEP_ESTATE);
  assert_stats_zero();
}

static void test_bad_tag_or_flags_are_einval_and_change_nothing(void **state) {
  (void)state;
  char tag64[65];
  memset(tag64, 't', 64);
  tag64[64] = '\0';
  const char *bad[] = {NULL, "", "a b", "a/b", "\xc3\xbcn\xc3\xaf", tag64};
  assert_ok(memsleep_region_push("rg-keep", MEMSLEEP_ZERO));
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    test_set_error_marker();
    assert_int_equal(memsleep_region_push(bad[i], 0), MEMSLEEP_EINVAL);
    assert_error_set();
    assert_current("rg-keep", MEMSLEEP_ZERO);
  }
  const unsigned bad_flags[] = {0x4u, MEMSLEEP_BACKUP | MEMSLEEP_ZERO, 0x80000000u};
  for (size_t i = 0; i < 3; i++) {
    test_set_error_marker();
    assert_int_equal(memsleep_region_push("rg-fine-tag", bad_flags[i]), MEMSLEEP_EINVAL);
    assert_error_set();
    assert_current("rg-keep", MEMSLEEP_ZERO);
  }
  test_set_error_marker();
  assert_int_equal(memsleep_region_current(NULL, NULL), MEMSLEEP_EINVAL);
  assert_error_set();
  char tag63[64];
  memset(tag63, 's', 63);
  tag63[63] = '\0';
  assert_ok(memsleep_region_push(tag63, MEMSLEEP_BACKUP));
  assert_current(tag63, MEMSLEEP_BACKUP);
  assert_ok(memsleep_region_pop());
  assert_ok(memsleep_region_pop());
  assert_current(NULL, 0);
  /* Regions are bookkeeping only: they allocate nothing, make no tags. */
  assert_int_equal(memsleep_is_asleep("rg-keep"), MEMSLEEP_ENOTFOUND);
  assert_stats_zero();
}

/* What a second thread sees and does, reported back by value. */
typedef struct other {
  int open_at_start; /* region_current() on entry */
  char tag_at_start[MEMSLEEP_TAG_MAX + 1];
  int pop_rc;      /* pop on its empty stack */
  int push_rc;     /* its own push */
  int own_current; /* region_current() after it */
  char own_tag[MEMSLEEP_TAG_MAX + 1];
} other_t;

static void *other_thread(void *arg) {
  other_t *o = arg;
  o->open_at_start = memsleep_region_current(o->tag_at_start, NULL);
  o->pop_rc = memsleep_region_pop();
  o->push_rc = memsleep_region_push("rg-other-thread", MEMSLEEP_ZERO);
  o->own_current = memsleep_region_current(o->own_tag, NULL);
  memsleep_region_pop();
  return NULL;
}

static void test_regions_are_per_thread(void **state) {
  (void)state;
  assert_ok(memsleep_region_push("rg-main-1", MEMSLEEP_BACKUP));
  assert_ok(memsleep_region_push("rg-main-2", 0));
  other_t o;
  memset(&o, 0, sizeof o);
  pthread_t t;
  assert_int_equal(pthread_create(&t, NULL, other_thread, &o), 0);
  assert_int_equal(pthread_join(t, NULL), 0);
  assert_int_equal(o.open_at_start, 0);
  assert_string_equal(o.tag_at_start, "");
  assert_int_equal(o.pop_rc, MEMSLEEP_ESTATE);
  assert_int_equal(o.push_rc, 0);
  assert_int_equal(o.own_current, 1);
  assert_string_equal(o.own_tag, "rg-other-thread");
  /* The other thread's push and pops did not touch this thread's stack. */
  assert_current("rg-main-2", 0);
  assert_ok(memsleep_region_pop());
  assert_current("rg-main-1", MEMSLEEP_BACKUP);
  assert_ok(memsleep_region_pop());
  assert_current(NULL, 0);
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_region_is_open_at_first),
      cmocka_unit_test(test_push_pop_nest_and_current_is_innermost),
      cmocka_unit_test(test_pop_of_empty_stack_is_estate),
      cmocka_unit_test(test_depth_limit_refuses_the_next_push),
      cmocka_unit_test(test_bad_tag_or_flags_are_einval_and_change_nothing),
      cmocka_unit_test(test_regions_are_per_thread),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
