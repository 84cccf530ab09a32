/*
 * safetensors.c - the safetensors reader (checked header, pread, conversion
 * to float32) and writer (sorted keys, padded header, values from a
 * callback). See safetensors.h for the format and the guarantees.
 */
#include "engine/safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/error.h"
#include "memsleep/memsleep.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads little-endian data in place: port it before using a big-endian host"
#endif

/* Bytes read per pread when converting F16/BF16 (and between progress
 * calls). */
#define CHUNK_BYTES ((size_t)4 << 20)

static const struct {
  const char *name;
  size_t bytes;
} dtypes[MS__ST_NDTYPES] = {
    [MS__ST_F32] = {"F32", 4},         [MS__ST_F16] = {"F16", 2},
    [MS__ST_BF16] = {"BF16", 2},       [MS__ST_F64] = {"F64", 8},
    [MS__ST_I64] = {"I64", 8},         [MS__ST_U64] = {"U64", 8},
    [MS__ST_I32] = {"I32", 4},         [MS__ST_U32] = {"U32", 4},
    [MS__ST_I16] = {"I16", 2},         [MS__ST_U16] = {"U16", 2},
    [MS__ST_I8] = {"I8", 1},           [MS__ST_U8] = {"U8", 1},
    [MS__ST_BOOL] = {"BOOL", 1},       [MS__ST_F8_E4M3] = {"F8_E4M3", 1},
    [MS__ST_F8_E5M2] = {"F8_E5M2", 1},
};

const char *ms__st_dtype_name(ms__st_dtype_t dt) {
  return (unsigned)dt < MS__ST_NDTYPES ? dtypes[dt].name : "?";
}

size_t ms__st_dtype_bytes(ms__st_dtype_t dt) {
  return (unsigned)dt < MS__ST_NDTYPES ? dtypes[dt].bytes : 0;
}

int ms__st_dtype_convertible(ms__st_dtype_t dt) {
  return dt == MS__ST_F32 || dt == MS__ST_F16 || dt == MS__ST_BF16;
}

/* ---- 16-bit float conversions ---- */

static uint32_t f32_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}

static float bits_f32(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

float ms__f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    /* Zero or subnormal: mant * 2^-24, exact in float32. */
    float v = (float)mant * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31)
    return bits_f32(sign | 0x7f800000u | (mant << 13));
  return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t ms__f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) { /* Inf or NaN: keep NaN a (quiet) NaN */
    if (absx > 0x7f800000u)
      return (uint16_t)(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    return (uint16_t)(sign | 0x7c00u);
  }
  if (absx >= 0x477ff000u) /* >= 65520 rounds (ties to even) to Inf */
    return (uint16_t)(sign | 0x7c00u);
  if (absx >= 0x38800000u) { /* normal half: >= 2^-14 */
    uint32_t h = (((absx >> 23) - 112u) << 10) | ((absx >> 13) & 0x3ffu);
    uint32_t rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u)))
      h++; /* a carry into the exponent is the right answer */
    return (uint16_t)(sign | h);
  }
  /* Subnormal half (or zero): round m * 2^(e-150) to a multiple of 2^-24. */
  uint32_t e = absx >> 23;
  uint32_t m = (absx & 0x7fffffu) | 0x800000u;
  uint32_t shift = 126u - e; /* >= 14 here */
  if (shift > 24u)
    return (uint16_t)sign;
  uint32_t q = m >> shift;
  uint32_t rem = m & ((1u << shift) - 1u);
  uint32_t half = 1u << (shift - 1u);
  if (rem > half || (rem == half && (q & 1u)))
    q++;
  return (uint16_t)(sign | q);
}

float ms__bf16_to_f32(uint16_t b) {
  return bits_f32((uint32_t)b << 16);
}

