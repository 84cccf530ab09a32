/*
 * tokenizer.c - byte-level BPE (GPT-2 / Llama-3 / Qwen2) from tokenizer.json.
 *
 * Loading reads model.vocab, model.merges and added_tokens with jansson into
 * hash tables of our own (token string -> id, id pair -> merge rank), so that
 * encoding never scans the vocabulary. Encoding splits out added tokens
 * (longest match, through a byte trie), splits the rest into pieces with
 * the file's pre-tokenizer pattern (below), maps each piece's bytes to the
 * bytes_to_unicode alphabet and applies merges by rank with a heap (O(n log n)
 * per piece; nothing is cached). Decoding concatenates each id's bytes, precomputed at load.
 * ms__tokenizer_write_bytelevel() writes a small deterministic tokenizer.json
 * for memsleep-mkmodel; its merges are learned from a built-in English text.
 * The byte alphabet, UTF-8 decoding and the pre-tokenizers are bytelevel.c's.
 * A loaded tokenizer is read-only: threads may encode and decode with it at
 * once.
 *
 * Pre-tokenizers, by hand (no regex engine): GPT-2's pattern
 *   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * (ByteLevel with use_regex, and what memsleep-mkmodel writes), and, when a
 * Sequence's Split step carries exactly their regex, Llama-3's
 *   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
 *   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * (case-insensitive contractions; one non-letter, non-newline character may
 * lead a word instead of " ?"; digits in groups of at most three;
 * punctuation runs take the newlines after them; white space up to the last
 * newline is one piece) and Qwen2's, the same with single digits. \p{L},
 * \p{N} and \s are the real Unicode classes (unicode_class.c). What differs
 * from the reference: a byte that is not valid UTF-8 (the reference never
 * sees one) counts as a letter; (?i) folds ASCII only; any other Split regex
 * falls back to GPT-2's pattern; normalizers (Qwen2's NFC) are not applied,
 * so text not already in NFC may get other ids; added_tokens' lstrip, rstrip,
 * single_word and normalized flags are ignored; post-processors (a BOS
 * token) are the caller's business.
 */
#include "engine/tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "engine/bytelevel.h"
#include "memsleep/memsleep.h"

/* Ids a file may use: real vocabularies stay under 300,000; the bound keeps
 * a hostile file from making the id table huge. */
#define TOK_MAX_ID          (1 << 22)
#define TOK_MAX_WRITE_MERGE (1 << 20)   /* most merges the writer will generate */
#define TOK_MAX_PIECE       0x7fffffffu /* longest piece BPE handles (32-bit positions) */

/* ------------------------------------------------------------------------ */
/* Hash tables: byte string -> int, and 64-bit key -> two ints.             */

typedef struct strslot {
  const char *key; /* not owned; NULL marks an empty slot */
  size_t len;      /* key length in bytes */
  int val;
} strslot_t;

typedef struct strmap {
  strslot_t *slot; /* cap slots, cap a power of two */
  size_t cap;
  size_t count; /* occupied slots; kept at most cap / 2 */
} strmap_t;

static uint64_t hash_bytes(const char *s, size_t len) {
  uint64_t h = 1469598103934665603ull; /* FNV-1a */
  for (size_t i = 0; i < len; i++)
    h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
  return h ^ (h >> 29);
}

static uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull; /* splitmix64 finalizer */
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

/* Returns the value stored for key, or -1. */
static int strmap_get(const strmap_t *m, const char *key, size_t len) {
  if (m->cap == 0)
    return -1;
  size_t mask = m->cap - 1;
  for (size_t i = hash_bytes(key, len) & mask;; i = (i + 1) & mask) {
    const strslot_t *s = &m->slot[i];
    if (!s->key)
      return -1;
    if (s->len == len && memcmp(s->key, key, len) == 0)
      return s->val;
  }
}

static int strmap_grow(strmap_t *m) {
  size_t cap = m->cap ? m->cap * 2 : 64;
  strslot_t *slot = calloc(cap, sizeof *slot);
  if (!slot)
    return MEMSLEEP_ENOMEM;
  for (size_t j = 0; j < m->cap; j++) {
    if (!m->slot[j].key)
      continue;
    size_t i = hash_bytes(m->slot[j].key, m->slot[j].len) & (cap - 1);
    while (slot[i].key)
      i = (i + 1) & (cap - 1);
    slot[i] = m->slot[j];
  }
  free(m->slot);
  m->slot = slot;
  m->cap = cap;
  return 0;
}

/* Maps key (len bytes, which must stay valid while the map lives) to val.
 * Returns 0, 1 if key was already present (its value is kept), or
 * MEMSLEEP_ENOMEM. */
static int strmap_put(strmap_t *m, const char *key, size_t len, int val) {
  if ((m->count + 1) * 2 > m->cap && strmap_grow(m) != 0)
    return MEMSLEEP_ENOMEM;
  size_t mask = m->cap - 1;
  size_t i = hash_bytes(key, len) & mask;
  for (; m->slot[i].key; i = (i + 1) & mask)
    if (m->slot[i].len == len && memcmp(m->slot[i].key, key, len) == 0)
      return 1;
  m->slot[i] = (strslot_t){key, len, val};
  m->count++;
  return 0;
}

static void strmap_free(strmap_t *m) {
  free(m->slot);
  *m = (strmap_t){0};
}

#define PAIR_EMPTY UINT64_MAX

typedef struct pairslot {
  uint64_t key; /* PAIR_EMPTY marks an empty slot */
  int a, b;     /* the values: (rank, merged id), (count, -), (child, -) */
} pairslot_t;

typedef struct pairmap {
  pairslot_t *slot; /* cap slots, cap a power of two */
  size_t cap;
  size_t count; /* kept at most cap / 2 */
} pairmap_t;

static uint64_t pair_key(int left, int right) {
  return ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
}

/* Returns the slot holding key, or NULL. */
static pairslot_t *pairmap_get(const pairmap_t *m, uint64_t key) {
  if (m->cap == 0)
    return NULL;
  size_t mask = m->cap - 1;
  for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
    pairslot_t *s = &m->slot[i];
    if (s->key == PAIR_EMPTY)
      return NULL;
    if (s->key == key)
      return s;
  }
}

