/*
 * safetensors.h - reading and writing the safetensors file format.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * JSON ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin,
 * end]}, ..., "__metadata__": {..}}), then the raw tensor bytes, offsets
 * counted from the end of the header. The reader checks everything a
 * malformed or truncated file could get wrong (header length, JSON, dtypes,
 * shapes against byte counts, offsets against the file size, overlaps)
 * before a byte of data is read, and reads with pread so that a file that
 * changes underneath is an error, never a SIGBUS. Data is converted to
 * float32 (F32, F16 and BF16 on disk); the half and bfloat16 conversions are
 * our own and exact (round to nearest even on the way down).
 *
 * The writer (for memsleep-mkmodel and the tests) lays out tensors in name
 * order with sorted header keys, the header padded with spaces to a multiple
 * of 8 bytes, and asks a callback for each tensor's float32 values, so a
 * large model is never held in memory whole.
 *
 * Errors: 0 or a negative MEMSLEEP_E* code, the message (naming the file and
 * the tensor) in memsleep_last_error().
 */
#ifndef MEMSLEEP_ENGINE_SAFETENSORS_H
#define MEMSLEEP_ENGINE_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define MS__ST_MAX_DIMS 8
/* Largest header accepted (the reference implementation's limit). */
#define MS__ST_HEADER_MAX_BYTES ((uint64_t)100 * 1000 * 1000)

/* Every dtype of the format: the reader knows their sizes (to validate a
 * file), converts only F32, F16 and BF16. */
typedef enum ms__st_dtype {
  MS__ST_F32,
  MS__ST_F16,
  MS__ST_BF16,
  MS__ST_F64,
  MS__ST_I64,
  MS__ST_U64,
  MS__ST_I32,
  MS__ST_U32,
  MS__ST_I16,
  MS__ST_U16,
  MS__ST_I8,
  MS__ST_U8,
  MS__ST_BOOL,
  MS__ST_F8_E4M3,
  MS__ST_F8_E5M2,
  MS__ST_NDTYPES
} ms__st_dtype_t;

typedef struct ms__st_tensor {
  char *name;                      /* key in the header (heap) */
  ms__st_dtype_t dtype;            /* on disk */
  int ndim;                        /* 0 for a scalar */
  uint64_t shape[MS__ST_MAX_DIMS]; /* dims, outermost first */
  uint64_t numel;                  /* product of shape (1 for a scalar) */
  uint64_t begin_bytes, end_bytes; /* data_offsets, relative to data start */
} ms__st_tensor_t;

/* An open file whose header has been checked. */
typedef struct ms__st_file {
  char *path;               /* as opened (heap) */
  int fd;                   /* -1 when closed */
  uint64_t file_bytes;      /* size when opened */
  uint64_t data_start;      /* 8 + header length */
  ms__st_tensor_t *tensors; /* sorted by name */
  size_t ntensors;
} ms__st_file_t;

/* "F32", "F16", ...; sizes in bytes of one element. */
const char *ms__st_dtype_name(ms__st_dtype_t dt);
size_t ms__st_dtype_bytes(ms__st_dtype_t dt);
/* 1 when ms__st_read_f32 can convert dt. */
int ms__st_dtype_convertible(ms__st_dtype_t dt);

/* Opens path and checks its header. On failure *f is left closed (safe to
 * pass to ms__st_close) and the message names the file (and the tensor,
 * where one is at fault). */
int ms__st_open(const char *path, ms__st_file_t *f);
void ms__st_close(ms__st_file_t *f);

/* The tensor called name, or NULL. */
const ms__st_tensor_t *ms__st_find(const ms__st_file_t *f, const char *name);

/* Reads tensor t of f converted to float32 into dst (t->numel floats).
 * progress (may be NULL) is called with the float32 bytes written so far
 * for this tensor, at most every few MiB. */
int ms__st_read_f32(const ms__st_file_t *f, const ms__st_tensor_t *t, float *dst,
                    void (*progress)(size_t done_bytes, void *user), void *user);

/* Conversions between float32 and the 16-bit formats (bit patterns).
 * Downward conversions round to nearest, ties to even; NaN stays NaN. */
float ms__f16_to_f32(uint16_t h);
uint16_t ms__f32_to_f16(float f);
float ms__bf16_to_f32(uint16_t b);
uint16_t ms__f32_to_bf16(float f);

/* What the writer writes for one tensor. */
typedef struct ms__st_spec {
  const char *name;
  ms__st_dtype_t dtype; /* F32, F16 or BF16 */
  int ndim;
  uint64_t shape[MS__ST_MAX_DIMS];
} ms__st_spec_t;

/* Fills dst with the numel float32 values of specs[i]; returns 0 or an
 * error code (which ms__st_write returns). */
typedef int (*ms__st_fill_fn)(size_t i, float *dst, uint64_t numel, void *user);

/* Writes a safetensors file at path holding specs[0..n) (names unique),
 * values from fill converted to each spec's dtype. On failure the file is
 * removed. *written_bytes (may be NULL) gets the file's size. */
int ms__st_write(const char *path, const ms__st_spec_t *specs, size_t n, ms__st_fill_fn fill,
                 void *user, uint64_t *written_bytes);

#endif /* MEMSLEEP_ENGINE_SAFETENSORS_H */