uint16_t ms__f32_to_bf16(float f) {
  uint32_t x = f32_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return (uint16_t)((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* ---- reader ---- */

/* Reads exactly n bytes at off; 0, or an error naming path and what. */
static int read_at(int fd, void *buf, size_t n, uint64_t off, const char *path, const char *what) {
  unsigned char *p = buf;
  while (n > 0) {
    ssize_t r = pread(fd, p, n, (off_t)off);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      return ms__fail(MEMSLEEP_EBACKEND, "%s: reading %s at offset %llu: %s", path, what,
                      (unsigned long long)off, strerror(errno));
    if (r == 0)
      return ms__fail(MEMSLEEP_EINVAL,
                      "%s: truncated: %s at offset %llu ends past the end of the file", path, what,
                      (unsigned long long)off);
    p += r;
    n -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
  return strcmp(((const ms__st_tensor_t *)a)->name, ((const ms__st_tensor_t *)b)->name);
}

static int cmp_tensor_begin(const void *a, const void *b) {
  const ms__st_tensor_t *x = *(const ms__st_tensor_t *const *)a;
  const ms__st_tensor_t *y = *(const ms__st_tensor_t *const *)b;
  if (x->begin_bytes != y->begin_bytes)
    return x->begin_bytes < y->begin_bytes ? -1 : 1;
  return x->end_bytes < y->end_bytes ? -1 : x->end_bytes > y->end_bytes;
}

/* A non-negative JSON integer as uint64_t; 0 if j is anything else. */
static int json_u64(const json_t *j, uint64_t *out) {
  if (!json_is_integer(j) || json_integer_value(j) < 0)
    return 0;
  *out = (uint64_t)json_integer_value(j);
  return 1;
}

/* Parses one tensor entry of the header into *t (t->name already set). */
static int parse_entry(const char *path, uint64_t data_bytes, const json_t *v, ms__st_tensor_t *t) {
  const char *name = t->name;
  if (!json_is_object(v))
    return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": header entry is not an object", path,
                    name);
  const json_t *jd = json_object_get(v, "dtype");
  const json_t *js = json_object_get(v, "shape");
  const json_t *jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd) || !json_is_array(js) || !json_is_array(jo))
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": header entry needs \"dtype\" (string), \"shape\" and "
                    "\"data_offsets\" (arrays)",
                    path, name);
  const char *ds = json_string_value(jd);
  int found = 0;
  for (int i = 0; i < MS__ST_NDTYPES; i++)
    if (strcmp(ds, dtypes[i].name) == 0) {
      t->dtype = (ms__st_dtype_t)i;
      found = 1;
    }
  if (!found)
    return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": unknown dtype \"%.32s\"", path, name, ds);
  size_t nd = json_array_size(js);
  if (nd > MS__ST_MAX_DIMS)
    return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": %zu dimensions (at most %d)", path, name,
                    nd, MS__ST_MAX_DIMS);
  t->ndim = (int)nd;
  t->numel = 1;
  for (size_t i = 0; i < nd; i++) {
    if (!json_u64(json_array_get(js, i), &t->shape[i]))
      return ms__fail(MEMSLEEP_EINVAL,
                      "%s: tensor \"%s\": shape[%zu] is not a non-negative integer", path, name, i);
    if (__builtin_mul_overflow(t->numel, t->shape[i], &t->numel))
      return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": shape overflows", path, name);
  }
  uint64_t bytes;
  if (__builtin_mul_overflow(t->numel, (uint64_t)dtypes[t->dtype].bytes, &bytes))
    return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": shape overflows", path, name);
  if (json_array_size(jo) != 2 || !json_u64(json_array_get(jo, 0), &t->begin_bytes) ||
      !json_u64(json_array_get(jo, 1), &t->end_bytes))
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": data_offsets must be two non-negative integers", path,
                    name);
  if (t->begin_bytes > t->end_bytes)
    return ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": data_offsets [%llu, %llu] run backwards",
                    path, name, (unsigned long long)t->begin_bytes,
                    (unsigned long long)t->end_bytes);
  if (t->end_bytes > data_bytes)
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": data_offsets [%llu, %llu] run past the end of the data "
                    "(%llu bytes): file truncated?",
                    path, name, (unsigned long long)t->begin_bytes,
                    (unsigned long long)t->end_bytes, (unsigned long long)data_bytes);
  if (t->end_bytes - t->begin_bytes != bytes)
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": data_offsets hold %llu bytes but %s of %llu elements "
                    "needs %llu",
                    path, name, (unsigned long long)(t->end_bytes - t->begin_bytes), ds,
                    (unsigned long long)t->numel, (unsigned long long)bytes);
  return 0;
}

