/*
 * test_mkmodel_vocab.c - a model whose vocabulary is larger than its
 * tokenizer (memsleep-mkmodel --vocab), as real checkpoints are (Qwen2:
 * 151936 embedding rows for fewer tokenizer ids).
 *
 * Proves that such a model, written by the function memsleep-mkmodel uses
 * (config vocab_size 1000, the 512-id tokenizer beside it), loads into the
 * CPU engine with the config's vocabulary; that the engine accepts prompt
 * ids up to 999 and refuses 1000; that generation samples ids the tokenizer
 * does not have without harm, and the tokenizer refuses to decode them
 * (MEMSLEEP_EINVAL naming the id, nothing allocated) rather than reading
 * past its table; that the tool's --vocab 1000 writes 1000 live rows of
 * embeddings and output layer; and that --vocab below the tokenizer's 512
 * ids, or absurdly large, is refused with exit status 2, a message naming
 * the value, and nothing written.
 */
#include <sys/wait.h>

#include "engine/tokenizer.h"
#include "engine_helpers.h"

#define TOKENIZER_IDS 512 /* memsleep-mkmodel's tokenizer */
#define VOCAB         1000
#define EOS           509 /* "<|endoftext|>" */

static const char *const specials[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};

/* Fails the test when snprintf's output (n characters) did not fit in cap. */
static void fmt_ok(int n, size_t cap) {
  assert_true(n >= 0 && (size_t)n < cap);
}

/* A fresh empty directory under $TMPDIR (or /tmp) into dir (cap bytes). */
static void make_tmpdir(char *dir, size_t cap) {
  const char *tmp = getenv("TMPDIR");
  fmt_ok(snprintf(dir, cap, "%s/memsleep-vocab-test-XXXXXX", tmp && *tmp ? tmp : "/tmp"), cap);
  assert_non_null(mkdtemp(dir));
}

/* Removes dir and everything in it. */
static void remove_tree(const char *dir) {
  char cmd[4200];
  fmt_ok(snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir), sizeof cmd);
  assert_int_equal(system(cmd), 0);
}

/* Runs memsleep-mkmodel with args, its stderr into err_path (may be NULL:
 * discarded); returns its exit status. */
static int run_mkmodel(const char *args, const char *err_path) {
  char cmd[8400];
  fmt_ok(snprintf(cmd, sizeof cmd, "'%s/tools/memsleep-mkmodel' %s >/dev/null 2>'%s'",
                  MEMSLEEP_BINARY_DIR, args, err_path ? err_path : "/dev/null"),
         sizeof cmd);
  int st = system(cmd);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "r");
  assert_non_null(f);
  static char buf[4096];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static ms__tokenizer_t *load_tokenizer(const char *dir) {
  char path[4200];
  fmt_ok(snprintf(path, sizeof path, "%s/tokenizer.json", dir), sizeof path);
  ms__tokenizer_t *t = NULL;
  int rc = ms__tokenizer_load(path, &t);
  if (rc != 0)
    fail_msg("load %s: %s", path, memsleep_last_error());
  return t;
}

/* The library route: ms__model_write_random with vocab_size 1000 and the
 * 512-id tokenizer, then the CPU engine. */
static void test_vocab_past_the_tokenizer_loads_and_generates(void **state) {
  (void)state;
  char dir[256];
  make_tmpdir(dir, sizeof dir);
  ms__model_spec_t s;
  ms__model_spec_default(&s, MS__ARCH_LLAMA);
  s.vocab_size = VOCAB;
  s.eos_token_id = EOS;
  s.hidden_size = 64;
  s.num_heads = 4;
  s.num_kv_heads = 2;
  s.intermediate_size = 128;
  s.num_layers = 2;
  s.max_position = 256;
  s.seed = 11;
  if (ms__model_write_random(dir, &s, NULL, NULL, NULL, NULL) != 0)
    fail_msg("ms__model_write_random: %s", memsleep_last_error());
  char tok_path[4200];
  fmt_ok(snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir), sizeof tok_path);
  assert_int_equal(ms__tokenizer_write_bytelevel(tok_path, 253, specials, 3), 0);

  ms__engine_options_t o = tc_options(dir);
  ms__engine_t *e = NULL;
  if (ms__engine_create(&o, &e) != 0)
    fail_msg("ms__engine_create: %s", memsleep_last_error());
  assert_int_equal(ms__engine_model(e)->cfg.vocab_size, VOCAB);
  ms__tokenizer_t *tok = load_tokenizer(dir);
  assert_int_equal(ms__tokenizer_vocab_size(tok), TOKENIZER_IDS);

  /* A prompt from the tokenizer, greedy. */
  int *ids = NULL;
  size_t n = 0;
  assert_int_equal(ms__tokenizer_encode(tok, "the model is larger", 19, &ids, &n), 0);
  ms__sampling_t sp;
  ms__sampling_default(&sp);
  sp.max_new_tokens = 8;
  sp.ignore_eos = 1;
  tc_req_t r;
  tc_run(e, ids, n, &sp, &r);
  free(ids);
  assert_int_equal(r.info.reason, MS__FINISH_LENGTH);
  assert_int_equal(r.n, 8);
  for (int i = 0; i < r.n; i++)
    assert_true(r.tokens[i] >= 0 && r.tokens[i] < VOCAB);
  tc_destroy(&r);

  /* Prompt ids past the tokenizer but inside the model are fine; a seeded
   * sampled request reaches them too (about half the rows are past 511). */
  int prompt[] = {3, 512, 999, 700, 42};
  sp.temperature = 1.0f;
  sp.seed = 5;
  sp.has_seed = 1;
  sp.max_new_tokens = 48;
  tc_run(e, prompt, sizeof prompt / sizeof prompt[0], &sp, &r);
  assert_int_equal(r.info.reason, MS__FINISH_LENGTH);
  assert_int_equal(r.n, 48);
  int past = -1;
  for (int i = 0; i < r.n; i++) {
    assert_true(r.tokens[i] >= 0 && r.tokens[i] < VOCAB);
    if (r.tokens[i] >= TOKENIZER_IDS && past < 0)
      past = r.tokens[i];
  }
  assert_true(past >= TOKENIZER_IDS);
  /* The tokenizer has no text for it: a clear refusal, nothing read past
   * its table (the server leaves such ids out of the text). */
  char *text = (char *)"untouched";
  size_t len = 0;
  assert_int_equal(ms__tokenizer_decode(tok, &past, 1, &text, &len), MEMSLEEP_EINVAL);
  assert_string_equal(text, "untouched");
  char want[32];
  fmt_ok(snprintf(want, sizeof want, "id %d", past), sizeof want);
  assert_non_null(strstr(memsleep_last_error(), want));
  tc_destroy(&r);

  /* The model's vocabulary still bounds the prompt. */
  int outside[] = {1, VOCAB};
  assert_int_equal(ms__engine_submit(e, outside, 2, &sp, NULL, NULL), MEMSLEEP_EINVAL);

  ms__tokenizer_free(tok);
  ms__engine_destroy(e);
  tc_assert_memsleep_empty();
  remove_tree(dir);
}

