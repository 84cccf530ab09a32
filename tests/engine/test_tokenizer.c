/*
 * test_tokenizer.c - byte-level BPE: what memsleep-mkmodel writes, loading,
 * encoding, decoding and refusing bad files.
 *
 * Proves that the writer's tokenizer.json loads back with the vocabulary size
 * it promises and is byte-for-byte the same on every run; that any bytes
 * (ASCII, accents, CJK, emoji, whitespace runs, invalid UTF-8) survive
 * encode -> decode; that merges apply in rank order and give the exact ids of
 * hand-written files in both merge formats; that the pre-tokenizer keeps
 * pieces apart (GPT-2's pattern with Unicode classes, and Llama-3's and
 * Qwen2's when the file names them); that added tokens are matched whole and
 * longest first; that long inputs encode in linear-ish time; and that
 * malformed files and bad ids are MEMSLEEP_EINVAL with a message naming the
 * file or the id.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <jansson.h>

#include "engine/tokenizer.h"
#include "memsleep/memsleep.h"

#define TEST_DIR MEMSLEEP_BINARY_DIR

static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

/* A path for this test's scratch file name, under the build directory. */
static const char *scratch(const char *name) {
  static char path[4096];
  snprintf(path, sizeof path, "%s/test_tokenizer_%s.json", TEST_DIR, name);
  return path;
}

static ms__tokenizer_t *load_ok(const char *path) {
  ms__tokenizer_t *t = NULL;
  int rc = ms__tokenizer_load(path, &t);
  if (rc != 0)
    fail_msg("load %s: %d %s", path, rc, memsleep_last_error());
  return t;
}

/* The writer's tokenizer with n_merges merges and the three specials. */
static ms__tokenizer_t *written(int n_merges) {
  const char *path = scratch("written");
  assert_int_equal(ms__tokenizer_write_bytelevel(path, n_merges, specials, 3), 0);
  return load_ok(path);
}

static void encode_ok(const ms__tokenizer_t *t, const char *s, size_t len, int **ids, size_t *n) {
  int rc = ms__tokenizer_encode(t, s, len, ids, n);
  if (rc != 0)
    fail_msg("encode of %zu bytes: %d %s", len, rc, memsleep_last_error());
}

/* Encodes then decodes len bytes; asserts the same bytes come back and
 * returns the number of ids. */
static size_t round_trip(const ms__tokenizer_t *t, const char *s, size_t len) {
  int *ids = NULL;
  size_t n = 0, out_len = 0;
  char *out = NULL;
  encode_ok(t, s, len, &ids, &n);
  assert_non_null(ids);
  assert_int_equal(ms__tokenizer_decode(t, ids, n, &out, &out_len), 0);
  assert_int_equal(out_len, len);
  assert_memory_equal(out, s, len);
  assert_int_equal(out[len], '\0');
  free(ids);
  free(out);
  return n;
}

/* Asserts that s encodes to exactly the want ids (terminated by -1). */
static void assert_ids(const ms__tokenizer_t *t, const char *s, const int *want) {
  int *ids = NULL;
  size_t n = 0, nw = 0;
  encode_ok(t, s, strlen(s), &ids, &n);
  while (want[nw] >= 0)
    nw++;
  if (n != nw) {
    char got[512] = "";
    for (size_t i = 0; i < n && strlen(got) < 480; i++)
      snprintf(got + strlen(got), sizeof got - strlen(got), " %d", ids[i]);
    fail_msg("\"%s\": %zu ids (%s), want %zu", s, n, got, nw);
  }
  for (size_t i = 0; i < n; i++)
    if (ids[i] != want[i])
      fail_msg("\"%s\": id %zu is %d, want %d", s, i, ids[i], want[i]);
  free(ids);
}

/* ------------------------------------------------------------------------ */
/* Hand-written files. Their byte tokens have id == byte value (unlike
 * GPT-2's order), so that expected ids read easily: 'a' is 97, ' ' is 32. */