/* Parses the JSON header text into f->tensors. */
static int parse_header(ms__st_file_t *f, const char *text, size_t len) {
  json_error_t jerr;
  json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
  if (!root)
    return ms__fail(MEMSLEEP_EINVAL, "%s: malformed JSON header: %s (header byte %d)", f->path,
                    jerr.text, jerr.position);
  int rc = 0;
  if (!json_is_object(root)) {
    rc = ms__fail(MEMSLEEP_EINVAL, "%s: malformed header: not a JSON object", f->path);
    goto out;
  }
  size_t cap = json_object_size(root);
  f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
  if (!f->tensors) {
    rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory for %zu tensor entries", f->path, cap);
    goto out;
  }
  uint64_t data_bytes = f->file_bytes - f->data_start;
  const char *key;
  json_t *v;
  json_object_foreach(root, key, v) {
    if (strcmp(key, "__metadata__") == 0) {
      if (!json_is_object(v)) {
        rc = ms__fail(MEMSLEEP_EINVAL, "%s: malformed header: __metadata__ is not an object",
                      f->path);
        goto out;
      }
      continue;
    }
    ms__st_tensor_t *t = &f->tensors[f->ntensors];
    t->name = strdup(key);
    if (!t->name) {
      rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory for tensor names", f->path);
      goto out;
    }
    f->ntensors++;
    rc = parse_entry(f->path, data_bytes, v, t);
    if (rc)
      goto out;
  }
  qsort(f->tensors, f->ntensors, sizeof *f->tensors, cmp_tensor_name);

  /* No two tensors may share bytes (empty ones take none). */
  if (f->ntensors > 1) {
    const ms__st_tensor_t **by = malloc(f->ntensors * sizeof *by);
    if (!by) {
      rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory to check offsets", f->path);
      goto out;
    }
    size_t n = 0;
    for (size_t i = 0; i < f->ntensors; i++)
      if (f->tensors[i].end_bytes > f->tensors[i].begin_bytes)
        by[n++] = &f->tensors[i];
    qsort(by, n, sizeof *by, cmp_tensor_begin);
    for (size_t i = 1; i < n && rc == 0; i++)
      if (by[i]->begin_bytes < by[i - 1]->end_bytes)
        rc = ms__fail(MEMSLEEP_EINVAL,
                      "%s: tensor \"%s\": data_offsets [%llu, %llu] overlap tensor \"%s\" "
                      "[%llu, %llu]",
                      f->path, by[i]->name, (unsigned long long)by[i]->begin_bytes,
                      (unsigned long long)by[i]->end_bytes, by[i - 1]->name,
                      (unsigned long long)by[i - 1]->begin_bytes,
                      (unsigned long long)by[i - 1]->end_bytes);
    free(by);
  }
out:
  json_decref(root);
  return rc;
}

/* Closes the descriptor and frees the names; *f reads as closed after. */
void ms__st_close(ms__st_file_t *f) {
  if (!f)
    return;
  if (f->fd >= 0)
    close(f->fd);
  for (size_t i = 0; i < f->ntensors; i++)
    free(f->tensors[i].name);
  free(f->tensors);
  free(f->path);
  memset(f, 0, sizeof *f);
  f->fd = -1;
}

/* Opens path: reads the length, checks it against the file and the limit,
 * then parses and checks the header. */
