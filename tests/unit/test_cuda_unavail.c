/*
 * test_cuda_unavail.c - the CUDA backend where there is no usable driver.
 *
 * Run by CTest twice: with MEMSLEEP_LIBCUDA naming a file that does not
 * exist (a machine without a driver) and naming the CUDA toolkit's stub
 * libcuda, which loads but fails every call. Either way every CUDA call of
 * the API answers MEMSLEEP_EUNAVAIL (never a crash, never an exit), the
 * message says why (argv[1] is a word it must contain), nothing is left
 * behind, and host memory keeps working beside it.
 */
#include "helpers.h"

static const char *g_why; /* what the message must mention */

static void expect_unavailable(size_t size, int device, const char *tag, unsigned flags) {
  void *p = (void *)0x1;
  test_set_error_marker();
  int rc = memsleep_alloc(&p, size, device, tag, flags);
  if (rc != MEMSLEEP_EUNAVAIL)
    fail_msg("memsleep_alloc(device %d): %d (%s), want MEMSLEEP_EUNAVAIL; %s", device, rc,
             memsleep_strerror(rc), memsleep_last_error());
  assert_ptr_equal(p, (void *)0x1); /* untouched */
  assert_error_mentions(g_why);
  assert_int_equal(memsleep_is_asleep(tag), MEMSLEEP_ENOTFOUND);
}

static void test_every_cuda_alloc_is_eunavail_with_the_reason(void **state) {
  (void)state;
  for (int i = 0; i < 3; i++) { /* the answer is cached: the same every time */
    expect_unavailable(4096, 0, "cu-unavail", 0);
    expect_unavailable((size_t)2 << 20, 0, "cu-unavail", MEMSLEEP_BACKUP);
    expect_unavailable(1, 3, "cu-unavail", MEMSLEEP_ZERO);
  }
  assert_stats_zero();
}

static void test_host_memory_works_beside_it(void **state) {
  (void)state;
  void *p = test_alloc(8192, "cu-host", MEMSLEEP_BACKUP);
  memcpy(p, "still here", 11);
  expect_unavailable(8192, 0, "cu-host-dev", MEMSLEEP_BACKUP);
  assert_ok(test_release1("cu-host"));
  assert_ok(test_resume1("cu-host"));
  assert_string_equal(p, "still here");
  assert_ok(memsleep_free(p));
  assert_stats_zero();
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s WORD   (with MEMSLEEP_LIBCUDA set)\n", argv[0]);
    return 2;
  }
  g_why = argv[1];
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_every_cuda_alloc_is_eunavail_with_the_reason),
      cmocka_unit_test(test_host_memory_works_beside_it),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