/* Returns the slot for key, inserting it with values (a, b) if absent
 * (*added says which); NULL when out of memory. */
static pairslot_t *pairmap_put(pairmap_t *m, uint64_t key, int a, int b, int *added) {
  if ((m->count + 1) * 2 > m->cap) {
    size_t cap = m->cap ? m->cap * 2 : 64;
    pairslot_t *slot = malloc(cap * sizeof *slot);
    if (!slot)
      return NULL;
    for (size_t i = 0; i < cap; i++)
      slot[i].key = PAIR_EMPTY;
    for (size_t j = 0; j < m->cap; j++) {
      if (m->slot[j].key == PAIR_EMPTY)
        continue;
      size_t i = mix64(m->slot[j].key) & (cap - 1);
      while (slot[i].key != PAIR_EMPTY)
        i = (i + 1) & (cap - 1);
      slot[i] = m->slot[j];
    }
    free(m->slot);
    m->slot = slot;
    m->cap = cap;
  }
  size_t mask = m->cap - 1;
  size_t i = mix64(key) & mask;
  for (; m->slot[i].key != PAIR_EMPTY; i = (i + 1) & mask) {
    if (m->slot[i].key == key) {
      if (added)
        *added = 0;
      return &m->slot[i];
    }
  }
  m->slot[i] = (pairslot_t){key, a, b};
  m->count++;
  if (added)
    *added = 1;
  return &m->slot[i];
}

static void pairmap_clear(pairmap_t *m) {
  for (size_t i = 0; i < m->cap; i++)
    m->slot[i].key = PAIR_EMPTY;
  m->count = 0;
}

static void pairmap_free(pairmap_t *m) {
  free(m->slot);
  *m = (pairmap_t){0};
}

/* ------------------------------------------------------------------------ */
/* The writer: a deterministic byte-level vocabulary for memsleep-mkmodel.  */

/* English text the writer learns its merges from. Changing it changes the
 * ids of every tokenizer.json written after the change. */
static const char sample_text[] =
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst "
    "of times; it was the age of wisdom, it was the age of foolishness. In the beginning the "
    "model had no words at all, only bytes, and then it learned that some bytes come together "
    "more often than others. When you read this sentence, you are reading the kind of text "
    "that people write every day: questions and answers, stories and reports, lists of "
    "things to do and notes about what has been done.\n"
    "There are many ways to say the same thing. We should think about how the people who "
    "will use this server want to work with it, and what they expect when they send a "
    "request and wait for the response. A good answer is short, correct and easy to read. "
    "If the memory of the machine is needed for something else, the server can put its "
    "weights to sleep and wake them again later, so that other work can run in between.\n"
    "Numbers appear in text too: 1, 2, 3, 10, 100, 2024, 3.14 and 42 are common. So are "
    "names, places and dates, like Monday, January, London, Paris or New York. Here is a "
    "small list:\n"
    "- first, open the file and read the header;\n"
    "- second, check that the values are in range;\n"
    "- third, write the result and close the file.\n"
    "\"Would you like some tea?\" she asked. \"Yes, please,\" he said, \"I'd like that very "
    "much.\" They're going to the market tomorrow, and we'll see what they've found there. "
    "I'm sure it's going to be interesting, isn't it?\n"
    "Information, communication, education and organization are long words that end the "
    "same way, while running, walking, talking and thinking share another ending. The "
    "children played in the garden until the evening, then they went inside, washed their "
    "hands and had dinner with their parents. After dinner, everyone sat together and "
    "talked about the day: what went well, what could have been better, and what they "
    "would like to do next time.\n"
    "    def main():\n"
    "        return 0\n"
    "\n"
    "Thank you for reading. This is the end of the sample text, which only exists so that "
    "the merges are the same on every machine and every run.\n";

typedef struct learner {
  char **raw;     /* raw[id]: the token's bytes (not NUL-terminated) */
  size_t *len;    /* len[id]: their length */
  size_t count;   /* tokens so far */
  size_t cap;     /* room in raw and len */
  strmap_t index; /* token bytes -> id */
  int *merge;     /* merge[2k], merge[2k+1]: the k-th merge's left and right ids */
  size_t n_merge;
  char *scratch; /* room to build a concatenation */
  size_t scratch_cap;
} learner_t;

static void learner_free(learner_t *l) {
  for (size_t i = 0; i < l->count; i++)
    free(l->raw[i]);
  free(l->raw);
  free(l->len);
  strmap_free(&l->index);
  free(l->merge);
  free(l->scratch);
  *l = (learner_t){0};
}

/* Builds raw[a] + raw[b] in l->scratch; returns its length, or SIZE_MAX when
 * out of memory. */
static size_t learner_concat(learner_t *l, int a, int b) {
  size_t n = l->len[a] + l->len[b];
  if (n > l->scratch_cap) {
    char *p = realloc(l->scratch, n * 2);
    if (!p)
      return SIZE_MAX;
    l->scratch = p;
    l->scratch_cap = n * 2;
  }
  memcpy(l->scratch, l->raw[a], l->len[a]);
  memcpy(l->scratch + l->len[a], l->raw[b], l->len[b]);
  return n;
}

/* Adds the token of n bytes, and, when a >= 0, the merge (a, b) that makes
 * it. The bytes must not be a token yet. Returns 0 or MEMSLEEP_ENOMEM. */
static int learner_add(learner_t *l, const char *bytes, size_t n, int a, int b) {
  if (l->count == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 512;
    char **raw = realloc(l->raw, cap * sizeof *raw);
    if (!raw)
      return MEMSLEEP_ENOMEM;
    l->raw = raw;
    size_t *len = realloc(l->len, cap * sizeof *len);
    if (!len)
      return MEMSLEEP_ENOMEM;
    l->len = len;
    int *merge = realloc(l->merge, cap * 2 * sizeof *merge);
    if (!merge)
      return MEMSLEEP_ENOMEM;
    l->merge = merge;
    l->cap = cap;
  }
  char *copy = malloc(n ? n : 1);
  if (!copy)
    return MEMSLEEP_ENOMEM;
  memcpy(copy, bytes, n);
  if (strmap_put(&l->index, copy, n, (int)l->count) != 0) {
    free(copy);
    return MEMSLEEP_ENOMEM;
  }
  l->raw[l->count] = copy;
  l->len[l->count] = n;
  l->count++;
  if (a >= 0) {
    l->merge[2 * l->n_merge] = a;
    l->merge[2 * l->n_merge + 1] = b;
    l->n_merge++;
  }
  return 0;
}

