/*
 * test_model_safetensors.c - the safetensors reader on files written by hand.
 *
 * Proves that F32, F16 and BF16 data read back as the exact float32 values
 * they encode (known bit patterns, every 16-bit pattern round-tripping,
 * rounding to nearest even on the way down), and that every way a file can
 * be broken (too short, an absurd header length, a header running past the
 * end, malformed JSON, offsets past the end or overlapping, a byte count
 * that does not match the shape, an unconvertible dtype) is an error whose
 * message names the file and, where one is at fault, the tensor.
 */
#include <math.h>

#include "test_model_helpers.h"

/* Writes a safetensors file: the length of header, header, then n bytes
 * of data. */
static void write_st(const char *path, const char *header, const void *data, size_t n) {
  size_t hl = strlen(header);
  unsigned char *buf = malloc(8 + hl + n + 1);
  assert_non_null(buf);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(buf + 8, header, hl);
  if (n)
    memcpy(buf + 8 + hl, data, n);
  tm_write_file(path, buf, 8 + hl + n);
  free(buf);
}

static float bits(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

static void test_f16_known_values(void **state) {
  (void)state;
  assert_true(ms__f16_to_f32(0x3c00) == 1.0f);
  assert_true(ms__f16_to_f32(0xc000) == -2.0f);
  assert_true(ms__f16_to_f32(0x7bff) == 65504.0f);
  assert_true(ms__f16_to_f32(0x0400) == ldexpf(1.0f, -14));
  assert_true(ms__f16_to_f32(0x0001) == ldexpf(1.0f, -24));
  assert_true(ms__f16_to_f32(0x03ff) == ldexpf(1023.0f, -24));
  assert_true(ms__f16_to_f32(0x3555) == 0.333251953125f);
  assert_true(ms__f16_to_f32(0x7c00) == INFINITY);
  assert_true(ms__f16_to_f32(0xfc00) == -INFINITY);
  assert_true(isnan(ms__f16_to_f32(0x7e00)));
  assert_true(signbit(ms__f16_to_f32(0x8000)) && ms__f16_to_f32(0x8000) == 0.0f);

  assert_int_equal(ms__f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(ms__f32_to_f16(-2.0f), 0xc000);
  assert_int_equal(ms__f32_to_f16(1.0f / 3.0f), 0x3555);
  assert_int_equal(ms__f32_to_f16(65504.0f), 0x7bff);
  assert_int_equal(ms__f32_to_f16(65519.0f), 0x7bff);
  assert_int_equal(ms__f32_to_f16(65520.0f), 0x7c00); /* the tie goes to even: Inf */
  assert_int_equal(ms__f32_to_f16(1e9f), 0x7c00);
  assert_int_equal(ms__f32_to_f16(-INFINITY), 0xfc00);
  assert_int_equal(ms__f32_to_f16(NAN) & 0x7c00, 0x7c00);
  assert_true((ms__f32_to_f16(NAN) & 0x3ff) != 0);
  /* Ties to even: 1 + 2^-11 sits between 0x3c00 and 0x3c01. */
  assert_int_equal(ms__f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);
  assert_int_equal(ms__f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
  assert_int_equal(ms__f32_to_f16(1.0f + ldexpf(1.0f, -11) + ldexpf(1.0f, -20)), 0x3c01);
  /* Subnormals: 2^-25 ties to 0, 1.5 * 2^-25 rounds up to the smallest. */
  assert_int_equal(ms__f32_to_f16(ldexpf(1.0f, -25)), 0x0000);
  assert_int_equal(ms__f32_to_f16(ldexpf(3.0f, -26)), 0x0001);
  assert_int_equal(ms__f32_to_f16(ldexpf(3.0f, -25)), 0x0002);    /* 1.5 ulp: tie to even */
  assert_int_equal(ms__f32_to_f16(ldexpf(1023.5f, -24)), 0x0400); /* carries into normal */
  assert_int_equal(ms__f32_to_f16(-ldexpf(1.0f, -30)), 0x8000);
  assert_int_equal(ms__f32_to_f16(bits(0x00000001)), 0x0000); /* f32 subnormal */
}

/* Every non-NaN half value survives f16 -> f32 -> f16. */
static void test_f16_round_trip_every_pattern(void **state) {
  (void)state;
  for (uint32_t h = 0; h <= 0xffff; h++) {
    float f = ms__f16_to_f32((uint16_t)h);
    if (isnan(f)) {
      assert_true(((h >> 10) & 0x1f) == 0x1f && (h & 0x3ff) != 0);
      continue;
    }
    if (ms__f32_to_f16(f) != h)
      fail_msg("f16 0x%04x -> %g -> 0x%04x", h, (double)f, ms__f32_to_f16(f));
  }
}

static void test_bf16_known_values(void **state) {
  (void)state;
  assert_true(ms__bf16_to_f32(0x3f80) == 1.0f);
  assert_true(ms__bf16_to_f32(0xc040) == -3.0f);
  assert_true(ms__bf16_to_f32(0x7f80) == INFINITY);
  assert_true(ms__bf16_to_f32(0x0001) == bits(0x00010000));
  assert_true(ms__bf16_to_f32(0x3eab) == bits(0x3eab0000));
  assert_int_equal(ms__f32_to_bf16(1.0f), 0x3f80);
  assert_int_equal(ms__f32_to_bf16(1.0f / 3.0f), 0x3eab);                 /* 0x3eaaaaab rounds up */
  assert_int_equal(ms__f32_to_bf16(1.0f + ldexpf(1.0f, -8)), 0x3f80);     /* tie: even */
  assert_int_equal(ms__f32_to_bf16(1.0f + 3 * ldexpf(1.0f, -8)), 0x3f82); /* tie: even */
  assert_int_equal(ms__f32_to_bf16(bits(0x7f7fffff)), 0x7f80);            /* rounds to Inf */
  assert_true(isnan(ms__bf16_to_f32(ms__f32_to_bf16(NAN))));
  for (uint32_t b = 0; b <= 0xffff; b++) {
    float f = ms__bf16_to_f32((uint16_t)b);
    if (!isnan(f) && ms__f32_to_bf16(f) != b)
      fail_msg("bf16 0x%04x -> %g -> 0x%04x", b, (double)f, ms__f32_to_bf16(f));
  }
}

/* Three tensors, one of each dtype, written by hand, read back exactly. */
static void test_read_each_dtype_exact(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  const char *path = tm_path(dir, "t.safetensors");
  unsigned char data[8 + 8 + 6];
  float f32[2] = {1.5f, -0.125f};
  memcpy(data, f32, 8);
  uint16_t f16[4] = {0x3c00, 0xc000, 0x3555, 0x0001};
  uint16_t bf[3] = {0x3f80, 0xc040, 0x3eab};
  for (int i = 0; i < 4; i++) { /* little-endian */
    data[8 + 2 * i] = (unsigned char)(f16[i] & 0xff);
    data[8 + 2 * i + 1] = (unsigned char)(f16[i] >> 8);
  }
  for (int i = 0; i < 3; i++) {
    data[16 + 2 * i] = (unsigned char)(bf[i] & 0xff);
    data[16 + 2 * i + 1] = (unsigned char)(bf[i] >> 8);
  }
  write_st(path,
           "{\"__metadata__\":{\"format\":\"pt\"},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
           "\"b\":{\"dtype\":\"F16\",\"shape\":[2,2],\"data_offsets\":[8,16]},"
           "\"c\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]}}   ",
           data, sizeof data);
  ms__st_file_t f;
  assert_int_equal(ms__st_open(path, &f), 0);
  assert_int_equal(f.ntensors, 3);
  const ms__st_tensor_t *a = ms__st_find(&f, "a"), *b = ms__st_find(&f, "b"),
                        *c = ms__st_find(&f, "c");
  assert_non_null(a);
  assert_non_null(b);
  assert_non_null(c);
  assert_null(ms__st_find(&f, "d"));
  assert_int_equal(b->ndim, 2);
  assert_int_equal(b->shape[0], 2);
  assert_int_equal(b->numel, 4);
  float out[4];
  assert_int_equal(ms__st_read_f32(&f, a, out, NULL, NULL), 0);
  assert_true(out[0] == 1.5f && out[1] == -0.125f);
  assert_int_equal(ms__st_read_f32(&f, b, out, NULL, NULL), 0);
  assert_true(out[0] == 1.0f && out[1] == -2.0f && out[2] == 0.333251953125f &&
              out[3] == ldexpf(1.0f, -24));
  assert_int_equal(ms__st_read_f32(&f, c, out, NULL, NULL), 0);
  assert_true(out[0] == 1.0f && out[1] == -3.0f && out[2] == bits(0x3eab0000));
  ms__st_close(&f);
  tm_rmdir(dir);
}

/* The writer's files read back through the reader, in every dtype. */
static int fill_ramp(size_t i, float *dst, uint64_t n, void *user) {
  (void)user;
  for (uint64_t j = 0; j < n; j++)
    dst[j] = (float)(i + 1) * ((float)j - 3.25f) / 7.0f;
  return 0;
}

static void test_writer_round_trip(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  const ms__st_dtype_t dts[] = {MS__ST_F32, MS__ST_F16, MS__ST_BF16};
  for (int d = 0; d < 3; d++) {
    ms__st_spec_t specs[2] = {{"z.weight", dts[d], 2, {3, 5}}, {"a.bias", dts[d], 1, {7}}};
    const char *path = tm_path(dir, "w.safetensors");
    uint64_t bytes = 0;
    assert_int_equal(ms__st_write(path, specs, 2, fill_ramp, NULL, &bytes), 0);
    size_t n;
    char *raw = tm_read_file(path, &n);
    assert_int_equal(bytes, n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
      hl = (hl << 8) | (unsigned char)raw[i];
    assert_int_equal(hl % 8, 0);
    assert_true(strncmp(raw + 8, "{\"__metadata__\":{\"format\":\"pt\"},\"a.bias\"", 40) == 0);
    free(raw);
    ms__st_file_t f;
    assert_int_equal(ms__st_open(path, &f), 0);
    for (size_t i = 0; i < 2; i++) {
      const ms__st_tensor_t *t = ms__st_find(&f, specs[i].name);
      assert_non_null(t);
      assert_int_equal(t->dtype, dts[d]);
      float got[15], want[15];
      fill_ramp(i, want, t->numel, NULL);
      assert_int_equal(ms__st_read_f32(&f, t, got, NULL, NULL), 0);
      for (uint64_t j = 0; j < t->numel; j++) {
        float w = d == 0   ? want[j]
                  : d == 1 ? ms__f16_to_f32(ms__f32_to_f16(want[j]))
                           : ms__bf16_to_f32(ms__f32_to_bf16(want[j]));
        assert_true(got[j] == w);
      }
    }
    ms__st_close(&f);
  }
  tm_rmdir(dir);
}

/* Opens path expecting code, with a message naming the file and every
 * extra string given. */
static void expect_open_fails(const char *path, int code, const char *s1, const char *s2) {
  ms__st_file_t f;
  int rc = ms__st_open(path, &f);
  if (rc != code)
    fail_msg("open %s gave %d (%s), expected %d", path, rc, memsleep_last_error(), code);
  assert_int_equal(f.fd, -1);
  assert_null(f.tensors);
  tm_assert_error_names(path, s1, s2, NULL);
}

static const char good_header[] =
    "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
    "\"v\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}";
static const float good_data[6] = {1, 2, 3, 4, 5, 6};

static void test_error_truncated(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  const char *path = tm_path(dir, "cut.safetensors");
  char p[4096];
  snprintf(p, sizeof p, "%s", path);
  /* Cut inside the data: the tensor whose bytes are gone is named. */
  write_st(p, good_header, good_data, 20);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"v\"", "past the end");
  /* Cut inside the header. */
  write_st(p, good_header, good_data, 24);
  assert_int_equal(truncate(p, 30), 0);
  expect_open_fails(p, MEMSLEEP_EINVAL, "truncated", "header length");
  /* Shorter than the length field itself, and empty. */
  tm_write_file(p, "\x10\x00\x00", 3);
  expect_open_fails(p, MEMSLEEP_EINVAL, "truncated", NULL);
  tm_write_file(p, "", 0);
  expect_open_fails(p, MEMSLEEP_EINVAL, "truncated", NULL);
  tm_rmdir(dir);
}

static void test_error_absurd_header_length(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "big.safetensors"));
  unsigned char buf[64] = {0};
  buf[5] = 0x01; /* 2^40 bytes */
  memcpy(buf + 8, "{}", 2);
  tm_write_file(p, buf, sizeof buf);
  expect_open_fails(p, MEMSLEEP_EINVAL, "header length 1099511627776", "absurd");
  memset(buf, 0xff, 8); /* 2^64 - 1 */
  tm_write_file(p, buf, sizeof buf);
  expect_open_fails(p, MEMSLEEP_EINVAL, "absurd", NULL);
  tm_rmdir(dir);
}

static void test_error_malformed_json(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "bad.safetensors"));
  write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]", good_data, 16);
  expect_open_fails(p, MEMSLEEP_EINVAL, "malformed JSON", NULL);
  write_st(p, "[1,2,3]", good_data, 0);
  expect_open_fails(p, MEMSLEEP_EINVAL, "malformed", NULL);
  write_st(p,
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
           "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
           good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "malformed JSON", NULL); /* duplicate key */
  write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "shape");
  write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2]}}", good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "data_offsets");
  tm_rmdir(dir);
}

