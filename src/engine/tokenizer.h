/*
 * tokenizer.h - byte-level BPE from a Hugging Face tokenizer.json.
 *
 * The GPT-2 / Llama-3 / Qwen2 family: text is split by the pre-tokenizer's
 * regular expression (the GPT-2 one is enough for the models memsleep-mkmodel
 * writes; the others fall back to it), each piece's bytes are mapped to the
 * printable byte alphabet (the GPT-2 bytes_to_unicode table), and merges are
 * applied by rank. Added/special tokens ("added_tokens") are matched whole
 * before splitting. Decoding maps ids back to bytes; output may end in the
 * middle of a UTF-8 sequence: a streaming caller decodes the whole output
 * so far and sends only the complete UTF-8 characters it has not sent.
 */
#ifndef MEMSLEEP_ENGINE_TOKENIZER_H
#define MEMSLEEP_ENGINE_TOKENIZER_H

#include <stddef.h>

typedef struct ms__tokenizer ms__tokenizer_t;

/* Loads path (a tokenizer.json). Returns 0 or MEMSLEEP_EINVAL (malformed,
 * with file and reason in memsleep_last_error()) / MEMSLEEP_ENOMEM. */
int ms__tokenizer_load(const char *path, ms__tokenizer_t **out);
void ms__tokenizer_free(ms__tokenizer_t *t);

/* Vocabulary size (largest id + 1, added tokens included). */
int ms__tokenizer_vocab_size(const ms__tokenizer_t *t);

/* Encodes len bytes of text into *ids (malloc'd, caller frees) and *n. */
int ms__tokenizer_encode(const ms__tokenizer_t *t, const char *text, size_t len, int **ids,
                         size_t *n);

/* Decodes n ids into a malloc'd NUL-terminated string (*text, length
 * *len). Ids out of range are MEMSLEEP_EINVAL. Invalid UTF-8 is kept as
 * bytes; JSON writers replace it. */
int ms__tokenizer_decode(const ms__tokenizer_t *t, const int *ids, size_t n, char **text,
                         size_t *len);

/* Writes a tokenizer.json with a byte-level vocabulary (256 byte tokens,
 * then merges learned from nothing: the first n_merges pairs of a fixed
 * English-like list, so ids stay deterministic) and the given special tokens
 * appended after them. For memsleep-mkmodel. */
int ms__tokenizer_write_bytelevel(const char *path, int n_merges, const char *const *specials,
                                  size_t n_specials);

#endif /* MEMSLEEP_ENGINE_TOKENIZER_H */