/* Learns up to want merges from sample_text: split it into pieces, then
 * repeatedly merge the most frequent adjacent pair (ties: the smallest
 * (left, right) ids) whose concatenation is not a token yet. Stops early
 * when no pair is left. Returns 0 or MEMSLEEP_ENOMEM. */
static int learner_learn(learner_t *l, size_t want) {
  const unsigned char *s = (const unsigned char *)sample_text;
  size_t n = sizeof sample_text - 1;
  int *sym = malloc(n * sizeof *sym);    /* every piece's symbols, back to back */
  size_t *end = malloc(n * sizeof *end); /* end[w]: end of piece w in sym */
  pairmap_t counts = {0};
  int rc = 0;
  if (!sym || !end) {
    rc = MEMSLEEP_ENOMEM;
    goto out;
  }
  size_t n_piece = 0;
  for (size_t i = 0; i < n;) {
    size_t e = ms__pretok_next(MS__PRETOK_GPT2, s, n, i);
    for (; i < e; i++)
      sym[i] = ms__bytelevel_index(s[i]);
    end[n_piece++] = e;
  }
  while (l->n_merge < want) {
    pairmap_clear(&counts);
    for (size_t w = 0, start = 0; w < n_piece; start = end[w], w++) {
      for (size_t i = start; i + 1 < end[w]; i++) {
        pairslot_t *p = pairmap_put(&counts, pair_key(sym[i], sym[i + 1]), 0, 0, NULL);
        if (!p) {
          rc = MEMSLEEP_ENOMEM;
          goto out;
        }
        p->a++;
      }
    }
    int best_count = 0;
    uint64_t best_key = PAIR_EMPTY;
    for (size_t k = 0; k < counts.cap; k++) {
      const pairslot_t *p = &counts.slot[k];
      if (p->key == PAIR_EMPTY || p->a < best_count || (p->a == best_count && p->key > best_key))
        continue;
      size_t cn = learner_concat(l, (int)(p->key >> 32), (int)(uint32_t)p->key);
      if (cn == SIZE_MAX) {
        rc = MEMSLEEP_ENOMEM;
        goto out;
      }
      if (strmap_get(&l->index, l->scratch, cn) >= 0)
        continue; /* "ab"+"c" when "a"+"bc" made "abc" already */
      best_count = p->a;
      best_key = p->key;
    }
    if (best_key == PAIR_EMPTY)
      break;
    int a = (int)(best_key >> 32), b = (int)(uint32_t)best_key, id = (int)l->count;
    size_t cn = learner_concat(l, a, b);
    if (cn == SIZE_MAX || learner_add(l, l->scratch, cn, a, b) != 0) {
      rc = MEMSLEEP_ENOMEM;
      goto out;
    }
    /* Apply the merge to every piece, compacting sym in place. */
    size_t o = 0;
    for (size_t w = 0, start = 0; w < n_piece; w++) {
      size_t i = start;
      start = end[w];
      while (i < end[w]) {
        if (i + 1 < end[w] && sym[i] == a && sym[i + 1] == b) {
          sym[o++] = id;
          i += 2;
        } else {
          sym[o++] = sym[i++];
        }
      }
      end[w] = o;
    }
  }
out:
  pairmap_free(&counts);
  free(sym);
  free(end);
  return rc;
}

/* Adds merges until there are want: each existing token, in id order,
 * followed by each byte, skipping concatenations that are tokens already.
 * Used when the sample text has run out of pairs. */
static int learner_fill(learner_t *l, size_t want) {
  for (size_t a = 0; l->n_merge < want && a < l->count; a++) {
    for (int b = 0; b < 256 && l->n_merge < want; b++) {
      size_t cn = learner_concat(l, (int)a, b);
      if (cn == SIZE_MAX)
        return MEMSLEEP_ENOMEM;
      if (strmap_get(&l->index, l->scratch, cn) >= 0)
        continue;
      if (learner_add(l, l->scratch, cn, (int)a, b) != 0)
        return MEMSLEEP_ENOMEM;
    }
  }
  return l->n_merge == want ? 0 : MEMSLEEP_ENOMEM;
}

/* Returns a new JSON string of token id's alphabet form, or NULL. */
static json_t *learner_json_token(const learner_t *l, size_t id) {
  char *buf = malloc(l->len[id] * 2 + 1);
  if (!buf)
    return NULL;
  size_t n = ms__bytelevel_map((const unsigned char *)l->raw[id], l->len[id], buf);
  json_t *j = json_stringn(buf, n);
  free(buf);
  return j;
}

/* Adds to obj the key/value pairs given as alternating const char * names and
 * json_t * values (stolen), up to a NULL name. Returns 0, or -1 when a value
 * is NULL (out of memory) or cannot be set. */
static int json_set_all(json_t *obj, ...) {
  va_list ap;
  int rc = 0;
  va_start(ap, obj);
  for (const char *k; (k = va_arg(ap, const char *)) != NULL;) {
    json_t *v = va_arg(ap, json_t *);
    if (!v || json_object_set_new(obj, k, v) != 0)
      rc = -1;
  }
  va_end(ap);
  return rc;
}

static json_t *bytelevel_json(int add_prefix_space) {
  json_t *o = json_object();
  if (o && json_set_all(o, "type", json_string("ByteLevel"), "add_prefix_space",
                        json_boolean(add_prefix_space), "trim_offsets", json_true(), "use_regex",
                        json_true(), (const char *)NULL) != 0) {
    json_decref(o);
    o = NULL;
  }
  return o;
}

