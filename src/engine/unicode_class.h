/*
 * unicode_class.h - which class of GPT-2's pre-tokenizer pattern a code
 * point falls in: \p{L}, \p{N}, \s or none of them.
 *
 * The tokenizer's hand-written pre-tokenizer asks this for every character
 * beyond ASCII; the table behind it is generated (see unicode_class.c).
 */
#ifndef MEMSLEEP_ENGINE_UNICODE_CLASS_H
#define MEMSLEEP_ENGINE_UNICODE_CLASS_H

#include <stdint.h>

enum {
  MS__UC_LETTER = 0, /* \p{L} */
  MS__UC_NUMBER = 1, /* \p{N} */
  MS__UC_SPACE = 2,  /* \s (Unicode White_Space) */
  MS__UC_OTHER = 3   /* punctuation, symbols, marks, controls, emoji, ... */
};

/* The class of code point cp (any value; above U+10FFFF is MS__UC_OTHER). */
int ms__unicode_class(uint32_t cp);

#endif /* MEMSLEEP_ENGINE_UNICODE_CLASS_H */