int ms__st_open(const char *path, ms__st_file_t *f) {
  memset(f, 0, sizeof *f);
  f->fd = -1;
  if (!path)
    return ms__fail(MEMSLEEP_EINVAL, "safetensors: NULL path");
  f->path = strdup(path);
  if (!f->path)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: no memory", path);
  int rc;
  f->fd = open(path, O_RDONLY | O_CLOEXEC);
  if (f->fd < 0) {
    rc = ms__fail(errno == ENOENT ? MEMSLEEP_ENOTFOUND : MEMSLEEP_EBACKEND, "%s: cannot open: %s",
                  path, strerror(errno));
    goto fail;
  }
  struct stat st;
  if (fstat(f->fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = ms__fail(MEMSLEEP_EINVAL, "%s: not a regular file", path);
    goto fail;
  }
  f->file_bytes = (uint64_t)st.st_size;
  if (f->file_bytes < 8) {
    rc = ms__fail(MEMSLEEP_EINVAL,
                  "%s: truncated: %llu bytes, too short for the 8-byte header length", path,
                  (unsigned long long)f->file_bytes);
    goto fail;
  }
  unsigned char lenb[8];
  rc = read_at(f->fd, lenb, 8, 0, path, "header length");
  if (rc)
    goto fail;
  uint64_t hlen = 0;
  for (int i = 7; i >= 0; i--)
    hlen = (hlen << 8) | lenb[i];
  if (hlen < 2 || hlen > MS__ST_HEADER_MAX_BYTES) {
    rc = ms__fail(MEMSLEEP_EINVAL,
                  "%s: header length %llu is absurd (must be 2..%llu): not a safetensors file?",
                  path, (unsigned long long)hlen, (unsigned long long)MS__ST_HEADER_MAX_BYTES);
    goto fail;
  }
  if (hlen > f->file_bytes - 8) {
    rc =
        ms__fail(MEMSLEEP_EINVAL, "%s: truncated: header length %llu but only %llu bytes follow it",
                 path, (unsigned long long)hlen, (unsigned long long)(f->file_bytes - 8));
    goto fail;
  }
  f->data_start = 8 + hlen;
  char *text = malloc((size_t)hlen);
  if (!text) {
    rc = ms__fail(MEMSLEEP_ENOMEM, "%s: no memory for a %llu-byte header", path,
                  (unsigned long long)hlen);
    goto fail;
  }
  rc = read_at(f->fd, text, (size_t)hlen, 8, path, "header");
  if (rc == 0) {
    if (text[0] != '{')
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: malformed header: does not start with '{'", path);
    else
      rc = parse_header(f, text, (size_t)hlen);
  }
  free(text);
  if (rc)
    goto fail;
  return 0;
fail:
  ms__st_close(f);
  return rc;
}

/* Binary search: the tensors are sorted by name when the file opens. */
const ms__st_tensor_t *ms__st_find(const ms__st_file_t *f, const char *name) {
  if (!f || !name || f->ntensors == 0)
    return NULL;
  ms__st_tensor_t key = {.name = (char *)name};
  return bsearch(&key, f->tensors, f->ntensors, sizeof *f->tensors, cmp_tensor_name);
}

/* F32 is read straight into dst; F16/BF16 through a bounce buffer of
 * CHUNK_BYTES and converted. Offsets were checked at open; a short read now
 * means the file changed underneath (EINVAL, "truncated"). */
int ms__st_read_f32(const ms__st_file_t *f, const ms__st_tensor_t *t, float *dst,
                    void (*progress)(size_t done_bytes, void *user), void *user) {
  if (!ms__st_dtype_convertible(t->dtype))
    return ms__fail(MEMSLEEP_EINVAL,
                    "%s: tensor \"%s\": dtype %s is not supported (F32, F16 or BF16)", f->path,
                    t->name, ms__st_dtype_name(t->dtype));
  char what[320];
  snprintf(what, sizeof what, "tensor \"%s\"", t->name);
  uint64_t off = f->data_start + t->begin_bytes;
  uint64_t n = t->numel;
  if (t->dtype == MS__ST_F32) {
    /* Straight into place, a chunk at a time (for progress). */
    size_t per = CHUNK_BYTES / 4;
    for (uint64_t i = 0; i < n; i += per) {
      size_t k = (size_t)(n - i < per ? n - i : per);
      int rc = read_at(f->fd, dst + i, k * 4, off + i * 4, f->path, what);
      if (rc)
        return rc;
      if (progress)
        progress((size_t)(i + k) * 4, user);
    }
    return 0;
  }
  size_t per = CHUNK_BYTES / 2;
  uint64_t cap = n < per ? n : per;
  unsigned char *buf = malloc(cap ? (size_t)cap * 2 : 1);
  if (!buf)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: tensor \"%s\": no memory for a read buffer", f->path,
                    t->name);
  int bf = t->dtype == MS__ST_BF16;
  for (uint64_t i = 0; i < n; i += per) {
    size_t k = (size_t)(n - i < per ? n - i : per);
    int rc = read_at(f->fd, buf, k * 2, off + i * 2, f->path, what);
    if (rc) {
      free(buf);
      return rc;
    }
    float *d = dst + i;
    for (size_t j = 0; j < k; j++) {
      uint16_t h = (uint16_t)(buf[2 * j] | (buf[2 * j + 1] << 8));
      d[j] = bf ? ms__bf16_to_f32(h) : ms__f16_to_f32(h);
    }
    if (progress)
      progress((size_t)(i + k) * 4, user);
  }
  free(buf);
  return 0;
}