/* GPT-2's bytes_to_unicode, written out independently of the tokenizer. */
static void byte_char(int b, char out[3]) {
  int printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
  unsigned cp = (unsigned)b;
  if (!printable) {
    unsigned n = 0;
    for (int x = 0; x < b; x++)
      if (!((x >= '!' && x <= '~') || (x >= 0xa1 && x <= 0xac) || x >= 0xae))
        n++;
    cp = 256 + n;
  }
  if (cp < 0x80) {
    out[0] = (char)cp, out[1] = '\0';
  } else {
    out[0] = (char)(0xc0 | (cp >> 6)), out[1] = (char)(0x80 | (cp & 0x3f)), out[2] = '\0';
  }
}

/* Writes a tokenizer.json: the 256 byte tokens plus extra_vocab (a JSON
 * object text, may be NULL), merges (JSON array text), added (JSON array
 * text or NULL), model fields from model_extra (object text or NULL) and the
 * pre_tokenizer pre (object text, or NULL for a plain ByteLevel). */
static void write_tiny_pre(const char *path, const char *extra_vocab, const char *merges,
                           const char *added, const char *model_extra, const char *pre) {
  json_error_t err;
  json_t *vocab = json_object();
  for (int b = 0; b < 256; b++) {
    char ch[3];
    byte_char(b, ch);
    json_object_set_new(vocab, ch, json_integer(b));
  }
  if (extra_vocab) {
    json_t *x = json_loads(extra_vocab, 0, &err);
    assert_non_null(x);
    json_object_update(vocab, x);
    json_decref(x);
  }
  json_t *model = json_pack("{s:s, s:o, s:o}", "type", "BPE", "vocab", vocab, "merges",
                            json_loads(merges, 0, &err));
  assert_non_null(model);
  if (model_extra) {
    json_t *x = json_loads(model_extra, 0, &err);
    assert_non_null(x);
    json_object_update(model, x);
    json_decref(x);
  }
  json_t *pre_json = pre ? json_loads(pre, 0, &err)
                         : json_pack("{s:s, s:b}", "type", "ByteLevel", "add_prefix_space", 0);
  assert_non_null(pre_json);
  json_t *root = json_pack("{s:s, s:o, s:o, s:{s:s}, s:o}", "version", "1.0", "model", model,
                           "pre_tokenizer", pre_json, "decoder", "type", "ByteLevel",
                           "added_tokens", added ? json_loads(added, 0, &err) : json_array());
  assert_non_null(root);
  assert_int_equal(json_dump_file(root, path, JSON_INDENT(1)), 0);
  json_decref(root);
}

static void write_tiny(const char *path, const char *extra_vocab, const char *merges,
                       const char *added, const char *model_extra) {
  write_tiny_pre(path, extra_vocab, merges, added, model_extra, NULL);
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

/* Asserts that loading path fails with EINVAL and a message naming the file
 * and containing what. */
static void assert_load_einval(const char *path, const char *what) {
  ms__tokenizer_t *t = (ms__tokenizer_t *)&t; /* must be set to NULL */
  int rc = ms__tokenizer_load(path, &t);
  const char *msg = memsleep_last_error();
  if (rc != MEMSLEEP_EINVAL)
    fail_msg("load %s: %d, want EINVAL (%s)", path, rc, msg);
  assert_null(t);
  if (!strstr(msg, path) || !strstr(msg, what))
    fail_msg("message \"%s\" should name %s and say \"%s\"", msg, path, what);
}

/* ------------------------------------------------------------------------ */
/* The writer.                                                              */

static void test_written_file_loads_back_with_promised_vocab_size(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(300);
  assert_int_equal(ms__tokenizer_vocab_size(t), 256 + 300 + 3);
  /* GPT-2 byte order: "!" is id 0, byte 0x00 is 188, the space 220. */
  const int ids[] = {0, 188, 220};
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(ms__tokenizer_decode(t, ids, 3, &out, &len), 0);
  assert_int_equal(len, 3);
  assert_memory_equal(out, "!\0 ", 3);
  free(out);
  /* The specials come last, in order, and decode to themselves. */
  const int sp[] = {556, 557, 558};
  assert_int_equal(ms__tokenizer_decode(t, sp, 3, &out, &len), 0);
  assert_string_equal(out, "<|endoftext|><|im_start|><|im_end|>");
  free(out);
  ms__tokenizer_free(t);

  /* No merges and no specials is a valid file too, and so are many merges
   * (more than the built-in text offers). */
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("bare"), 0, NULL, 0), 0);
  t = load_ok(scratch("bare"));
  assert_int_equal(ms__tokenizer_vocab_size(t), 256);
  assert_int_equal(round_trip(t, "hello", 5), 5);
  ms__tokenizer_free(t);
  t = written(20000);
  assert_int_equal(ms__tokenizer_vocab_size(t), 256 + 20000 + 3);
  ms__tokenizer_free(t);
}

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static void test_writer_is_deterministic(void **state) {
  (void)state;
  size_t na, nb;
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("det_a"), 1000, specials, 3), 0);
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("det_b"), 1000, specials, 3), 0);
  char *a = slurp(scratch("det_a"), &na), *b = slurp(scratch("det_b"), &nb);
  assert_int_equal(na, nb);
  assert_memory_equal(a, b, na);
  free(a);
  free(b);
}

