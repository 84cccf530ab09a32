/*
 * test_server_utf8.c - the server's UTF-8 handling: text sent in JSON is
 * always valid UTF-8, and streamed pieces add up to the whole.
 *
 * Model output is bytes; a token may end in the middle of a character. The
 * server holds such bytes back while streaming and replaces bytes that can
 * never be valid with U+FFFD. These tests pin the two rules a client sees:
 * the replacement (one U+FFFD per maximal invalid subpart), and that cutting
 * the same bytes anywhere, streaming them piece by piece, gives exactly the
 * text of the whole.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "server/json_util.h"

static void expect_text_n(const char *in, size_t n, const char *want, size_t want_len) {
  json_t *j = ms__json_text(in, n);
  assert_non_null(j);
  assert_int_equal(json_string_length(j), want_len);
  assert_memory_equal(json_string_value(j), want, want_len);
  json_decref(j);
}

/* Literal strings only: their sizes come from sizeof (NULs included). */
#define expect_text(in, want) expect_text_n(in, sizeof(in) - 1, want, sizeof(want) - 1)

static void test_valid_text_passes_unchanged(void **state) {
  (void)state;
  expect_text("plain", "plain");
  expect_text("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80",
              "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80");
  expect_text("a\0b", "a\0b");
}

static void test_invalid_bytes_become_one_replacement_each(void **state) {
  (void)state;
  expect_text("\xFF", "\xEF\xBF\xBD");
  expect_text("a\x80z", "a\xEF\xBF\xBDz");
  /* A cut sequence followed by ASCII: one U+FFFD for the maximal subpart. */
  expect_text("\xE2\x82"
              "A",
              "\xEF\xBF\xBD"
              "A");
  /* Overlong and surrogate encodings are invalid from their first byte. */
  expect_text("\xC0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD");
  expect_text("\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  /* A sequence cut by the end of the text. */
  expect_text("ok\xF0\x9F\x98", "ok\xEF\xBF\xBD");
}

static void test_complete_prefix_holds_only_cut_sequences(void **state) {
  (void)state;
  assert_int_equal(ms__utf8_complete_prefix("abc", 3), 3);
  assert_int_equal(ms__utf8_complete_prefix("ab\xC3", 3), 2);
  assert_int_equal(ms__utf8_complete_prefix("\xF0\x9F\x98", 3), 0);
  assert_int_equal(ms__utf8_complete_prefix("\xF0\x9F\x98\x80", 4), 4);
  /* Bytes that can never become valid are not held. */
  assert_int_equal(ms__utf8_complete_prefix("a\x80", 2), 2);
  assert_int_equal(ms__utf8_complete_prefix("\xE2\x82"
                                            "A",
                                            3),
                   3);
  assert_int_equal(ms__utf8_complete_prefix("\xFF", 1), 1);
  assert_int_equal(ms__utf8_complete_prefix("", 0), 0);
}

/* Streams bytes[0..n) cut at the given points the way the server does
 * (complete characters out, the rest held, everything at the end) and
 * returns the concatenated JSON text. */
static char *stream_pieces(const unsigned char *bytes, size_t n, const size_t *cuts, size_t ncuts,
                           size_t *out_len) {
  char *held = malloc(n + 1), *out = malloc(3 * n + 1);
  size_t held_len = 0, out_len_ = 0, from = 0;
  for (size_t c = 0; c <= ncuts; c++) {
    size_t to = c < ncuts ? cuts[c] : n;
    memcpy(held + held_len, bytes + from, to - from);
    held_len += to - from;
    from = to;
    size_t take = c < ncuts ? ms__utf8_complete_prefix(held, held_len) : held_len;
    json_t *j = ms__json_text(held, take);
    memcpy(out + out_len_, json_string_value(j), json_string_length(j));
    out_len_ += json_string_length(j);
    json_decref(j);
    memmove(held, held + take, held_len - take);
    held_len -= take;
  }
  free(held);
  *out_len = out_len_;
  return out;
}

static void test_streamed_pieces_add_up_to_the_whole(void **state) {
  (void)state;
  static const unsigned char alphabet[] = {'a',  ' ',  0xC3, 0xA9, 0xE2, 0x82, 0xAC, 0xF0,
                                           0x9F, 0x98, 0x80, 0xFF, 0xED, 0xA0, 0xC0};
  srand(7);
  for (int round = 0; round < 20000; round++) {
    unsigned char bytes[24];
    size_t n = (size_t)(rand() % 24);
    for (size_t i = 0; i < n; i++)
      bytes[i] = alphabet[rand() % (int)sizeof alphabet];
    size_t cuts[8], ncuts = n ? (size_t)(rand() % 8) : 0;
    for (size_t i = 0; i < ncuts; i++)
      cuts[i] = (size_t)(rand() % (int)(n + 1));
    for (size_t i = 1; i < ncuts; i++) /* sort the cut points */
      for (size_t k = i; k > 0 && cuts[k - 1] > cuts[k]; k--) {
        size_t t = cuts[k];
        cuts[k] = cuts[k - 1];
        cuts[k - 1] = t;
      }
    json_t *whole = ms__json_text((const char *)bytes, n);
    size_t len;
    char *streamed = stream_pieces(bytes, n, cuts, ncuts, &len);
    assert_int_equal(len, json_string_length(whole));
    assert_memory_equal(streamed, json_string_value(whole), len);
    free(streamed);
    json_decref(whole);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_text_passes_unchanged),
      cmocka_unit_test(test_invalid_bytes_become_one_replacement_each),
      cmocka_unit_test(test_complete_prefix_holds_only_cut_sequences),
      cmocka_unit_test(test_streamed_pieces_add_up_to_the_whole),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