/* ---- writer ---- */

typedef struct order_t {
  const ms__st_spec_t *spec;
  size_t index;
  uint64_t numel, begin_bytes, end_bytes;
} order_t;

static int cmp_order(const void *a, const void *b) {
  return strcmp(((const order_t *)a)->spec->name, ((const order_t *)b)->spec->name);
}

/* Builds the header JSON (sorted keys) for ord[0..n) into a malloc'd,
 * space-padded string of *len bytes (a multiple of 8). */
static int build_header(const char *path, const order_t *ord, size_t n, char **out, size_t *len) {
  json_t *root = json_object();
  json_t *meta = json_pack("{s:s}", "format", "pt");
  int bad = !root || !meta || json_object_set_new(root, "__metadata__", meta) != 0;
  for (size_t i = 0; i < n && !bad; i++) {
    json_t *shape = json_array();
    bad = !shape;
    for (int d = 0; d < ord[i].spec->ndim && !bad; d++)
      bad = json_array_append_new(shape, json_integer((json_int_t)ord[i].spec->shape[d])) != 0;
    json_t *e = json_pack("{s:s,s:o,s:[I,I]}", "dtype", ms__st_dtype_name(ord[i].spec->dtype),
                          "shape", shape, "data_offsets", (json_int_t)ord[i].begin_bytes,
                          (json_int_t)ord[i].end_bytes);
    bad = bad || !e || json_object_set_new(root, ord[i].spec->name, e) != 0;
  }
  char *text = bad ? NULL : json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(root);
  if (!text)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: could not build the header", path);
  size_t tl = strlen(text);
  size_t padded = (tl + 7) / 8 * 8;
  char *p = realloc(text, padded + 1);
  if (!p) {
    free(text);
    return ms__fail(MEMSLEEP_ENOMEM, "%s: could not build the header", path);
  }
  memset(p + tl, ' ', padded - tl);
  p[padded] = '\0';
  *out = p;
  *len = padded;
  return 0;
}

/* Sorts the specs by name, computes the offsets, writes the length, the
 * padded header and each tensor's converted values in that order. */
