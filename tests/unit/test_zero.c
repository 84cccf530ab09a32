/*
 * test_zero.c - MEMSLEEP_ZERO allocations read as zeros after resume.
 *
 * Proves that memory allocated with MEMSLEEP_ZERO, written with non-zero
 * bytes before a release, reads as all zeros after the resume (at every
 * size, over several cycles, next to BACKUP allocations in the same tag),
 * and that memory with neither flag comes back mapped and writable (its
 * contents are undefined, so none are asserted).
 */
#include "helpers.h"

static const size_t sizes[] = {1, 4095, 4096, 4097, 65537, ((size_t)1 << 20) + 3, (size_t)3 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void test_zero_reads_zeros_after_resume(void **state) {
  (void)state;
  void *p[NSIZES];
  for (size_t i = 0; i < NSIZES; i++) {
    p[i] = test_alloc(sizes[i], "zero-sizes", MEMSLEEP_ZERO);
    memset(p[i], 0x5a, sizes[i]);
  }
  assert_ok(test_release1("zero-sizes"));
  assert_ok(test_resume1("zero-sizes"));
  for (size_t i = 0; i < NSIZES; i++)
    assert_zeros(p[i], sizes[i]);
  for (size_t i = 0; i < NSIZES; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

static void test_zero_reads_zeros_after_every_cycle(void **state) {
  (void)state;
  const size_t n = 65537;
  unsigned char *p = test_alloc(n, "zero-cycles", MEMSLEEP_ZERO);
  for (int cycle = 0; cycle < 5; cycle++) {
    memset(p, 0x11 + cycle, n);
    assert_ok(test_release1("zero-cycles"));
    assert_ok(test_resume1("zero-cycles"));
    assert_zeros(p, n);
  }
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

/* ZERO and BACKUP in one tag: each keeps its own policy. */
static void test_zero_and_backup_in_one_tag_keep_their_policies(void **state) {
  (void)state;
  const size_t n = 65537;
  void *z = test_alloc(n, "zero-mixed", MEMSLEEP_ZERO);
  void *b = test_alloc(n, "zero-mixed", MEMSLEEP_BACKUP);
  memset(z, 0x77, n);
  test_fill_random(b, n, 7);
  assert_ok(test_release1("zero-mixed"));
  assert_ok(test_resume1("zero-mixed"));
  assert_zeros(z, n);
  assert_random(b, n, 7);
  assert_ok(memsleep_free(z));
  assert_ok(memsleep_free(b));
  assert_stats_zero();
}

/* Neither flag: resume succeeds and the memory is there to be written and
 * read again (what it held after the resume is not asserted). */
static void test_plain_memory_is_writable_after_resume(void **state) {
  (void)state;
  void *p[NSIZES];
  for (size_t i = 0; i < NSIZES; i++) {
    p[i] = test_alloc(sizes[i], "zero-plain", 0);
    memset(p[i], 0x33, sizes[i]);
  }
  for (uint64_t cycle = 0; cycle < 3; cycle++) {
    assert_ok(test_release1("zero-plain"));
    assert_ok(test_resume1("zero-plain"));
    assert_int_equal(memsleep_is_asleep("zero-plain"), 0);
    for (size_t i = 0; i < NSIZES; i++) {
      test_fill_random(p[i], sizes[i], cycle * 10 + i);
      assert_random(p[i], sizes[i], cycle * 10 + i);
    }
  }
  for (size_t i = 0; i < NSIZES; i++)
    assert_ok(memsleep_free(p[i]));
  assert_stats_zero();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_zero_reads_zeros_after_resume),
      cmocka_unit_test(test_zero_reads_zeros_after_every_cycle),
      cmocka_unit_test(test_zero_and_backup_in_one_tag_keep_their_policies),
      cmocka_unit_test(test_plain_memory_is_writable_after_resume),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