/* Builds the whole tokenizer.json document; NULL when out of memory. */
static json_t *learner_json(const learner_t *l, const char *const *specials, size_t n_specials) {
  json_t *root = json_object(), *model = json_object(), *vocab = json_object();
  json_t *merges = json_array(), *added = json_array();
  int ok = root && model && vocab && merges && added;
  for (size_t id = 0; ok && id < l->count; id++) {
    json_t *key = learner_json_token(l, id);
    ok = key &&
         json_object_set_new(vocab, json_string_value(key), json_integer((json_int_t)id)) == 0;
    json_decref(key);
  }
  for (size_t k = 0; ok && k < l->n_merge; k++) {
    json_t *a = learner_json_token(l, (size_t)l->merge[2 * k]);
    json_t *b = learner_json_token(l, (size_t)l->merge[2 * k + 1]);
    char *line = NULL;
    ok = a && b;
    if (ok) {
      size_t na = json_string_length(a), nb = json_string_length(b);
      line = malloc(na + nb + 2);
      ok = line != NULL;
      if (ok) {
        memcpy(line, json_string_value(a), na);
        line[na] = ' ';
        memcpy(line + na + 1, json_string_value(b), nb);
        line[na + nb + 1] = '\0';
        ok = json_array_append_new(merges, json_string(line)) == 0;
      }
    }
    free(line);
    json_decref(a);
    json_decref(b);
  }
  for (size_t i = 0; ok && i < n_specials; i++) {
    json_t *t = json_object();
    ok = t && json_set_all(t, "id", json_integer((json_int_t)(l->count + i)), "content",
                           json_string(specials[i]), "single_word", json_false(), "lstrip",
                           json_false(), "rstrip", json_false(), "normalized", json_false(),
                           "special", json_true(), (const char *)NULL) == 0;
    ok = ok && json_array_append_new(added, t) == 0;
    if (!ok)
      json_decref(t);
  }
  if (ok) {
    ok = json_set_all(model, "type", json_string("BPE"), "dropout", json_null(), "unk_token",
                      json_null(), "continuing_subword_prefix", json_string(""),
                      "end_of_word_suffix", json_string(""), "fuse_unk", json_false(),
                      "byte_fallback", json_false(), "ignore_merges", json_false(), "vocab", vocab,
                      "merges", merges, (const char *)NULL) == 0;
    vocab = merges = NULL;
  }
  if (ok) {
    ok = json_set_all(root, "version", json_string("1.0"), "truncation", json_null(), "padding",
                      json_null(), "added_tokens", added, "normalizer", json_null(),
                      "pre_tokenizer", bytelevel_json(0), "post_processor", bytelevel_json(1),
                      "decoder", bytelevel_json(1), "model", model, (const char *)NULL) == 0;
    added = model = NULL;
  }
  json_decref(vocab);
  json_decref(merges);
  json_decref(added);
  json_decref(model);
  if (!ok) {
    json_decref(root);
    return NULL;
  }
  return root;
}

/*
 * Writes path: 256 byte tokens (ids 0..255 in the order of GPT-2's
 * bytes_to_unicode list, as in GPT-2's own vocabulary: "!" is 0, byte 0x00
 * is 188, the space "\u0120" is 220), n_merges merges (ids 256..) learned
 * greedily from sample_text and, past the pairs it offers, made from each
 * token followed by each byte; then the specials as added tokens (ids
 * 256 + n_merges + i, special: true). The same arguments always give the same file. Returns 0,
 * MEMSLEEP_EINVAL (bad arguments), MEMSLEEP_ENOMEM or MEMSLEEP_EBACKEND (the
 * file could not be written).
 */
int ms__tokenizer_write_bytelevel(const char *path, int n_merges, const char *const *specials,
                                  size_t n_specials) {
  if (!path)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer write: path is NULL");
  if (n_merges < 0 || n_merges > TOK_MAX_WRITE_MERGE)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: n_merges %d out of range 0..%d", path,
                    n_merges, TOK_MAX_WRITE_MERGE);
  if (n_specials > 0 && !specials)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: %zu specials but specials is NULL", path,
                    n_specials);
  if (n_specials > 4096)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: %zu specials (at most 4096)", path,
                    n_specials);
  for (size_t i = 0; i < n_specials; i++) {
    if (!specials[i] || !specials[i][0])
      return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: special %zu is NULL or empty", path, i);
    for (size_t j = 0; j < i; j++)
      if (strcmp(specials[i], specials[j]) == 0)
        return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: special \"%.64s\" given twice", path,
                        specials[i]);
    json_t *probe = json_string(specials[i]);
    if (!probe)
      return ms__fail(MEMSLEEP_EINVAL, "tokenizer write %s: special %zu is not valid UTF-8", path,
                      i);
    json_decref(probe);
  }

  learner_t l = {0};
  int rc = 0;
  char by_id[256];
  for (int b = 0; b < 256; b++)
    by_id[ms__bytelevel_index((unsigned char)b)] = (char)b;
  for (int id = 0; id < 256 && rc == 0; id++)
    rc = learner_add(&l, &by_id[id], 1, -1, -1);
  if (rc == 0)
    rc = learner_learn(&l, (size_t)n_merges);
  if (rc == 0)
    rc = learner_fill(&l, (size_t)n_merges);
  if (rc != 0) {
    learner_free(&l);
    return ms__fail(rc, "tokenizer write %s: out of memory building %d merges", path, n_merges);
  }
  json_t *root = learner_json(&l, specials, n_specials);
  learner_free(&l);
  if (!root)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer write %s: out of memory building JSON", path);
  errno = 0;
  if (json_dump_file(root, path, JSON_INDENT(2)) != 0) {
    int e = errno;
    json_decref(root);
    return ms__fail(MEMSLEEP_EBACKEND, "tokenizer write %s: %s", path,
                    e ? strerror(e) : "write failed");
  }
  json_decref(root);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Loading.                                                                 */

typedef struct tok_entry {
  char *text;       /* the vocab key (alphabet form), NUL-terminated; NULL if none */
  char *bytes;      /* what decoding emits; NULL when no token has this id */
  size_t bytes_len; /* its length */
} tok_entry_t;