/* 1 when a float32 row of n values is finite and not all zero. */
static int live_row(const float *row, int n) {
  int nonzero = 0;
  for (int i = 0; i < n; i++) {
    if (!isfinite(row[i]))
      return 0;
    nonzero += row[i] != 0.0f;
  }
  return nonzero > 0;
}

/* The tool: --vocab 1000 gives 1000 random rows, the tokenizer stays 512. */
static void test_mkmodel_vocab_flag_writes_the_rows(void **state) {
  (void)state;
  char base[256], args[4400];
  make_tmpdir(base, sizeof base);
  fmt_ok(snprintf(args, sizeof args,
                  "--out '%s/m' --vocab %d --layers 1 --hidden 32 --heads 2 --kv-heads 1 "
                  "--intermediate 32",
                  base, VOCAB),
         sizeof args);
  assert_int_equal(run_mkmodel(args, NULL), 0);
  char dir[4200];
  fmt_ok(snprintf(dir, sizeof dir, "%s/m", base), sizeof dir);
  ms__model_t m;
  memset(&m, 0, sizeof m);
  if (ms__model_load(dir, "weights", MEMSLEEP_BACKUP, MEMSLEEP_HOST, NULL, NULL, &m) != 0)
    fail_msg("load %s: %s", dir, memsleep_last_error());
  assert_int_equal(m.cfg.vocab_size, VOCAB);
  assert_false(m.cfg.tie_word_embeddings);
  const int h = m.cfg.hidden_size;
  for (int row = 0; row < VOCAB; row += VOCAB - 1) { /* the first and the last */
    assert_true(live_row((const float *)m.embed + (size_t)row * h, h));
    assert_true(live_row((const float *)m.lm_head + (size_t)row * h, h));
  }
  ms__model_free(&m);
  ms__tokenizer_t *tok = load_tokenizer(dir);
  assert_int_equal(ms__tokenizer_vocab_size(tok), TOKENIZER_IDS);
  ms__tokenizer_free(tok);
  /* The tokenizer's own size is the least, and the default. */
  fmt_ok(snprintf(args, sizeof args,
                  "--out '%s/m' --force --vocab 512 --layers 1 --hidden 32 --heads 2", base),
         sizeof args);
  assert_int_equal(run_mkmodel(args, NULL), 0);
  remove_tree(base);
}

/* Below the tokenizer's ids, or absurd: exit 2, the value named, nothing
 * written. */
static void test_mkmodel_vocab_refusals(void **state) {
  (void)state;
  char base[256], args[4400], err[4200], out[4200];
  make_tmpdir(base, sizeof base);
  fmt_ok(snprintf(err, sizeof err, "%s/err", base), sizeof err);
  fmt_ok(snprintf(out, sizeof out, "%s/m", base), sizeof out);
  static const struct {
    const char *value, *says;
  } cases[] = {
      {"100", "--vocab 100 is smaller than the tokenizer's 512 ids"},
      {"511", "--vocab 511 is smaller than the tokenizer's 512 ids"},
      {"4194305", "--vocab 4194305 is more than 4194304 rows"},
      {"-1", "--vocab -1 is smaller than the tokenizer's 512 ids"},
      {"99999999999999999999", "--vocab: \"99999999999999999999\" is not a whole number"},
      {"1e3", "--vocab: \"1e3\" is not a whole number"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    fmt_ok(snprintf(args, sizeof args, "--out '%s' --vocab %s", out, cases[i].value), sizeof args);
    assert_int_equal(run_mkmodel(args, err), 2);
    const char *said = read_text(err);
    if (!strstr(said, cases[i].says))
      fail_msg("--vocab %s: expected \"%s\" in: %s", cases[i].value, cases[i].says, said);
    assert_int_not_equal(access(out, F_OK), 0);
  }
  remove_tree(base);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_vocab_past_the_tokenizer_loads_and_generates),
      cmocka_unit_test(test_mkmodel_vocab_flag_writes_the_rows),
      cmocka_unit_test(test_mkmodel_vocab_refusals),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
