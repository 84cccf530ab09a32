/*
 * test_lb_utf8.c - the load balancer's U+FFFD sanitizer and the capped
 * buffer that keeps at most 500 bytes of a worker's error body.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "lb/capture.h"
#include "lb/utf8.h"

/* Sanitizes in[0..n) and checks the result is exactly want. */
static void check(const char *in, size_t n, const char *want) {
  size_t len = 0;
  char *out = ms__utf8_sanitize(in, n, &len);
  assert_non_null(out);
  assert_int_equal(len, strlen(want));
  assert_memory_equal(out, want, len);
  free(out);
}

#define R "\xEF\xBF\xBD" /* U+FFFD */

static void valid_text_is_unchanged(void **state) {
  (void)state;
  check("hello", 5, "hello");
  check("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80", 14,
        "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  check("", 0, "");
}

static void each_invalid_byte_becomes_one_replacement(void **state) {
  (void)state;
  check("\xFF\xFE", 2, R R);
  check("a\x80z", 3, "a" R "z");
  check("\xC0\xAF", 2, R R);       /* overlong lead bytes are never valid */
  check("\xED\xA0\x80", 3, R R R); /* a surrogate */
  check("\xF5\x80", 2, R R);       /* past U+10FFFF */
}

static void a_truncated_sequence_is_one_replacement(void **state) {
  (void)state;
  check("\xE2\x82", 2, R);      /* cut at the end (the 500-byte cap) */
  check("\xE2\x82z", 3, R "z"); /* maximal subpart, then the next char */
  check("\xF0\x9F\x98", 3, R);
  check("\xF0\x9F\x98\xE2\x82\xAC", 6, R "\xE2\x82\xAC");
}

static void capture_keeps_at_most_cap_bytes(void **state) {
  (void)state;
  ms__capture_t c;
  ms__capture_init(&c, MS__LB_DETAIL_MAX);
  char chunk[300];
  memset(chunk, 'x', sizeof chunk);
  assert_int_equal(ms__capture_append(&c, chunk, sizeof chunk), 300);
  assert_int_equal(c.truncated, 0);
  assert_int_equal(ms__capture_append(&c, chunk, sizeof chunk), 200);
  assert_int_equal(c.truncated, 1);
  assert_int_equal(ms__capture_append(&c, chunk, sizeof chunk), 0);
  assert_int_equal(c.len, 500);
  assert_int_equal(c.buf[500], '\0');
  ms__capture_free(&c);
  assert_null(c.buf);
  assert_int_equal(c.len, 0);
}

static void capture_exactly_at_cap_is_not_truncated(void **state) {
  (void)state;
  ms__capture_t c;
  ms__capture_init(&c, 500);
  char chunk[500];
  memset(chunk, 'y', sizeof chunk);
  assert_int_equal(ms__capture_append(&c, chunk, sizeof chunk), 500);
  assert_int_equal(c.truncated, 0);
  ms__capture_free(&c);
}

static void capture_grows_a_large_cap(void **state) {
  (void)state;
  ms__capture_t c;
  ms__capture_init(&c, MS__LB_ANSWER_MAX);
  char chunk[1000];
  memset(chunk, 'z', sizeof chunk);
  size_t total = 0;
  for (int i = 0; i < 100; i++)
    total += ms__capture_append(&c, chunk, sizeof chunk);
  assert_int_equal(total, MS__LB_ANSWER_MAX);
  assert_int_equal(c.len, MS__LB_ANSWER_MAX);
  assert_int_equal(c.truncated, 1);
  ms__capture_free(&c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(valid_text_is_unchanged),
      cmocka_unit_test(each_invalid_byte_becomes_one_replacement),
      cmocka_unit_test(a_truncated_sequence_is_one_replacement),
      cmocka_unit_test(capture_keeps_at_most_cap_bytes),
      cmocka_unit_test(capture_exactly_at_cap_is_not_truncated),
      cmocka_unit_test(capture_grows_a_large_cap),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