static void test_writer_refuses_bad_arguments(void **state) {
  (void)state;
  const char *dup[] = {"<s>", "<s>"};
  const char *empty[] = {""};
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("bad"), -1, NULL, 0), MEMSLEEP_EINVAL);
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("bad"), 10, dup, 2), MEMSLEEP_EINVAL);
  assert_non_null(strstr(memsleep_last_error(), "<s>"));
  assert_int_equal(ms__tokenizer_write_bytelevel(scratch("bad"), 10, empty, 1), MEMSLEEP_EINVAL);
  assert_int_equal(ms__tokenizer_write_bytelevel(NULL, 10, NULL, 0), MEMSLEEP_EINVAL);
  assert_int_equal(ms__tokenizer_write_bytelevel("/nonexistent-dir/x/tokenizer.json", 10, NULL, 0),
                   MEMSLEEP_EBACKEND);
  assert_non_null(strstr(memsleep_last_error(), "/nonexistent-dir/x/tokenizer.json"));
}

/* ------------------------------------------------------------------------ */
/* Round trips.                                                             */

static void test_round_trip_keeps_every_byte(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(500);
  static const char *const texts[] = {
      "Hello, world! The quick brown fox jumps over the lazy dog.",
      "It's 3.14159 o'clock; they're here, we'll see -- isn't it?",
      "caf\xc3\xa9 na\xc3\xafve r\xc3\xa9sum\xc3\xa9 \xc3\x85ngstr\xc3\xb6m",
      "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e\xe3\x81\xae\xe6\x96\x87\xe7\xab\xa0\xe3\x80\x82 "
      "\xe4\xb8\xad\xe6\x96\x87",
      "emoji \xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd and \xf0\x9f\x87\xab\xf0\x9f\x87\xb7",
      "   leading, trailing   ",
      "tabs\t\tand  \t spaces \n\n\n  mixed\r\n\r\nlines\n",
      "\n",
      " ",
      "a\x0b\x0c"
      "b",
      "    def main():\n        return 0\n",
      "'s 't 're 've 'm 'll 'd ''' 'x",
  };
  for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
    round_trip(t, texts[i], strlen(texts[i]));
  /* The empty string: no ids, and decoding nothing gives "". */
  assert_int_equal(round_trip(t, "", 0), 0);
  /* Invalid UTF-8: stray continuation bytes, a truncated sequence, overlong
   * forms, surrogates, 0xff, a NUL inside. */
  const char bad[] = "ok\x80\xbf\xc3 \xe6\x97 \xc0\xaf \xed\xa0\x80 \xff\xfe\x00z\xf8\x88";
  round_trip(t, bad, sizeof bad - 1);
  /* All 256 byte values, in order and reversed. */
  char all[512];
  for (int i = 0; i < 256; i++)
    all[i] = (char)i, all[511 - i] = (char)i;
  round_trip(t, all, sizeof all);
  ms__tokenizer_free(t);
}

static void test_round_trip_of_random_bytes_and_long_pieces(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(2000);
  size_t n = 1 << 20;
  char *buf = malloc(n);
  assert_non_null(buf);
  uint64_t x = 42;
  for (size_t i = 0; i < n; i++) {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    buf[i] = (char)(x >> 56);
  }
  round_trip(t, buf, n);
  /* One 1 MiB piece of letters, one of spaces, one of punctuation. */
  const char fills[] = {'e', ' ', '.'};
  for (size_t f = 0; f < 3; f++) {
    memset(buf, fills[f], n);
    clock_t c0 = clock();
    round_trip(t, buf, n);
    double s = (double)(clock() - c0) / CLOCKS_PER_SEC;
    if (s > 20.0)
      fail_msg("a 1 MiB piece of '%c' took %.1f s", fills[f], s);
  }
  free(buf);
  ms__tokenizer_free(t);
}