struct ms__tokenizer {
  tok_entry_t *tok;     /* tok[id] for 0 <= id < vocab_size */
  int vocab_size;       /* largest id + 1, added tokens included */
  strmap_t vocab;       /* vocab key -> id; keys point into tok[].text */
  pairmap_t merges;     /* (left id, right id) -> (rank, merged id) */
  int byte_id[256];     /* id of each byte's one-character token */
  pairmap_t trie;       /* added tokens' byte trie: (node, byte) -> (child, -) */
  int *trie_tok;        /* trie_tok[node]: the added token ending there, or -1 */
  size_t trie_nodes;    /* nodes in use; node 0 is the root */
  size_t trie_cap;      /* room in trie_tok */
  int add_prefix_space; /* the ByteLevel pre-tokenizer's add_prefix_space */
  ms__pretok_t pretok;  /* the splitting pattern */
  int ignore_merges;    /* model.ignore_merges: a piece that is a vocab key is one id */
};

void ms__tokenizer_free(ms__tokenizer_t *t) {
  if (!t)
    return;
  for (int i = 0; i < t->vocab_size; i++) {
    free(t->tok[i].text);
    free(t->tok[i].bytes);
  }
  free(t->tok);
  strmap_free(&t->vocab);
  pairmap_free(&t->merges);
  pairmap_free(&t->trie);
  free(t->trie_tok);
  free(t);
}

int ms__tokenizer_vocab_size(const ms__tokenizer_t *t) {
  return t ? t->vocab_size : 0;
}

/* Returns node, a ByteLevel pre-tokenizer or decoder, or the first ByteLevel
 * step of a Sequence node; NULL when there is none. */
static const json_t *find_bytelevel(const json_t *node) {
  const char *type = json_string_value(json_object_get(node, "type"));
  if (!type)
    return NULL;
  if (strcmp(type, "ByteLevel") == 0)
    return node;
  if (strcmp(type, "Sequence") != 0)
    return NULL;
  const json_t *steps = json_object_get(node, "pretokenizers");
  if (!steps)
    steps = json_object_get(node, "decoders");
  size_t i;
  const json_t *step;
  json_array_foreach(steps, i, step) {
    const char *st = json_string_value(json_object_get(step, "type"));
    if (st && strcmp(st, "ByteLevel") == 0)
      return step;
  }
  return NULL;
}

/* Picks the splitting pattern of a pre_tokenizer: the Llama-3 or Qwen2 Split
 * pattern when a Sequence's Split step has exactly that regex, none for a
 * lone ByteLevel with use_regex false, and GPT-2's otherwise (also for Split
 * patterns not recognised: an approximation, see the file comment). */
static ms__pretok_t pick_pretok(const json_t *pre) {
  const char *type = json_string_value(json_object_get(pre, "type"));
  if (type && strcmp(type, "ByteLevel") == 0)
    return json_is_false(json_object_get(pre, "use_regex")) ? MS__PRETOK_NONE : MS__PRETOK_GPT2;
  size_t i;
  const json_t *step;
  json_array_foreach(json_object_get(pre, "pretokenizers"), i, step) {
    const char *st = json_string_value(json_object_get(step, "type"));
    const char *re = json_string_value(json_object_get(json_object_get(step, "pattern"), "Regex"));
    if (!st || strcmp(st, "Split") != 0 || !re)
      continue;
    ms__pretok_t kind = ms__pretok_of_regex(re);
    if (kind != MS__PRETOK_GPT2)
      return kind;
  }
  return MS__PRETOK_GPT2;
}

/* Reads an id: a JSON integer in 0..TOK_MAX_ID-1. Returns 0 or -1. */
static int json_id(const json_t *v, int *id) {
  if (!json_is_integer(v))
    return -1;
  json_int_t x = json_integer_value(v);
  if (x < 0 || x >= TOK_MAX_ID)
    return -1;
  *id = (int)x;
  return 0;
}

/* Adds an added token's content (len bytes, len > 0) to the trie. A content
 * given twice keeps its first id. Returns 0 or MEMSLEEP_ENOMEM. */
static int trie_add(ms__tokenizer_t *t, const unsigned char *s, size_t len, int id) {
  size_t node = 0;
  for (size_t i = 0; i < len; i++) {
    pairslot_t *child = pairmap_get(&t->trie, pair_key((int)node, s[i]));
    if (child) {
      node = (size_t)child->a;
      continue;
    }
    if (t->trie_nodes == t->trie_cap) {
      size_t cap = t->trie_cap * 2;
      int *tt = realloc(t->trie_tok, cap * sizeof *tt);
      if (!tt)
        return MEMSLEEP_ENOMEM;
      t->trie_tok = tt;
      t->trie_cap = cap;
    }
    size_t fresh = t->trie_nodes++;
    t->trie_tok[fresh] = -1;
    if (!pairmap_put(&t->trie, pair_key((int)node, s[i]), (int)fresh, 0, NULL))
      return MEMSLEEP_ENOMEM;
    node = fresh;
  }
  if (t->trie_tok[node] < 0)
    t->trie_tok[node] = id;
  return 0;
}

/* Returns the length of the longest added token at the start of s (n bytes),
 * storing its id in *id; 0 when none starts there. */
static size_t trie_match(const ms__tokenizer_t *t, const unsigned char *s, size_t n, int *id) {
  size_t node = 0, best = 0;
  for (size_t j = 0; j < n; j++) {
    const pairslot_t *child = pairmap_get(&t->trie, pair_key((int)node, s[j]));
    if (!child)
      break;
    node = (size_t)child->a;
    if (t->trie_tok[node] >= 0) {
      best = j + 1;
      *id = t->trie_tok[node];
    }
  }
  return best;
}

/* Sets tok[id]'s vocab key and its decoded bytes: each character mapped back
 * through the byte alphabet or, when one is outside it, the key's own UTF-8
 * bytes (what Hugging Face's ByteLevel decoder does). Returns 0 or
 * MEMSLEEP_ENOMEM. */
static int set_vocab_entry(tok_entry_t *e, const char *key, size_t len) {
  e->text = malloc(len + 1);
  e->bytes = malloc(len + 1);
  if (!e->text || !e->bytes)
    return MEMSLEEP_ENOMEM;
  memcpy(e->text, key, len);
  e->text[len] = '\0';
  const unsigned char *k = (const unsigned char *)key;
  size_t i = 0, o = 0;
  while (i < len) {
    uint32_t cp;
    int b = -1;
    if (ms__utf8_next(k, len, &i, &cp) != 0 || (b = ms__bytelevel_byte(cp)) < 0)
      break;
    e->bytes[o++] = (char)b;
  }
  if (i < len) { /* not all in the alphabet: keep the key as it is */
    memcpy(e->bytes, key, len);
    o = len;
  }
  e->bytes[o] = '\0';
  e->bytes_len = o;
  return 0;
}

