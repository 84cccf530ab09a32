/*
 * test_model_reload.c - weights in memsleep memory: reload in place, sleep.
 *
 * Proves what update_weights_from_disk and the sleep/wake endpoints rely
 * on: a reload writes new values at the same addresses; a reload from a
 * directory with other shapes, a broken file or a missing tensor fails
 * before a byte changes; a reload while the weights sleep is refused; the
 * weights live in tag "weights" with MEMSLEEP_BACKUP and come back byte for
 * byte after release/resume, the model's pointers still valid.
 */
#include "test_model_helpers.h"

#define TENSORS_MAX 64

/* A malloc'd copy of every tensor of m, concatenated. */
static float *snapshot(const ms__model_t *m, size_t *total) {
  float *p[TENSORS_MAX];
  size_t len[TENSORS_MAX];
  size_t n = tm_tensors_of(m, p, len), sum = 0;
  for (size_t i = 0; i < n; i++)
    sum += len[i];
  float *s = malloc(sum * sizeof(float)), *at = s;
  assert_non_null(s);
  for (size_t i = 0; i < n; i++) {
    memcpy(at, p[i], len[i] * sizeof(float));
    at += len[i];
  }
  *total = sum;
  return s;
}

static void assert_same_as(const ms__model_t *m, const float *snap, size_t total) {
  size_t t2;
  float *now = snapshot(m, &t2);
  assert_int_equal(t2, total);
  assert_memory_equal(now, snap, total * sizeof(float));
  free(now);
}

static void load_ok(const char *dir, const char *tag, ms__model_t *m) {
  int rc = ms__model_load(dir, tag, MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, m);
  if (rc)
    fail_msg("load %s: %d %s", dir, rc, memsleep_last_error());
}

/* Reload with another seed: same addresses, the new model's values. */
static void test_reload_in_place_keeps_addresses(void **state) {
  (void)state;
  for (int a = 0; a < 3; a++) {
    char *d1 = tm_mkdtemp(), *d2 = tm_mkdtemp();
    tm_write_model(d1, (ms__arch_t)a, MS__WDTYPE_F32, 1, 1);
    tm_write_model(d2, (ms__arch_t)a, MS__WDTYPE_BF16, 2, 2); /* other dtype, sharded */
    tm_patch_file(tm_path(d2, "config.json"), "\"rope_theta\": 10000.0",
                  "\"rope_theta\": 500000.0");
    ms__model_t m, ref;
    load_ok(d1, "weights", &m);
    load_ok(d2, "reference", &ref);
    float *before[TENSORS_MAX];
    size_t len[TENSORS_MAX];
    size_t n = tm_tensors_of(&m, before, len);
    size_t t1;
    float *old = snapshot(&m, &t1);
    ms__layer_t *layers = m.layers;
    assert_int_equal(ms__model_reload(&m, d2, NULL, NULL), 0);
    float *after[TENSORS_MAX];
    assert_int_equal(tm_tensors_of(&m, after, len), n);
    for (size_t i = 0; i < n; i++)
      assert_ptr_equal(after[i], before[i]);
    assert_ptr_equal(m.layers, layers);
    size_t tr;
    float *want = snapshot(&ref, &tr);
    assert_same_as(&m, want, tr);
    assert_true(memcmp(old, want, t1 * sizeof(float)) != 0);
    assert_string_equal(m.dir, d2);
    assert_true(m.cfg.rope_theta == 500000.0f);
    free(old);
    free(want);
    ms__model_free(&m);
    ms__model_free(&ref);
    tm_rmdir(d1);
    tm_rmdir(d2);
  }
  tm_assert_nothing_allocated();
}