/* ------------------------------------------------------------------------ */
/* Merges.                                                                  */

static void test_merges_make_frequent_words_shorter(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(500);
  const char *s = "the people think that the information and the communication are interesting";
  size_t n = round_trip(t, s, strlen(s));
  if (n * 3 > strlen(s))
    fail_msg("%zu ids for %zu bytes: the merges do not apply", n, strlen(s));
  /* " the" is one token. */
  int *ids = NULL;
  size_t k = 0;
  encode_ok(t, " the", 4, &ids, &k);
  assert_int_equal(k, 1);
  free(ids);
  ms__tokenizer_free(t);
}

static void test_merges_apply_by_rank_with_exact_ids(void **state) {
  (void)state;
  const char *path = scratch("rank");
  /* "a b" (rank 0) before "b c" (rank 1): abc -> ab c. */
  write_tiny(path, "{\"ab\": 256, \"bc\": 257, \"abc\": 258}", "[\"a b\", \"b c\"]", NULL, NULL);
  ms__tokenizer_t *t = load_ok(path);
  assert_ids(t, "abc", (const int[]){256, 'c', -1});
  assert_ids(t, "bca", (const int[]){257, 'a', -1});
  ms__tokenizer_free(t);
  /* Swapped ranks: abc -> a bc. */
  write_tiny(path, "{\"ab\": 256, \"bc\": 257, \"abc\": 258}", "[\"b c\", \"a b\"]", NULL, NULL);
  t = load_ok(path);
  assert_ids(t, "abc", (const int[]){'a', 257, -1});
  ms__tokenizer_free(t);
  /* A third merge builds on the first: abc -> ab c -> abc; "abcabc" is one
   * piece; leftmost first among equal ranks: "aaa" -> aa a. */
  write_tiny(path, "{\"ab\": 256, \"bc\": 257, \"abc\": 258, \"aa\": 259}",
             "[\"a b\", \"b c\", \"ab c\", \"a a\"]", NULL, NULL);
  t = load_ok(path);
  assert_ids(t, "abc", (const int[]){258, -1});
  assert_ids(t, "abcabc", (const int[]){258, 258, -1});
  assert_ids(t, "aaa", (const int[]){259, 'a', -1});
  assert_ids(t, "xabcx", (const int[]){'x', 258, 'x', -1});
  ms__tokenizer_free(t);
}

static void test_newer_pair_format_gives_the_same_ids(void **state) {
  (void)state;
  const char *path = scratch("pairs");
  write_tiny(path, "{\"ab\": 256, \"bc\": 257, \"abc\": 258, \"\\u0120abc\": 260}",
             "[[\"a\", \"b\"], [\"b\", \"c\"], [\"ab\", \"c\"], [\"\\u0120\", \"abc\"]]", NULL,
             NULL);
  ms__tokenizer_t *t = load_ok(path);
  assert_ids(t, "abc abc", (const int[]){258, 260, -1});
  ms__tokenizer_free(t);
}

static void test_merges_never_cross_pieces(void **state) {
  (void)state;
  const char *path = scratch("pieces");
  /* Merges that would join across the pre-tokenizer's boundaries. */
  write_tiny(path,
             "{\"\\u0120\\u0120\": 256, \"a\\u0120\": 257, \"\\u0120b\": 258, \"'s\": 259, "
             "\"1a\": 260, \"a.\": 261}",
             "[\"\\u0120 \\u0120\", \"a \\u0120\", \"\\u0120 b\", \"' s\", \"1 a\", \"a .\"]", NULL,
             NULL);
  ms__tokenizer_t *t = load_ok(path);
  /* "a   b": pieces "a", "  ", " b" (the last space goes with the word). */
  assert_ids(t, "a   b", (const int[]){'a', 256, 258, -1});
  /* Trailing spaces stay one piece. */
  assert_ids(t, "a  ", (const int[]){'a', 256, -1});
  /* Contractions split off; letters, digits and punctuation apart. */
  assert_ids(t, "it's", (const int[]){'i', 't', 259, -1});
  assert_ids(t, "1a.", (const int[]){'1', 'a', '.', -1});
  /* A newline before a word is its own piece; the space before "b" joins. */
  assert_ids(t, "\n b", (const int[]){'\n', 258, -1});
  ms__tokenizer_free(t);
}

