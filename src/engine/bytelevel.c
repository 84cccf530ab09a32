/*
 * bytelevel.c - GPT-2's byte alphabet, UTF-8 decoding and the hand-written
 * pre-tokenizer patterns (GPT-2, Llama-3, Qwen2) of byte-level BPE.
 *
 * The patterns are implemented as their regular expressions behave, with
 * \p{L}, \p{N} and \s taken from unicode_class.c; tokenizer.c's opening
 * comment lists where the result can differ from the reference.
 */
#include "engine/bytelevel.h"

#include <string.h>

#include "engine/unicode_class.h"

/* ------------------------------------------------------------------------ */
/* The GPT-2 byte alphabet (bytes_to_unicode), in closed form.              */

/* The code point GPT-2's bytes_to_unicode gives byte b: printable Latin-1
 * bytes map to themselves, the other 68 to U+0100.. in byte order. */
uint32_t ms__bytelevel_cp(unsigned char b) {
  if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
    return b;
  if (b <= 32)
    return 256u + b;
  if (b <= 160)
    return 289u + (uint32_t)(b - 127);
  return 323u; /* 173, the soft hyphen */
}

/* The inverse of ms__bytelevel_cp(): the byte, or -1 for a code point outside the
 * alphabet. */
int ms__bytelevel_byte(uint32_t cp) {
  if (cp < 256)
    return (cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || cp >= 174 ? (int)cp : -1;
  if (cp <= 288)
    return (int)(cp - 256);
  if (cp <= 322)
    return (int)(cp - 289 + 127);
  if (cp == 323)
    return 173;
  return -1;
}

/* Byte b's position in bytes_to_unicode's list (printable bytes first, then
 * the rest), which is its id in GPT-2's vocabulary and in the writer's. */
int ms__bytelevel_index(unsigned char b) {
  uint32_t cp = ms__bytelevel_cp(b);
  if (cp >= 256)
    return 188 + (int)(cp - 256);
  if (b <= 126)
    return b - 33;
  if (b <= 172)
    return 94 + (b - 161);
  return 106 + (b - 174);
}

/* Writes the alphabet character of each of len bytes, UTF-8 encoded, to out
 * (room for 2 * len bytes); returns the length written. */
size_t ms__bytelevel_map(const unsigned char *in, size_t len, char *out) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    uint32_t cp = ms__bytelevel_cp(in[i]);
    if (cp < 0x80) {
      out[o++] = (char)cp;
    } else {
      out[o++] = (char)(0xc0 | (cp >> 6));
      out[o++] = (char)(0x80 | (cp & 0x3f));
    }
  }
  return o;
}

/* Decodes the UTF-8 character at s[*i] (n bytes in all) into *cp and advances
 * *i. Returns 0, or -1 (not advancing) on a malformed sequence. */
