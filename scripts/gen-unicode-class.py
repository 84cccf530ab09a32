#!/usr/bin/env python3
"""Regenerates src/engine/unicode_class.c, the pre-tokenizer's character classes.

Needs the Python "regex" module (Debian: python3-regex). Usage:
    scripts/gen-unicode-class.py > src/engine/unicode_class.c
"""
import regex  # noqa: E402
L=regex.compile(r'\p{L}'); N=regex.compile(r'\p{N}'); S=regex.compile(r'\s')
def cls(c):
    if 0xd800<=c<=0xdfff: return 0
    ch=chr(c)
    if L.match(ch): return 0
    if N.match(ch): return 1
    if S.match(ch): return 2
    return 3
runs=[]; prev=None
for c in range(0x80,0x110000):
    k=cls(c)
    if k!=prev: runs.append((c,k)); prev=k
out=[]
out.append('''/*
 * unicode_class.c - the pre-tokenizer's character classes beyond ASCII.
 *
 * GPT-2's pre-tokenizer pattern sorts characters into \\p{L} (letters),
 * \\p{N} (numbers), \\s (white space) and everything else. This table holds
 * that sorting for U+0080..U+10FFFF as runs: each entry is a run's first
 * code point shifted left by 2, ORed with the class of the whole run (up to
 * the next entry's first code point). It was generated with the Python
 * "regex" module (version %s): for every code point c,
 *   0 if regex.match(r"\\p{L}", chr(c)) else 1 if r"\\p{N}" matches
 *   else 2 if r"\\s" matches else 3,
 * merging equal neighbours. Surrogates (never decoded) are put in class 0.
 */
#include "engine/unicode_class.h"

#include <stddef.h>

static const uint32_t runs[] = {''' % regex.__version__)
ents=['0x%x' % ((s<<2)|k) for s,k in runs]
line='   '
for e in ents:
    if len(line)+len(e)+2>99:
        out.append(line); line='   '
    line+=' '+e+','
out.append(line)
out.append('''};

int ms__unicode_class(uint32_t cp) {
  if (cp < 0x80) {
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'))
      return MS__UC_LETTER;
    if (cp >= '0' && cp <= '9')
      return MS__UC_NUMBER;
    if (cp == ' ' || (cp >= 9 && cp <= 13)) /* \\t \\n \\v \\f \\r */
      return MS__UC_SPACE;
    return MS__UC_OTHER;
  }
  if (cp > 0x10ffff)
    return MS__UC_OTHER;
  size_t lo = 0, hi = sizeof runs / sizeof runs[0];
  while (hi - lo > 1) { /* the last run starting at or before cp */
    size_t mid = lo + (hi - lo) / 2;
    if ((runs[mid] >> 2) <= cp)
      lo = mid;
    else
      hi = mid;
  }
  return (int)(runs[lo] & 3);
}
''')
import sys
sys.stdout.write('\n'.join(out))
print('%d runs' % len(runs), file=sys.stderr)
