/*
 * bytelevel.h - the byte-level half of byte-level BPE: GPT-2's byte alphabet,
 * UTF-8 decoding and the pre-tokenizers that cut text into pieces.
 *
 * The tokenizer (tokenizer.c) maps every byte of a piece to one printable
 * character (bytes_to_unicode) before applying merges, and cuts text into
 * pieces with the pattern its tokenizer.json names (GPT-2's, Llama-3's or
 * Qwen2's), implemented here by hand. Everything is pure: no allocation, no
 * state, safe from any thread.
 */
#ifndef MEMSLEEP_ENGINE_BYTELEVEL_H
#define MEMSLEEP_ENGINE_BYTELEVEL_H

#include <stddef.h>
#include <stdint.h>

/* The code point bytes_to_unicode gives byte b. */
uint32_t ms__bytelevel_cp(unsigned char b);

/* The byte whose code point is cp, or -1 when cp is not in the alphabet. */
int ms__bytelevel_byte(uint32_t cp);

/* Byte b's position in bytes_to_unicode's list: its id in GPT-2's vocab. */
int ms__bytelevel_index(unsigned char b);

/* Writes the alphabet form of len bytes, UTF-8 encoded, to out (room for
 * 2 * len bytes); returns the length written. */
size_t ms__bytelevel_map(const unsigned char *in, size_t len, char *out);

/* Decodes the UTF-8 character at s[*i] (i < n) into *cp and advances *i.
 * Returns 0, or -1 without advancing on a malformed sequence (overlong,
 * surrogate, above U+10FFFF, truncated). */
int ms__utf8_next(const unsigned char *s, size_t n, size_t *i, uint32_t *cp);

/* The pre-tokenizer patterns implemented. */
typedef enum ms__pretok {
  MS__PRETOK_NONE,   /* no splitting: ByteLevel with use_regex false and no Split */
  MS__PRETOK_GPT2,   /* GPT-2's, ByteLevel's own (use_regex) */
  MS__PRETOK_LLAMA3, /* Llama-3's Split pattern: digits by threes */
  MS__PRETOK_QWEN2   /* Qwen2's: Llama-3's with single digits */
} ms__pretok_t;

/* The pattern a Split pre-tokenizer's regex stands for: Llama-3's or
 * Qwen2's when it is exactly theirs, else MS__PRETOK_GPT2 (an approximation
 * for patterns not implemented). */
ms__pretok_t ms__pretok_of_regex(const char *regex);

/* Returns the end of the piece that starts at s[i] (i < n) under kind: the
 * match of the pattern's leftmost alternative that matches there, so that
 * repeated calls cut s as the pattern's find-all would. Never recursive;
 * O(piece length). */
size_t ms__pretok_next(ms__pretok_t kind, const unsigned char *s, size_t n, size_t i);

#endif /* MEMSLEEP_ENGINE_BYTELEVEL_H */
