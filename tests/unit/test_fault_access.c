/*
 * test_fault_access.c - touching released memory faults, never garbage.
 *
 * Proves, in forked children (so the fault ends the child, not the test),
 * that reading or writing an allocation of a released tag kills the
 * process with SIGSEGV (or SIGBUS) whatever its policy, whether the parent
 * released it before the fork or the child released it itself; and that
 * after a resume the same address is readable, in a child and here.
 */
#include "helpers.h"

#define N_BYTES (3 * 4096 + 5)

typedef struct touch {
  volatile unsigned char *p; /* the byte to touch */
  int write;                 /* write it, rather than read it */
  const char *release_tag;   /* release this tag first (in the child), or NULL */
} touch_t;

static int child_touch(void *arg) {
  const touch_t *t = arg;
  if (t->release_tag != NULL && memsleep_release(&t->release_tag, 1) != 0)
    return 3;
  if (t->write)
    *t->p = 1;
  else
    (void)*t->p;
  return 0; /* it did not fault */
}

static void assert_touch_faults(void *p, int write, const char *release_tag) {
  touch_t t = {p, write, release_tag};
  int status = test_in_child(child_touch, &t);
  if (!test_died_of_fault(status))
    fail_msg("%s %p %s: the child %s %d, want death by SIGSEGV/SIGBUS",
             write ? "writing" : "reading", p,
             release_tag ? "after releasing in the child" : "after release",
             WIFEXITED(status) ? "exited with" : "died of signal",
             WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
}

static void test_touching_released_memory_faults(void **state) {
  (void)state;
  const unsigned flags[] = {0, MEMSLEEP_BACKUP, MEMSLEEP_ZERO};
  unsigned char *p[3];
  for (size_t i = 0; i < 3; i++) {
    p[i] = test_alloc(N_BYTES, "fa-released", flags[i]);
    test_fill_random(p[i], N_BYTES, i);
  }
  assert_ok(test_release1("fa-released"));
  for (size_t i = 0; i < 3; i++) {
    assert_touch_faults(p[i], 0, NULL);               /* first byte */
    assert_touch_faults(p[i] + N_BYTES - 1, 0, NULL); /* last byte */
    assert_touch_faults(p[i] + 4096, 1, NULL);        /* a write in the middle */
  }
  assert_ok(test_resume1("fa-released"));
  assert_random(p[1], N_BYTES, 1);
  for (size_t i = 0; i < 3; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

/* The child releases the tag itself, then touches it: it faults, and the
 * parent's memory is not affected by what the child did. */
static void test_child_that_releases_then_touches_faults(void **state) {
  (void)state;
  unsigned char *b = test_alloc(N_BYTES, "fa-child", MEMSLEEP_BACKUP);
  unsigned char *z = test_alloc(N_BYTES, "fa-child", MEMSLEEP_ZERO);
  test_fill_random(b, N_BYTES, 5);
  memset(z, 0x11, N_BYTES);
  assert_touch_faults(b, 0, "fa-child");
  assert_touch_faults(z + 100, 1, "fa-child");
  assert_int_equal(memsleep_is_asleep("fa-child"), 0);
  assert_random(b, N_BYTES, 5);
  assert_int_equal(test_find_not(z, N_BYTES, 0x11), SIZE_MAX);
  assert_ok(memsleep_free(b));
  assert_ok(memsleep_free(z));
  assert_stats_zero();
}

/* After resume the address is readable again: in a child, which exits
 * normally having found the contents, and here. */
static void test_resumed_memory_is_readable(void **state) {
  (void)state;
  unsigned char *b = test_alloc(N_BYTES, "fa-resumed", MEMSLEEP_BACKUP);
  unsigned char *z = test_alloc(N_BYTES, "fa-resumed", MEMSLEEP_ZERO);
  test_fill_random(b, N_BYTES, 6);
  memset(z, 0x22, N_BYTES);
  assert_ok(test_release1("fa-resumed"));
  assert_int_equal(test_probe_random(b, N_BYTES, 6), -1);
  assert_ok(test_resume1("fa-resumed"));
  assert_int_equal(test_probe_random(b, N_BYTES, 6), 1);
  assert_random(b, N_BYTES, 6);
  assert_zeros(z, N_BYTES);
  z[N_BYTES - 1] = 7; /* and writable */
  assert_int_equal(z[N_BYTES - 1], 7);
  assert_ok(memsleep_free(b));
  assert_ok(memsleep_free(z));
  assert_stats_zero();
}

/* Touching an allocation of another, awake tag is fine while one is
 * released: the fault is confined to what was released. */
static void test_awake_tag_stays_readable_while_another_is_released(void **state) {
  (void)state;
  unsigned char *a = test_alloc(N_BYTES, "fa-other-asleep", MEMSLEEP_BACKUP);
  unsigned char *b = test_alloc(N_BYTES, "fa-other-awake", MEMSLEEP_BACKUP);
  test_fill_random(a, N_BYTES, 7);
  test_fill_random(b, N_BYTES, 8);
  assert_ok(test_release1("fa-other-asleep"));
  assert_int_equal(test_probe_random(b, N_BYTES, 8), 1);
  assert_int_equal(test_probe_random(a, N_BYTES, 7), -1);
  assert_ok(test_resume1("fa-other-asleep"));
  assert_random(a, N_BYTES, 7);
  assert_ok(memsleep_free(a));
  assert_ok(memsleep_free(b));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_touching_released_memory_faults),
      cmocka_unit_test(test_child_that_releases_then_touches_faults),
      cmocka_unit_test(test_resumed_memory_is_readable),
      cmocka_unit_test(test_awake_tag_stays_readable_while_another_is_released),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