/* GPT-2's pattern with real Unicode classes: accented letters join the
 * word, an emoji is punctuation-like and splits from it. */
static void test_unicode_letters_join_and_emoji_split(void **state) {
  (void)state;
  const char *path = scratch("unicode");
  /* 0xf0, 0xc3, 0xe3 are "\u00f0", "\u00c3", "\u00e3" in the byte alphabet. */
  write_tiny(path, "{\"a\\u00f0\": 256, \"a\\u00c3\": 257, \"a\\u00e3\": 258}",
             "[\"a \\u00f0\", \"a \\u00c3\", \"a \\u00e3\"]", NULL, NULL);
  ms__tokenizer_t *t = load_ok(path);
  assert_ids(t, "a\xc3\xa9", (const int[]){257, 0xa9, -1});
  assert_ids(t, "a\xf0\x9f\x98\x80", (const int[]){'a', 0xf0, 0x9f, 0x98, 0x80, -1});
  /* Hiragana "a" (U+3042) is a letter; the ideographic space (U+3000) is
   * white space, so "a" stays apart from it. */
  assert_ids(t, "a\xe3\x81\x82", (const int[]){258, 0x81, 0x82, -1});
  assert_ids(t, "a\xe3\x80\x80", (const int[]){'a', 0xe3, 0x80, 0x80, -1});
  /* A stray byte counts as a letter. */
  assert_ids(t, "a\xc3", (const int[]){257, -1});
  ms__tokenizer_free(t);
}