/* Reads merge number rank (a "left right" string or a [left, right] array)
 * into the merge table. Returns 0, or MEMSLEEP_EINVAL / MEMSLEEP_ENOMEM with
 * the message set. */
static int load_merge(ms__tokenizer_t *t, const char *path, size_t rank, const json_t *m) {
  const char *left, *right;
  size_t nl, nr;
  char *split = NULL;
  if (json_is_string(m)) {
    const char *s = json_string_value(m);
    size_t n = json_string_length(m);
    const char *sp = memchr(s, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
      return ms__fail(MEMSLEEP_EINVAL,
                      "tokenizer %s: merges[%zu] \"%.64s\" is not two tokens separated by one "
                      "space",
                      path, rank, s);
    left = s, nl = (size_t)(sp - s);
    right = sp + 1, nr = n - nl - 1;
  } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
             json_is_string(json_array_get(m, 1))) {
    left = json_string_value(json_array_get(m, 0));
    nl = json_string_length(json_array_get(m, 0));
    right = json_string_value(json_array_get(m, 1));
    nr = json_string_length(json_array_get(m, 1));
  } else {
    return ms__fail(MEMSLEEP_EINVAL,
                    "tokenizer %s: merges[%zu] is neither a \"left right\" string nor a "
                    "[left, right] pair",
                    path, rank);
  }
  int a = strmap_get(&t->vocab, left, nl);
  int b = strmap_get(&t->vocab, right, nr);
  if (a < 0 || b < 0) {
    int la = a < 0;
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: merges[%zu] names unknown token \"%.*s\"", path,
                    rank, (int)(la ? (nl > 64 ? 64 : nl) : (nr > 64 ? 64 : nr)), la ? left : right);
  }
  split = malloc(nl + nr + 1);
  if (!split)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  memcpy(split, left, nl);
  memcpy(split + nl, right, nr);
  int merged = strmap_get(&t->vocab, split, nl + nr);
  if (merged < 0) {
    int rc = ms__fail(MEMSLEEP_EINVAL,
                      "tokenizer %s: merges[%zu] makes \"%.*s\", which is not in the vocab", path,
                      rank, (int)(nl + nr > 64 ? 64 : nl + nr), split);
    free(split);
    return rc;
  }
  free(split);
  if (rank > INT32_MAX)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: more than %d merges", path, INT32_MAX);
  /* A pair listed twice keeps its first (lowest) rank. */
  if (!pairmap_put(&t->merges, pair_key(a, b), (int)rank, merged, NULL))
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  return 0;
}

/* The body of ms__tokenizer_load(): fills t from root; returns 0 or an error
 * with the message set. */
static int load_json(ms__tokenizer_t *t, const char *path, const json_t *root) {
  if (!json_is_object(root))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: the top level is not a JSON object", path);
  const json_t *model = json_object_get(root, "model");
  if (!json_is_object(model))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: no \"model\" object", path);
  const json_t *type = json_object_get(model, "type");
  if (type && (!json_is_string(type) || strcmp(json_string_value(type), "BPE") != 0))
    return ms__fail(MEMSLEEP_EINVAL,
                    "unsupported tokenizer: %s: model type \"%.64s\" (only byte-level BPE)", path,
                    json_is_string(type) ? json_string_value(type) : "(not a string)");
  const json_t *pre = find_bytelevel(json_object_get(root, "pre_tokenizer"));
  if (!pre && !find_bytelevel(json_object_get(root, "decoder")))
    return ms__fail(MEMSLEEP_EINVAL,
                    "unsupported tokenizer: %s: neither the pre_tokenizer nor the decoder is "
                    "ByteLevel (only byte-level BPE)",
                    path);
  static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
  for (size_t a = 0; a < 2; a++) {
    const char *affix = json_string_value(json_object_get(model, affixes[a]));
    if (affix && affix[0])
      return ms__fail(MEMSLEEP_EINVAL, "unsupported tokenizer: %s: model.%s \"%.16s\"", path,
                      affixes[a], affix);
  }
  t->add_prefix_space = pre && json_is_true(json_object_get(pre, "add_prefix_space"));
  t->pretok = pick_pretok(json_object_get(root, "pre_tokenizer"));
  t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));

  const json_t *vocab = json_object_get(model, "vocab");
  if (!json_is_object(vocab))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: model.vocab is not an object", path);
  const json_t *added = json_object_get(root, "added_tokens");
  if (added && !json_is_null(added) && !json_is_array(added))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: added_tokens is not an array", path);
  const json_t *merges = json_object_get(model, "merges");
  if (merges && !json_is_null(merges) && !json_is_array(merges))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: model.merges is not an array", path);

  /* Size the id table: the largest id of the vocab and the added tokens. */
  int max_id = -1, id;
  const char *key;
  const json_t *v;
  json_object_foreach((json_t *)vocab, key, v) {
    if (json_id(v, &id) != 0)
      return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: vocab id of \"%.64s\" is not in 0..%d", path,
                      key, TOK_MAX_ID - 1);
    if (id > max_id)
      max_id = id;
  }
  size_t i;
  json_array_foreach(added, i, v) {
    if (json_id(json_object_get(v, "id"), &id) != 0 ||
        !json_is_string(json_object_get(v, "content")))
      return ms__fail(MEMSLEEP_EINVAL,
                      "tokenizer %s: added_tokens[%zu] lacks an id in 0..%d or a content string",
                      path, i, TOK_MAX_ID - 1);
    if (id > max_id)
      max_id = id;
  }
  if (max_id < 0)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: the vocab is empty", path);
  t->tok = calloc((size_t)max_id + 1, sizeof *t->tok);
  if (!t->tok)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory for %d ids", path, max_id + 1);
  t->vocab_size = max_id + 1;

  json_object_foreach((json_t *)vocab, key, v) {
    json_id(v, &id);
    tok_entry_t *e = &t->tok[id];
    if (e->text)
      return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: vocab gives id %d to \"%.64s\" and \"%.64s\"",
                      path, id, e->text, key);
    size_t len = strlen(key);
    if (set_vocab_entry(e, key, len) != 0 || strmap_put(&t->vocab, e->text, len, id) < 0)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  }

  t->trie_cap = 64;
  t->trie_tok = malloc(t->trie_cap * sizeof *t->trie_tok);
  if (!t->trie_tok)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  t->trie_tok[0] = -1;
  t->trie_nodes = 1;
  json_array_foreach(added, i, v) {
    const json_t *content = json_object_get(v, "content");
    size_t len = json_string_length(content);
    json_id(json_object_get(v, "id"), &id);
    char *copy = malloc(len + 1);
    if (!copy)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
    memcpy(copy, json_string_value(content), len + 1);
    free(t->tok[id].bytes); /* an added token decodes to its content */
    t->tok[id].bytes = copy;
    t->tok[id].bytes_len = len;
    if (len > 0 && trie_add(t, (const unsigned char *)copy, len, id) != 0)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  }

  json_array_foreach(merges, i, v) {
    int rc = load_merge(t, path, i, v);
    if (rc != 0)
      return rc;
  }

  for (int b = 0; b < 256; b++) {
    char ch[2];
    unsigned char byte = (unsigned char)b;
    size_t n = ms__bytelevel_map(&byte, 1, ch);
    t->byte_id[b] = strmap_get(&t->vocab, ch, n);
    if (t->byte_id[b] < 0)
      return ms__fail(MEMSLEEP_EINVAL,
                      "unsupported tokenizer: %s: the vocab has no token for byte 0x%02x "
                      "(\"%.*s\"), so it is not byte-level",
                      path, b, (int)n, ch);
  }
  return 0;
}