int ms__utf8_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp) {
  unsigned char c = s[*i];
  size_t need;
  uint32_t v;
  if (c < 0x80) {
    *cp = c;
    (*i)++;
    return 0;
  } else if (c >= 0xc2 && c <= 0xdf) {
    need = 1, v = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    need = 2, v = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    need = 3, v = c & 0x07;
  } else {
    return -1;
  }
  if (n - *i <= need)
    return -1;
  for (size_t k = 1; k <= need; k++) {
    if ((s[*i + k] & 0xc0) != 0x80)
      return -1;
    v = (v << 6) | (s[*i + k] & 0x3f);
  }
  if ((need == 2 && v < 0x800) || (need == 3 && (v < 0x10000 || v > 0x10ffff)) ||
      (v >= 0xd800 && v <= 0xdfff))
    return -1;
  *cp = v;
  *i += need + 1;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The pre-tokenizers, by hand.                                             */

/* The Split patterns recognised, as written in tokenizer.json. */
static const char llama3_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char qwen2_pattern[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* The class (MS__UC_*) of the character at s[i] (i < n), and its length in
 * bytes in *len. A byte that does not start a valid UTF-8 sequence is a
 * one-byte letter: the reference tokenizers only ever see valid UTF-8, and
 * as a letter a stray byte stays in the piece of its neighbours. */
static int char_at(const unsigned char *s, size_t n, size_t i, size_t *len) {
  size_t j = i;
  uint32_t cp;
  if (s[i] < 0x80) {
    *len = 1;
    return ms__unicode_class(s[i]);
  }
  if (ms__utf8_next(s, n, &j, &cp) != 0) {
    *len = 1;
    return MS__UC_LETTER;
  }
  *len = j - i;
  return ms__unicode_class(cp);
}

/* Returns the end of the run of characters of class cls starting at s[j],
 * taking at most max characters. */
static size_t run_of(const unsigned char *s, size_t n, size_t j, int cls, size_t max) {
  size_t len;
  for (size_t k = 0; k < max && j < n && char_at(s, n, j, &len) == cls; k++)
    j += len;
  return j;
}

/* Returns the length of the contraction ('s 't 're 've 'm 'll 'd) at s[i],
 * or 0; fold: ASCII case-insensitively, as Llama-3's (?i:...). */
static size_t contraction(const unsigned char *s, size_t n, size_t i, int fold) {
  if (s[i] != '\'' || i + 1 >= n)
    return 0;
  unsigned char c = s[i + 1], d = i + 2 < n ? s[i + 2] : 0;
  if (fold) {
    c = (unsigned char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    d = (unsigned char)(d >= 'A' && d <= 'Z' ? d + 32 : d);
  }
  if (c == 's' || c == 't' || c == 'm' || c == 'd')
    return 2;
  if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l'))
    return 3;
  return 0;
}

/* The end of the white-space run at s[i] under \s+(?!\S)|\s+: all of it at
 * the end of the text, else all but its last character (which goes with
 * the following word) unless that would leave nothing. *last_nl is set to
 * the end of the run's last \r or \n, or i when it has none. */
static size_t space_run(const unsigned char *s, size_t n, size_t i, size_t *last_nl) {
  size_t j = i, last = i, len;
  *last_nl = i;
  while (j < n && char_at(s, n, j, &len) == MS__UC_SPACE) {
    if (s[j] == '\r' || s[j] == '\n')
      *last_nl = j + 1;
    last = j;
    j += len;
  }
  return j < n && last > i ? last : j;
}

/* Returns the end of the piece that starts at s[i] (i < n) under GPT-2's
 * pattern: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|
 * \s+(?!\S)|\s+ -- the match of the leftmost alternative that matches. */
static size_t pretok_gpt2(const unsigned char *s, size_t n, size_t i) {
  size_t k = contraction(s, n, i, 0), len, nl;
  if (k)
    return i + k;
  size_t j = i;
  int cls = char_at(s, n, j, &len);
  if (s[j] == ' ' && j + 1 < n && char_at(s, n, j + 1, &len) != MS__UC_SPACE)
    cls = char_at(s, n, ++j, &len); /* the optional leading space of " ?X+" */
  if (cls != MS__UC_SPACE)
    return run_of(s, n, j, cls, SIZE_MAX);
  return space_run(s, n, i, &nl);
}

/* Returns the end of the piece that starts at s[i] (i < n) under Llama-3's
 * pattern (max_digits 3) or Qwen2's (max_digits 1):
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 * ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t pretok_llama3(const unsigned char *s, size_t n, size_t i, size_t max_digits) {
  size_t k = contraction(s, n, i, 1), len0, len1, nl;
  if (k)
    return i + k;
  int c0 = char_at(s, n, i, &len0);
  if (c0 == MS__UC_LETTER)
    return run_of(s, n, i, MS__UC_LETTER, SIZE_MAX);
  if (c0 != MS__UC_NUMBER && s[i] != '\r' && s[i] != '\n' && i + len0 < n &&
      char_at(s, n, i + len0, &len1) == MS__UC_LETTER)
    return run_of(s, n, i + len0, MS__UC_LETTER, SIZE_MAX);
  if (c0 == MS__UC_NUMBER)
    return run_of(s, n, i, MS__UC_NUMBER, max_digits);
  size_t j = i;
  if (s[i] == ' ' && i + 1 < n && char_at(s, n, i + 1, &len1) == MS__UC_OTHER)
    j = i + 1;
  if (char_at(s, n, j, &len1) == MS__UC_OTHER) {
    j = run_of(s, n, j, MS__UC_OTHER, SIZE_MAX);
    while (j < n && (s[j] == '\r' || s[j] == '\n'))
      j++;
    return j;
  }
  size_t end = space_run(s, n, i, &nl);
  return nl > i ? nl : end; /* \s*[\r\n]+ first */
}

ms__pretok_t ms__pretok_of_regex(const char *regex) {
  if (strcmp(regex, llama3_pattern) == 0)
    return MS__PRETOK_LLAMA3;
  if (strcmp(regex, qwen2_pattern) == 0)
    return MS__PRETOK_QWEN2;
  return MS__PRETOK_GPT2;
}

size_t ms__pretok_next(ms__pretok_t kind, const unsigned char *s, size_t n, size_t i) {
  switch (kind) {
  case MS__PRETOK_LLAMA3:
    return pretok_llama3(s, n, i, 3);
  case MS__PRETOK_QWEN2:
    return pretok_llama3(s, n, i, 1);
  case MS__PRETOK_NONE:
    return n;
  default:
    return pretok_gpt2(s, n, i);
  }
}