#define SPLIT_PRE(digits)                                                                          \
  "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": "   \
  "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}" digits         \
  "| ?[^\\\\s\\\\p{L}\\\\p{N}]+[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, "      \
  "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "                     \
  "\"add_prefix_space\": false, \"use_regex\": false}]}"

/* The Llama-3 and Qwen2 Split patterns are recognised and followed: digits
 * by threes or one by one, contractions in any case, punctuation taking the
 * newlines after it. */
static void test_llama3_and_qwen2_split_patterns(void **state) {
  (void)state;
  const char *path = scratch("split");
  const char *vocab = "{\"12\": 256, \"123\": 257, \"34\": 258, \"'S\": 259, \".\\u010a\": 260}";
  const char *merges = "[\"3 4\", \"1 2\", \"12 3\", \"' S\", \". \\u010a\"]";
  write_tiny(path, vocab, merges, NULL, NULL); /* GPT-2: "1234" is one piece */
  ms__tokenizer_t *t = load_ok(path);
  assert_ids(t, "1234", (const int[]){256, 258, -1});
  assert_ids(t, "IT'S", (const int[]){'I', 'T', '\'', 'S', -1});
  assert_ids(t, "a.\nb", (const int[]){'a', '.', '\n', 'b', -1});
  ms__tokenizer_free(t);
  write_tiny_pre(path, vocab, merges, NULL, NULL, SPLIT_PRE("{1,3}"));
  t = load_ok(path);
  assert_ids(t, "1234", (const int[]){257, '4', -1});
  assert_ids(t, "IT'S", (const int[]){'I', 'T', 259, -1});
  assert_ids(t, "a.\nb", (const int[]){'a', 260, 'b', -1});
  ms__tokenizer_free(t);
  write_tiny_pre(path, vocab, merges, NULL, NULL, SPLIT_PRE(""));
  t = load_ok(path);
  assert_ids(t, "1234", (const int[]){'1', '2', '3', '4', -1});
  assert_ids(t, "IT'S", (const int[]){'I', 'T', 259, -1});
  ms__tokenizer_free(t);
}

static void test_ignore_merges_takes_whole_vocab_words(void **state) {
  (void)state;
  const char *path = scratch("ignore");
  write_tiny(path, "{\"abc\": 256}", "[]", NULL, "{\"ignore_merges\": true}");
  ms__tokenizer_t *t = load_ok(path);
  assert_ids(t, "abc abcd", (const int[]){256, ' ', 'a', 'b', 'c', 'd', -1});
  ms__tokenizer_free(t);
  write_tiny(path, "{\"abc\": 256}", "[]", NULL, NULL);
  t = load_ok(path);
  assert_ids(t, "abc", (const int[]){'a', 'b', 'c', -1});
  ms__tokenizer_free(t);
}

static void test_long_piece_merges_in_linear_time(void **state) {
  (void)state;
  const char *path = scratch("long");
  write_tiny(path, "{\"aa\": 256, \"aaaa\": 257, \"aaaaaaaa\": 258}",
             "[\"a a\", \"aa aa\", \"aaaa aaaa\"]", NULL, NULL);
  ms__tokenizer_t *t = load_ok(path);
  size_t n = (1 << 20) + 3;
  char *buf = malloc(n);
  assert_non_null(buf);
  memset(buf, 'a', n);
  int *ids = NULL;
  size_t k = 0;
  clock_t c0 = clock();
  encode_ok(t, buf, n, &ids, &k);
  double s = (double)(clock() - c0) / CLOCKS_PER_SEC;
  assert_int_equal(k, (1 << 17) + 2);
  for (size_t i = 0; i < (1 << 17); i++)
    assert_int_equal(ids[i], 258);
  assert_int_equal(ids[1 << 17], 256);
  assert_int_equal(ids[(1 << 17) + 1], 'a');
  if (s > 20.0)
    fail_msg("1 MiB of 'a' took %.1f s", s);
  free(ids);
  free(buf);
  ms__tokenizer_free(t);
}

/* ------------------------------------------------------------------------ */
/* Added tokens.                                                            */

static void test_added_tokens_match_whole(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(300);
  const char *s = "hello<|endoftext|>world<|im_start|>user\n<|im_end|>";
  int *ids = NULL;
  size_t n = 0, seen[3] = {0};
  encode_ok(t, s, strlen(s), &ids, &n);
  for (size_t i = 0; i < n; i++)
    if (ids[i] >= 556)
      seen[ids[i] - 556]++;
  assert_int_equal(seen[0], 1);
  assert_int_equal(seen[1], 1);
  assert_int_equal(seen[2], 1);
  free(ids);
  round_trip(t, s, strlen(s));
  /* Only the whole text is the special: a prefix is ordinary text. */
  encode_ok(t, "<|endoftext|", 12, &ids, &n);
  for (size_t i = 0; i < n; i++)
    assert_true(ids[i] < 556);
  free(ids);
  /* Just the special. */
  encode_ok(t, "<|endoftext|>", 13, &ids, &n);
  assert_int_equal(n, 1);
  assert_int_equal(ids[0], 556);
  free(ids);
  ms__tokenizer_free(t);
}

static void test_added_tokens_longest_match_and_vocab_size(void **state) {
  (void)state;
  const char *path = scratch("added");
  write_tiny(path, "{\"ab\": 256}", "[\"a b\"]",
             "[{\"id\": 300, \"content\": \"<s>\", \"special\": true},"
             " {\"id\": 301, \"content\": \"<s>ab\", \"special\": false},"
             " {\"id\": 500, \"content\": \"\\u00e9t\\u00e9\", \"special\": false}]",
             NULL);
  ms__tokenizer_t *t = load_ok(path);
  assert_int_equal(ms__tokenizer_vocab_size(t), 501);
  assert_ids(t, "<s>abab<s>a", (const int[]){301, 256, 300, 'a', -1});
  assert_ids(t, "\xc3\xa9t\xc3\xa9!", (const int[]){500, '!', -1});
  /* Ids between the vocab and the added tokens have no token. */
  char *out = NULL;
  size_t len = 0;
  assert_int_equal(ms__tokenizer_decode(t, (const int[]){257}, 1, &out, &len), MEMSLEEP_EINVAL);
  assert_int_equal(ms__tokenizer_decode(t, (const int[]){500, 300}, 2, &out, &len), 0);
  assert_string_equal(out, "\xc3\xa9t\xc3\xa9<s>");
  free(out);
  ms__tokenizer_free(t);
}

/* ------------------------------------------------------------------------ */
/* Bad input.                                                               */

static void test_decode_of_bad_id_is_einval_naming_it(void **state) {
  (void)state;
  ms__tokenizer_t *t = written(300);
  char *out = (char *)&out;
  size_t len = 0;
  const int big[] = {10, 559};
  assert_int_equal(ms__tokenizer_decode(t, big, 2, &out, &len), MEMSLEEP_EINVAL);
  assert_non_null(strstr(memsleep_last_error(), "559"));
  const int neg[] = {-7};
  assert_int_equal(ms__tokenizer_decode(t, neg, 1, &out, &len), MEMSLEEP_EINVAL);
  assert_non_null(strstr(memsleep_last_error(), "-7"));
  assert_int_equal(ms__tokenizer_decode(t, NULL, 0, &out, &len), 0);
  assert_int_equal(len, 0);
  assert_string_equal(out, "");
  free(out);
  int *ids = NULL;
  size_t n = 0;
  assert_int_equal(ms__tokenizer_encode(t, NULL, 3, &ids, &n), MEMSLEEP_EINVAL);
  ms__tokenizer_free(t);
}

static void test_malformed_files_are_einval_naming_the_file(void **state) {
  (void)state;
  const char *path = scratch("malformed");
  write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {");
  assert_load_einval(path, "JSON");
  write_text(path, "[1, 2, 3]");
  assert_load_einval(path, "object");
  write_text(path, "{\"version\": \"1.0\", \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
  assert_load_einval(path, "model");
  write_text(path, "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {\"a\": 0}}, "
                   "\"pre_tokenizer\": {\"type\": \"BertPreTokenizer\"}}");
  assert_load_einval(path, "unsupported tokenizer");
  write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                   "\"pre_tokenizer\": {\"type\": \"Metaspace\"}, \"decoder\": {\"type\": "
                   "\"Metaspace\"}}");
  assert_load_einval(path, "unsupported tokenizer");
  write_tiny(path, NULL, "[]", NULL, "{\"continuing_subword_prefix\": \"##\"}");
  assert_load_einval(path, "unsupported tokenizer");
  write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": [\"a\"], \"merges\": []}, "
                   "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
  assert_load_einval(path, "vocab");
  write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": -1}, \"merges\": []}, "
                   "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
  assert_load_einval(path, "vocab");
  write_text(path, "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
                   "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}}");
  assert_load_einval(path, "byte");
  write_tiny(path, NULL, "[\"a zz\"]", NULL, NULL);
  assert_load_einval(path, "unknown token \"zz\"");
  write_tiny(path, NULL, "[\"a b\"]", NULL, NULL);
  assert_load_einval(path, "not in the vocab");
  write_tiny(path, "{\"ab\": 256}", "[\"a b c\"]", NULL, NULL);
  assert_load_einval(path, "merges[0]");
  write_tiny(path, "{\"ab\": 256}", "[[\"a\"]]", NULL, NULL);
  assert_load_einval(path, "merges[0]");
  write_tiny(path, "{\"ab\": 256}", "[\"a b\"]", "[{\"content\": \"<s>\"}]", NULL);
  assert_load_einval(path, "added_tokens[0]");
  write_tiny(path, "{\"ab\": 65}", "[]", NULL, NULL);
  assert_load_einval(path, "id 65");
  assert_load_einval(scratch("does_not_exist"), "JSON");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_written_file_loads_back_with_promised_vocab_size),
      cmocka_unit_test(test_writer_is_deterministic),
      cmocka_unit_test(test_writer_refuses_bad_arguments),
      cmocka_unit_test(test_round_trip_keeps_every_byte),
      cmocka_unit_test(test_round_trip_of_random_bytes_and_long_pieces),
      cmocka_unit_test(test_merges_make_frequent_words_shorter),
      cmocka_unit_test(test_merges_apply_by_rank_with_exact_ids),
      cmocka_unit_test(test_newer_pair_format_gives_the_same_ids),
      cmocka_unit_test(test_merges_never_cross_pieces),
      cmocka_unit_test(test_unicode_letters_join_and_emoji_split),
      cmocka_unit_test(test_llama3_and_qwen2_split_patterns),
      cmocka_unit_test(test_ignore_merges_takes_whole_vocab_words),
      cmocka_unit_test(test_long_piece_merges_in_linear_time),
      cmocka_unit_test(test_added_tokens_match_whole),
      cmocka_unit_test(test_added_tokens_longest_match_and_vocab_size),
      cmocka_unit_test(test_decode_of_bad_id_is_einval_naming_it),
      cmocka_unit_test(test_malformed_files_are_einval_naming_the_file),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