int ms__st_write(const char *path, const ms__st_spec_t *specs, size_t n, ms__st_fill_fn fill,
                 void *user, uint64_t *written_bytes) {
  if (!path || (!specs && n) || !fill)
    return ms__fail(MEMSLEEP_EINVAL, "ms__st_write: NULL argument");
  order_t *ord = calloc(n ? n : 1, sizeof *ord);
  if (!ord)
    return ms__fail(MEMSLEEP_ENOMEM, "%s: no memory", path);
  int rc = 0;
  for (size_t i = 0; i < n && rc == 0; i++) {
    ord[i].spec = &specs[i];
    ord[i].index = i;
    ord[i].numel = 1;
    if (!ms__st_dtype_convertible(specs[i].dtype) || specs[i].ndim < 0 ||
        specs[i].ndim > MS__ST_MAX_DIMS)
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\": cannot write dtype %s / %d dims", path,
                    specs[i].name, ms__st_dtype_name(specs[i].dtype), specs[i].ndim);
    for (int d = 0; d < specs[i].ndim && rc == 0; d++)
      ord[i].numel *= specs[i].shape[d];
  }
  if (rc) {
    free(ord);
    return rc;
  }
  qsort(ord, n, sizeof *ord, cmp_order);
  uint64_t at = 0;
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && strcmp(ord[i].spec->name, ord[i - 1].spec->name) == 0) {
      rc = ms__fail(MEMSLEEP_EINVAL, "%s: tensor \"%s\" named twice", path, ord[i].spec->name);
      free(ord);
      return rc;
    }
    ord[i].begin_bytes = at;
    at += ord[i].numel * ms__st_dtype_bytes(ord[i].spec->dtype);
    ord[i].end_bytes = at;
  }
  char *header = NULL;
  size_t hlen = 0;
  rc = build_header(path, ord, n, &header, &hlen);
  if (rc) {
    free(ord);
    return rc;
  }
  FILE *fp = fopen(path, "wb");
  if (!fp) {
    rc = ms__fail(MEMSLEEP_EBACKEND, "%s: cannot create: %s", path, strerror(errno));
    free(header);
    free(ord);
    return rc;
  }
  unsigned char lenb[8];
  for (int i = 0; i < 8; i++)
    lenb[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
  if (fwrite(lenb, 1, 8, fp) != 8 || fwrite(header, 1, hlen, fp) != hlen)
    rc = ms__fail(MEMSLEEP_EBACKEND, "%s: writing the header: %s", path, strerror(errno));
  free(header);
  float *vals = NULL;
  uint16_t *half = NULL;
  for (size_t i = 0; i < n && rc == 0; i++) {
    const ms__st_spec_t *s = ord[i].spec;
    uint64_t k = ord[i].numel;
    if (k > SIZE_MAX / 4) {
      rc = ms__fail(MEMSLEEP_ENOMEM, "%s: tensor \"%s\" too large", path, s->name);
      break;
    }
    free(vals);
    free(half);
    half = NULL;
    vals = malloc(k ? (size_t)k * 4 : 4);
    if (!vals || (s->dtype != MS__ST_F32 && !(half = malloc(k ? (size_t)k * 2 : 2)))) {
      rc = ms__fail(MEMSLEEP_ENOMEM, "%s: tensor \"%s\": no memory for %llu values", path, s->name,
                    (unsigned long long)k);
      break;
    }
    rc = fill(ord[i].index, vals, k, user);
    if (rc)
      break;
    size_t wrote;
    if (s->dtype == MS__ST_F32) {
      wrote = fwrite(vals, 4, (size_t)k, fp);
    } else {
      for (uint64_t j = 0; j < k; j++)
        half[j] = s->dtype == MS__ST_F16 ? ms__f32_to_f16(vals[j]) : ms__f32_to_bf16(vals[j]);
      wrote = fwrite(half, 2, (size_t)k, fp);
    }
    if (wrote != k)
      rc = ms__fail(MEMSLEEP_EBACKEND, "%s: tensor \"%s\": write failed: %s", path, s->name,
                    strerror(errno));
  }
  free(vals);
  free(half);
  free(ord);
  if (fclose(fp) != 0 && rc == 0)
    rc = ms__fail(MEMSLEEP_EBACKEND, "%s: write failed: %s", path, strerror(errno));
  if (rc) {
    unlink(path);
    return rc;
  }
  if (written_bytes)
    *written_bytes = 8 + hlen + at;
  return 0;
}