/* Every broken or mismatched directory: refused, nothing changed. */
static void test_reload_failures_change_nothing(void **state) {
  (void)state;
  char *d1 = tm_mkdtemp(), *bad = tm_mkdtemp();
  tm_write_model(d1, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  ms__model_t m;
  load_ok(d1, "weights", &m);
  size_t total;
  float *snap = snapshot(&m, &total);
  ms__model_config_t cfg = m.cfg;

  /* A different shape (hidden 128). */
  ms__model_spec_t s;
  ms__model_spec_default(&s, MS__ARCH_LLAMA);
  s.hidden_size = 128;
  s.seed = 9;
  assert_int_equal(ms__model_write_random(bad, &s, NULL, NULL, NULL, NULL), 0);
  assert_int_equal(ms__model_reload(&m, bad, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names(bad, "hidden_size is 128", "256", NULL);
  assert_same_as(&m, snap, total);
  assert_memory_equal(&m.cfg, &cfg, sizeof cfg);
  assert_string_equal(m.dir, d1);

  /* Another architecture with the same shapes (qwen2 untied: biases). */
  ms__model_spec_default(&s, MS__ARCH_QWEN2);
  s.tie_word_embeddings = 0;
  assert_int_equal(ms__model_write_random(bad, &s, NULL, NULL, NULL, NULL), 0);
  assert_int_equal(ms__model_reload(&m, bad, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names(bad, "architecture", NULL);
  assert_same_as(&m, snap, total);

  /* Same config, but the last file's data is cut short: found before any
   * tensor (the first ones included) is written. */
  tm_write_model(bad, MS__ARCH_LLAMA, MS__WDTYPE_F16, 5, 3);
  char shard[4200];
  snprintf(shard, sizeof shard, "%s/model-00003-of-00003.safetensors", bad);
  struct stat sb;
  assert_int_equal(stat(shard, &sb), 0);
  assert_int_equal(truncate(shard, sb.st_size - 2), 0);
  assert_int_equal(ms__model_reload(&m, bad, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names(shard, "past the end", NULL);
  assert_same_as(&m, snap, total);

  /* A missing tensor and a missing config. */
  tm_write_model(bad, MS__ARCH_LLAMA, MS__WDTYPE_F32, 5, 1);
  tm_patch_file(tm_path(bad, "model.safetensors"), "\"lm_head.weight\"", "\"lm_head.weighX\"");
  assert_int_equal(ms__model_reload(&m, bad, NULL, NULL), MEMSLEEP_EINVAL);
  tm_assert_error_names("model.safetensors", "lm_head.weight", "missing", NULL);
  assert_same_as(&m, snap, total);
  char cfgpath[4200];
  snprintf(cfgpath, sizeof cfgpath, "%s/config.json", bad);
  assert_int_equal(unlink(cfgpath), 0);
  assert_int_equal(ms__model_reload(&m, bad, NULL, NULL), MEMSLEEP_ENOTFOUND);
  tm_assert_error_names(cfgpath, NULL);
  assert_same_as(&m, snap, total);

  /* And the model still reloads from a good directory afterwards. */
  assert_int_equal(ms__model_reload(&m, d1, NULL, NULL), 0);
  assert_same_as(&m, snap, total);

  free(snap);
  ms__model_free(&m);
  tm_rmdir(d1);
  tm_rmdir(bad);
  tm_assert_nothing_allocated();
}

/* Tag "weights", MEMSLEEP_BACKUP: a release/resume cycle keeps every byte
 * at the same address; a reload while asleep is refused. */
static void test_weights_survive_release_resume(void **state) {
  (void)state;
  char *d = tm_mkdtemp();
  tm_write_model(d, MS__ARCH_QWEN2, MS__WDTYPE_F16, 4, 1);
  ms__model_t m;
  load_ok(d, "weights", &m);
  memsleep_stats_t st;
  assert_int_equal(memsleep_stats("weights", &st), 0);
  assert_int_equal(st.allocations, 1); /* every tensor in one allocation */
  assert_true(st.resident_bytes >= m.weight_bytes);
  size_t total;
  float *snap = snapshot(&m, &total);
  float *embed = m.embed, *wq3 = m.layers[3].wq;
  const char *tags[] = {"weights"};
  for (int cycle = 0; cycle < 2; cycle++) {
    assert_int_equal(memsleep_release(tags, 1), 0);
    assert_int_equal(memsleep_is_asleep("weights"), 1);
    assert_int_equal(memsleep_stats("weights", &st), 0);
    assert_int_equal(st.resident_bytes, 0);
    assert_true(st.backup_bytes >= m.weight_bytes);
    assert_int_equal(ms__model_reload(&m, d, NULL, NULL), MEMSLEEP_ESTATE);
    tm_assert_error_names("weights", "asleep", NULL);
    assert_int_equal(memsleep_resume(tags, 1), 0);
    assert_ptr_equal(m.embed, embed);
    assert_ptr_equal(m.layers[3].wq, wq3);
    assert_same_as(&m, snap, total);
  }
  free(snap);
  ms__model_free(&m);
  tm_rmdir(d);
  tm_assert_nothing_allocated();
}

/* Loading into a tag that is asleep fails cleanly (nothing left). */
static void test_load_into_sleeping_tag_fails(void **state) {
  (void)state;
  char *d = tm_mkdtemp();
  tm_write_model(d, MS__ARCH_LLAMA, MS__WDTYPE_F32, 1, 1);
  void *p = NULL;
  assert_int_equal(memsleep_alloc(&p, 4096, MEMSLEEP_HOST, "asleep-w", MEMSLEEP_BACKUP), 0);
  const char *tags[] = {"asleep-w"};
  assert_int_equal(memsleep_release(tags, 1), 0);
  ms__model_t m;
  assert_int_equal(ms__model_load(d, "asleep-w", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, &m),
                   MEMSLEEP_ESTATE);
  tm_assert_error_names("asleep", d, NULL); /* the tag's state and the model's directory */
  assert_null(m.layers);
  assert_int_equal(memsleep_resume(tags, 1), 0);
  assert_int_equal(memsleep_free(p), 0);
  tm_assert_nothing_allocated();
  tm_rmdir(d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_reload_in_place_keeps_addresses),
      cmocka_unit_test(test_reload_failures_change_nothing),
      cmocka_unit_test(test_weights_survive_release_resume),
      cmocka_unit_test(test_load_into_sleeping_tag_fails),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