/*
 * Loads path. On success *out owns everything it needs (the JSON document is
 * released); free it with ms__tokenizer_free(). Every error message names the
 * file.
 */
int ms__tokenizer_load(const char *path, ms__tokenizer_t **out) {
  if (!path || !out)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer load: path or out is NULL");
  *out = NULL;
  json_error_t err;
  json_t *root = json_load_file(path, 0, &err);
  if (!root)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer %s: not readable JSON: %s (line %d, column %d)",
                    path, err.text, err.line, err.column);
  ms__tokenizer_t *t = calloc(1, sizeof *t);
  int rc =
      t ? load_json(t, path, root) : ms__fail(MEMSLEEP_ENOMEM, "tokenizer %s: out of memory", path);
  json_decref(root);
  if (rc != 0) {
    ms__tokenizer_free(t);
    return rc;
  }
  *out = t;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Encoding.                                                                */

#define POS_NONE UINT32_MAX

typedef struct heap_item {
  int rank;     /* the merge's rank: lower merges first */
  uint32_t pos; /* the left symbol's position: leftmost first among equal ranks */
} heap_item_t;

/* One encode call's state: the output and the BPE workspace, sized for the
 * longest piece so far and freed when the call returns. */
typedef struct enc {
  const ms__tokenizer_t *t;
  int *out; /* the ids so far */
  size_t n_out, out_cap;
  int *sym;       /* sym[i]: the id of the symbol starting at byte i, or -1 once merged away */
  uint32_t *prev; /* neighbours of live symbols (POS_NONE at the ends) */
  uint32_t *next;
  heap_item_t *heap; /* candidate merges; 3 * ws_cap items is always enough */
  size_t ws_cap;     /* the piece length the workspace holds */
  char *mapped;      /* a piece in alphabet form, for ignore_merges */
} enc_t;

static int emit(enc_t *e, int id) {
  if (e->n_out == e->out_cap) {
    size_t cap = e->out_cap ? e->out_cap * 2 : 64;
    int *o = realloc(e->out, cap * sizeof *o);
    if (!o)
      return MEMSLEEP_ENOMEM;
    e->out = o;
    e->out_cap = cap;
  }
  e->out[e->n_out++] = id;
  return 0;
}

static int heap_less(heap_item_t x, heap_item_t y) {
  return x.rank < y.rank || (x.rank == y.rank && x.pos < y.pos);
}

static void heap_push(heap_item_t *h, size_t *n, heap_item_t item) {
  size_t i = (*n)++;
  while (i > 0 && heap_less(item, h[(i - 1) / 2])) {
    h[i] = h[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  h[i] = item;
}

static heap_item_t heap_pop(heap_item_t *h, size_t *n) {
  heap_item_t top = h[0], last = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= *n)
      break;
    if (c + 1 < *n && heap_less(h[c + 1], h[c]))
      c++;
    if (!heap_less(h[c], last))
      break;
    h[i] = h[c];
    i = c;
  }
  if (*n > 0)
    h[i] = last;
  return top;
}

/* Pushes the merge of the symbols at left and right, if there is one. */
static void push_pair(enc_t *e, size_t *n, uint32_t left, uint32_t right) {
  const pairslot_t *m = pairmap_get(&e->t->merges, pair_key(e->sym[left], e->sym[right]));
  if (m)
    heap_push(e->heap, n, (heap_item_t){m->a, left});
}

static int ensure_workspace(enc_t *e, size_t n) {
  if (n <= e->ws_cap)
    return 0;
  size_t cap = n > 2 * e->ws_cap ? n : 2 * e->ws_cap;
  free(e->sym), free(e->prev), free(e->next), free(e->heap), free(e->mapped);
  e->sym = malloc(cap * sizeof *e->sym);
  e->prev = malloc(cap * sizeof *e->prev);
  e->next = malloc(cap * sizeof *e->next);
  e->heap = malloc(cap * 3 * sizeof *e->heap);
  e->mapped = e->t->ignore_merges ? malloc(cap * 2) : NULL;
  if (!e->sym || !e->prev || !e->next || !e->heap || (e->t->ignore_merges && !e->mapped)) {
    e->ws_cap = 0;
    return MEMSLEEP_ENOMEM;
  }
  e->ws_cap = cap;
  return 0;
}

/*
 * Encodes one piece (n > 0 bytes, from the pre-tokenizer) and appends its ids:
 * every byte starts as its own symbol, then the lowest-ranked adjacent pair
 * that has a merge is merged, leftmost first, until none is left. Stale heap
 * items (a side already merged into something else) are skipped when popped:
 * the pair is valid exactly when its current symbols still have that rank.
 */