static void test_error_offsets(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "off.safetensors"));
  /* Past the end of the data. */
  write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", good_data, 16);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "past the end");
  /* Overlapping. */
  write_st(p,
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
           "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
           good_data, 16);
  expect_open_fails(p, MEMSLEEP_EINVAL, "overlap", "\"a\"");
  /* Byte count not the shape's. */
  write_st(p, "{\"w\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,8]}}", good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "needs 6");
  /* Backwards. */
  write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,0]}}", good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "backwards");
  /* A shape whose element count overflows. */
  write_st(p,
           "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}",
           good_data, 8);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"w\"", "overflow");
  tm_rmdir(dir);
}

static void test_error_dtype(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "i8.safetensors"));
  /* A valid I8 tensor opens (the format allows it) but does not convert. */
  write_st(p, "{\"q\":{\"dtype\":\"I8\",\"shape\":[4],\"data_offsets\":[0,4]}}", good_data, 4);
  ms__st_file_t f;
  assert_int_equal(ms__st_open(p, &f), 0);
  float out[4];
  assert_int_equal(ms__st_read_f32(&f, ms__st_find(&f, "q"), out, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names(p, "tensor \"q\"", "I8", NULL);
  ms__st_close(&f);
  /* An unknown dtype is refused when opening. */
  write_st(p, "{\"q\":{\"dtype\":\"Q4_K\",\"shape\":[4],\"data_offsets\":[0,4]}}", good_data, 4);
  expect_open_fails(p, MEMSLEEP_EINVAL, "tensor \"q\"", "Q4_K");
  tm_rmdir(dir);
}

static void test_error_missing_file(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "nothing.safetensors"));
  expect_open_fails(p, MEMSLEEP_ENOTFOUND, "cannot open", NULL);
  tm_rmdir(dir);
}

