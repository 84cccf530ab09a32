/*
 * test_engine_device.c - choosing where the engine runs.
 *
 * "cpu" and "cuda:N" parse and print back; anything else is refused with
 * the text in the message. Where CUDA cannot be used (a build without the
 * CUDA engine, or a machine without a driver or GPU, as in CI) asking for
 * cuda:0 fails with MEMSLEEP_EUNAVAIL and a message that says why, from
 * the engine, the loader and the KV cache alike, and leaves nothing
 * allocated. On a machine where cuda:0 works these cases are skipped: the
 * GPU test (tests/gpu/engine_gpu_test.c) covers it.
 */
#include "engine/device.h"
#include "engine/kvcache.h"
#include "engine_helpers.h"

static void test_parse_and_name_devices(void **state) {
  (void)state;
  int d = 123;
  char buf[32];
  assert_int_equal(ms__device_parse("cpu", &d), 0);
  assert_int_equal(d, MEMSLEEP_HOST);
  assert_string_equal(ms__device_name(d, buf, sizeof buf), "cpu");
  assert_int_equal(ms__device_parse("cuda:0", &d), 0);
  assert_int_equal(d, 0);
  assert_int_equal(ms__device_parse("cuda:7", &d), 0);
  assert_int_equal(d, 7);
  assert_string_equal(ms__device_name(d, buf, sizeof buf), "cuda:7");
  const char *bad[] = {
      "", "gpu", "CPU", "cuda", "cuda:", "cuda:-1", "cuda:1x", "cuda: 1", "cuda:99999", "cuda:0:1"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    d = 123;
    assert_int_equal(ms__device_parse(bad[i], &d), MEMSLEEP_EINVAL);
    assert_int_equal(d, 123);
    assert_non_null(strstr(memsleep_last_error(), "cuda:N"));
  }
}

static void test_cuda_device_refused_with_the_reason_where_unusable(void **state) {
  (void)state;
  int rc = ms__device_check(0);
  if (rc == 0)
    skip(); /* a usable GPU: the GPU test covers this device */
  assert_int_equal(rc, MEMSLEEP_EUNAVAIL);
  char why[512];
  snprintf(why, sizeof why, "%s", memsleep_last_error());
  assert_non_null(strstr(why, "cuda:0"));
  assert_true(strstr(why, "no CUDA engine") || strstr(why, "driver") ||
              strstr(why, "no usable CUDA device"));

  tm_spec_t s = tm_default_spec();
  char dir[256];
  tm_make_dir(&s, dir, sizeof dir);
  ms__engine_options_t o = tc_options(dir);
  o.device = 0;
  ms__engine_t *e = NULL;
  assert_int_equal(ms__engine_create(&o, &e), MEMSLEEP_EUNAVAIL);
  assert_null(e);
  assert_string_equal(memsleep_last_error(), why);
  ms__model_t m;
  assert_int_equal(ms__model_load(dir, "weights", MEMSLEEP_BACKUP, 0, NULL, NULL, &m),
                   MEMSLEEP_EUNAVAIL);
  ms__kv_cache_t kv;
  assert_int_equal(ms__kv_create(&kv, 2, 8, 4, 10, 0), MEMSLEEP_EUNAVAIL);
  tm_remove_dir(dir);
  tc_assert_memsleep_empty();
}

static void test_negative_device_other_than_host_is_invalid(void **state) {
  (void)state;
  assert_int_equal(ms__device_check(-7), MEMSLEEP_EINVAL);
  assert_int_equal(ms__device_check(MEMSLEEP_HOST), 0);
  assert_ptr_equal(ms__compute_for(MEMSLEEP_HOST), &ms__compute_cpu);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_parse_and_name_devices),
      cmocka_unit_test(test_cuda_device_refused_with_the_reason_where_unusable),
      cmocka_unit_test(test_negative_device_other_than_host_is_invalid),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