static int bpe_piece(enc_t *e, const unsigned char *p, size_t n) {
  const ms__tokenizer_t *t = e->t;
  if (n == 1)
    return emit(e, t->byte_id[p[0]]);
  if (n > TOK_MAX_PIECE)
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer encode: a piece of %zu bytes (at most %u)", n,
                    TOK_MAX_PIECE);
  if (ensure_workspace(e, n) != 0)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer encode: out of memory for a %zu-byte piece", n);
  if (t->ignore_merges) {
    int whole = strmap_get(&t->vocab, e->mapped, ms__bytelevel_map(p, n, e->mapped));
    if (whole >= 0)
      return emit(e, whole);
  }
  size_t hn = 0;
  for (size_t i = 0; i < n; i++) {
    e->sym[i] = t->byte_id[p[i]];
    e->prev[i] = i == 0 ? POS_NONE : (uint32_t)(i - 1);
    e->next[i] = i + 1 == n ? POS_NONE : (uint32_t)(i + 1);
  }
  for (size_t i = 0; i + 1 < n; i++)
    push_pair(e, &hn, (uint32_t)i, (uint32_t)(i + 1));
  while (hn > 0) {
    heap_item_t top = heap_pop(e->heap, &hn);
    uint32_t l = top.pos, r = e->next[l];
    if (e->sym[l] < 0 || r == POS_NONE)
      continue;
    const pairslot_t *m = pairmap_get(&t->merges, pair_key(e->sym[l], e->sym[r]));
    if (!m || m->a != top.rank)
      continue;
    e->sym[l] = m->b;
    e->sym[r] = -1;
    e->next[l] = e->next[r];
    if (e->next[r] != POS_NONE)
      e->prev[e->next[r]] = l;
    if (e->prev[l] != POS_NONE)
      push_pair(e, &hn, e->prev[l], l);
    if (e->next[l] != POS_NONE)
      push_pair(e, &hn, l, e->next[l]);
  }
  for (uint32_t i = 0; i != POS_NONE; i = e->next[i])
    if (emit(e, e->sym[i]) != 0)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer encode: out of memory for the ids");
  return 0;
}

/* Encodes a stretch of text between added tokens: pre-tokenize, then BPE each
 * piece. */
static int encode_segment(enc_t *e, const unsigned char *s, size_t n) {
  unsigned char *prefixed = NULL;
  if (n == 0)
    return 0;
  if (e->t->add_prefix_space && s[0] != ' ') {
    prefixed = malloc(n + 1);
    if (!prefixed)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer encode: out of memory for %zu bytes", n + 1);
    prefixed[0] = ' ';
    memcpy(prefixed + 1, s, n);
    s = prefixed;
    n++;
  }
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0;) {
    size_t end = ms__pretok_next(e->t->pretok, s, n, i);
    rc = bpe_piece(e, s + i, end - i);
    i = end;
  }
  free(prefixed);
  return rc;
}

/*
 * Encodes len bytes of text (any bytes: invalid UTF-8 is encoded as its raw
 * bytes). Added tokens are matched first, longest at each position, leftmost
 * first; the text between them goes through the pre-tokenizer and BPE. On
 * success *ids (malloc'd, never NULL, caller frees) holds *n ids.
 */
int ms__tokenizer_encode(const ms__tokenizer_t *t, const char *text, size_t len, int **ids,
                         size_t *n) {
  if (!t || !ids || !n || (!text && len > 0))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer encode: NULL argument (text of %zu bytes)", len);
  enc_t e = {.t = t};
  const unsigned char *s = (const unsigned char *)text;
  int rc = emit(&e, 0); /* allocate, so that *ids is never NULL */
  e.n_out = 0;
  size_t seg = 0;
  for (size_t i = 0; i < len && rc == 0;) {
    int id;
    size_t m = t->trie_nodes > 1 ? trie_match(t, s + i, len - i, &id) : 0;
    if (m == 0) {
      i++;
      continue;
    }
    rc = encode_segment(&e, s + seg, i - seg);
    if (rc == 0 && emit(&e, id) != 0)
      rc = MEMSLEEP_ENOMEM;
    i += m;
    seg = i;
  }
  if (rc == 0)
    rc = encode_segment(&e, s + seg, len - seg);
  free(e.sym), free(e.prev), free(e.next), free(e.heap), free(e.mapped);
  if (rc != 0) {
    free(e.out);
    if (rc == MEMSLEEP_ENOMEM)
      ms__fail(rc, "tokenizer encode: out of memory for the ids of %zu bytes", len);
    return rc;
  }
  *ids = e.out;
  *n = e.n_out;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Decoding.                                                                */

/*
 * Concatenates the bytes of n ids into *text (malloc'd, NUL-terminated,
 * caller frees; *len excludes the NUL). An id outside 0..vocab_size-1, or one
 * no token has, is MEMSLEEP_EINVAL naming it and nothing is allocated.
 */
int ms__tokenizer_decode(const ms__tokenizer_t *t, const int *ids, size_t n, char **text,
                         size_t *len) {
  if (!t || !text || !len || (!ids && n > 0))
    return ms__fail(MEMSLEEP_EINVAL, "tokenizer decode: NULL argument (%zu ids)", n);
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->tok[ids[i]].bytes)
      return ms__fail(MEMSLEEP_EINVAL,
                      "tokenizer decode: id %d (at position %zu) is not a token of this vocab "
                      "(size %d)",
                      ids[i], i, t->vocab_size);
    if (t->tok[ids[i]].bytes_len > SIZE_MAX - 1 - total)
      return ms__fail(MEMSLEEP_ENOMEM, "tokenizer decode: %zu ids make more than %zu bytes", n,
                      SIZE_MAX - 1);
    total += t->tok[ids[i]].bytes_len;
  }
  char *out = malloc(total + 1);
  if (!out)
    return ms__fail(MEMSLEEP_ENOMEM, "tokenizer decode: out of memory for %zu bytes", total + 1);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    const tok_entry_t *e = &t->tok[ids[i]];
    memcpy(out + o, e->bytes, e->bytes_len);
    o += e->bytes_len;
  }
  out[o] = '\0';
  *text = out;
  *len = o;
  return 0;
}