/* A file that shrinks after it was opened is an error, not a SIGBUS. */
static void test_file_shrinks_after_open(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char p[4096];
  snprintf(p, sizeof p, "%s", tm_path(dir, "shrink.safetensors"));
  write_st(p, good_header, good_data, 24);
  ms__st_file_t f;
  assert_int_equal(ms__st_open(p, &f), 0);
  assert_int_equal(truncate(p, 8 + (off_t)strlen(good_header) + 4), 0);
  float out[4];
  assert_int_equal(ms__st_read_f32(&f, ms__st_find(&f, "w"), out, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names(p, "tensor \"w\"", "truncated", NULL);
  ms__st_close(&f);
  tm_rmdir(dir);
}

/* Random damage to a valid file's first bytes (the length and the header)
 * never crashes: the file is refused, or it opens and every tensor it then
 * lists reads back within the file. */
static void test_random_damage_never_crashes(void **state) {
  (void)state;
  char *dir = tm_mkdtemp();
  char good[4096], bad[4096];
  snprintf(good, sizeof good, "%s", tm_path(dir, "good.safetensors"));
  snprintf(bad, sizeof bad, "%s", tm_path(dir, "bad.safetensors"));
  ms__st_spec_t specs[3] = {{"layer.weight", MS__ST_F16, 2, {4, 6}},
                            {"layer.bias", MS__ST_BF16, 1, {4}},
                            {"norm", MS__ST_F32, 1, {6}}};
  assert_int_equal(ms__st_write(good, specs, 3, fill_ramp, NULL, NULL), 0);
  size_t n;
  char *orig = tm_read_file(good, &n);
  uint64_t rng = 12345;
  int opened = 0;
  for (int iter = 0; iter < 3000; iter++) {
    char *buf = malloc(n);
    assert_non_null(buf);
    memcpy(buf, orig, n);
    int flips = 1 + iter % 3;
    for (int k = 0; k < flips; k++) {
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      size_t at = (size_t)(rng >> 33) % (n < 300 ? n : 300);
      rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
      static const char json_chars[] = "0123456789[]{},:\"\\ -";
      buf[at] = iter % 5 == 0 ? json_chars[(rng >> 40) % 20] : (char)(rng >> 40);
    }
    size_t len = iter % 7 == 0 ? (size_t)(rng >> 20) % n : n; /* sometimes cut short too */
    tm_write_file(bad, buf, len);
    free(buf);
    ms__st_file_t f;
    if (ms__st_open(bad, &f) != 0) {
      assert_true(strstr(memsleep_last_error(), bad) != NULL);
      continue;
    }
    opened++;
    for (size_t i = 0; i < f.ntensors; i++) {
      const ms__st_tensor_t *t = &f.tensors[i];
      assert_true(f.data_start + t->end_bytes <= f.file_bytes);
      if (!ms__st_dtype_convertible(t->dtype) || t->numel > 4096)
        continue;
      float *out = malloc((size_t)t->numel * sizeof(float) + 1);
      assert_int_equal(ms__st_read_f32(&f, t, out, NULL, NULL), 0);
      free(out);
    }
    ms__st_close(&f);
  }
  assert_true(opened > 0); /* some damage (inside the data) is harmless */
  free(orig);
  tm_rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_f16_known_values),
      cmocka_unit_test(test_f16_round_trip_every_pattern),
      cmocka_unit_test(test_bf16_known_values),
      cmocka_unit_test(test_read_each_dtype_exact),
      cmocka_unit_test(test_writer_round_trip),
      cmocka_unit_test(test_error_truncated),
      cmocka_unit_test(test_error_absurd_header_length),
      cmocka_unit_test(test_error_malformed_json),
      cmocka_unit_test(test_error_offsets),
      cmocka_unit_test(test_error_dtype),
      cmocka_unit_test(test_error_missing_file),
      cmocka_unit_test(test_file_shrinks_after_open),
      cmocka_unit_test(test_random_damage_never_crashes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
