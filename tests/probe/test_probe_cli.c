/*
 * test_probe_cli.c - the memsleep-probe command: gates, exit codes, waiting, bad input.
 *
 * Runs the built binary the way an RL driver would and checks what it
 * would act on: the exit status (0 at or under, 1 above or timed out, 2
 * bad input or unknown under --fail-closed), the warning when the figure
 * is unknown, the figures in --json, and that --wait-below returns once a
 * real tree frees its memory. GPU figures come from the fake NVML; host
 * figures from a real tree the test forks.
 */
#include <stdint.h>

#include "memsleep/probe.h"
#include "tree.h"

static const int shape[] = {-1, 0, 0, 1};
#define SHAPE_N 4
enum { P = 0, C1 = 1, C2 = 2, G = 3 };

static const char *const cli = MEMSLEEP_PROBE_CLI;

#define ARGV(...) ((const char *const[]){"memsleep-probe", __VA_ARGS__, NULL})
#define ENV(...)  ((const char *const[]){__VA_ARGS__, NULL})

/* The environment of a fake-NVML run: the library and what it reports. */
static const char *const *fake_env(char *procs_setting) {
  static const char *env[4];
  env[0] = "MEMSLEEP_NVML_LIBRARY=" FAKE_NVML_PATH;
  env[1] = procs_setting;
  env[2] = "FAKE_NVML_PROCS_FILE";
  env[3] = NULL;
  return env;
}

static const char *const no_nvml_env[] = {"MEMSLEEP_NVML_LIBRARY=/nonexistent/libnvidia-ml.so.1",
                                          NULL};

/* Fails unless the run exited with code; shows its output when not. */
static void assert_exit(const test_cli_t *r, int code) {
  if (r->status != code)
    fail_msg("exit %d, expected %d\nstdout: %s\nstderr: %s", r->status, code, r->stdout_text,
             r->stderr_text);
}

static void assert_mentions(const char *text, const char *what, const char *where) {
  if (strstr(text, what) == NULL)
    fail_msg("%s does not mention \"%s\": %s", where, what, text);
}

static test_cli_t run(const char *const *argv, const char *const *env) {
  test_cli_t r;
  test_cli_run(&r, cli, argv, env);
  return r;
}

/* A PID no process can have: pid_max itself. */
static int free_pid(void) {
  FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
  int max = 32768;
  if (f != NULL) {
    if (fscanf(f, "%d", &max) != 1)
      max = 32768;
    fclose(f);
  }
  return max;
}

static void test_help_lists_the_options_and_exits_0(void **state) {
  (void)state;
  test_cli_t r = run(ARGV("--help"), NULL);
  assert_exit(&r, 0);
  assert_mentions(r.stdout_text, "--max-residual-gib", "--help");
  assert_mentions(r.stdout_text, "--wait-below", "--help");
  assert_mentions(r.stdout_text, "--fail-closed", "--help");
  test_cli_free(&r);
}

static void test_bad_pids_exit_2_with_a_clear_error(void **state) {
  (void)state;
  char gone[16];
  snprintf(gone, sizeof gone, "%d", free_pid());
  const struct {
    const char *pid;
    const char *says;
  } cases[] = {
      {"abc", "not a number"},   {"12x", "not a number"}, {"-5", "negative"},
      {"0", "not a process id"}, {"", "empty"},           {"99999999999", "out of range"},
      {gone, "no such process"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    test_cli_t r = run(ARGV("--pid", cases[i].pid, "--max-residual-gib", "1"), no_nvml_env);
    assert_exit(&r, 2);
    assert_mentions(r.stderr_text, cases[i].says, "stderr");
    if (cases[i].pid[0] != '\0')
      assert_mentions(r.stderr_text, cases[i].pid, "stderr");
    test_cli_free(&r);
  }
  test_cli_t r = run(ARGV("--max-residual-gib", "1"), no_nvml_env);
  assert_exit(&r, 2);
  assert_mentions(r.stderr_text, "--pid", "stderr");
  test_cli_free(&r);
}

static void test_usage_errors_exit_2(void **state) {
  (void)state;
  char self[16];
  snprintf(self, sizeof self, "%d", (int)getpid());
  const char *const *cases[] = {
      ARGV("--pid", self, "--bogus"),
      ARGV("--pid", self, "--timeout", "5"),
      ARGV("--pid", self, "--max-residual-gib", "1", "--wait-below", "1"),
      ARGV("--pid", self, "--max-residual-gib", "lots"),
      ARGV("--pid", self, "--max-residual-gib", "-1"),
      ARGV("--pid", self, "stray"),
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    test_cli_t r = run(cases[i], no_nvml_env);
    assert_exit(&r, 2);
    test_cli_free(&r);
  }
}

/* Runs the gate on the tree with the fake reporting procs; returns the exit status. */
static int gate_with(const test_tree_t *t, const char *procs, const char *gib, int json,
                     char **out) {
  char *setting = test_format("FAKE_NVML_PROCS=%s", procs);
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)t->pids[P]);
  test_cli_t r;
  if (json)
    test_cli_run(&r, cli, ARGV("--pid", pid, "--gpu", "--json", "--max-residual-gib", gib),
                 fake_env(setting));
  else
    test_cli_run(&r, cli, ARGV("--pid", pid, "--max-residual-gib", gib), fake_env(setting));
  free(setting);
  int status = r.status;
  if (out != NULL) {
    *out = r.stdout_text;
    r.stdout_text = NULL;
  }
  test_cli_free(&r);
  return status;
}

static void test_gpu_gate_compares_the_largest_gpu(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  /* 1 GiB on GPU 0 (the root), 3 GiB on GPU 1 (root's grandchild): max 3, total 4;
   * the test process itself holds 8 GiB and is not in the tree. */
  char *procs =
      test_format("0:%d:1G,1:%d:3G,0:%d:8G", (int)t.pids[P], (int)t.pids[G], (int)getpid());
  char *out = NULL;
  assert_int_equal(gate_with(&t, procs, "3", 0, &out), 0); /* at the threshold passes */
  assert_mentions(out, "GPU 1", "gate line");
  assert_mentions(out, "pass", "gate line");
  free(out);
  assert_int_equal(gate_with(&t, procs, "2.5", 0, &out), 1);
  assert_mentions(out, "FAIL", "gate line");
  free(out);
  assert_int_equal(gate_with(&t, procs, "3.5", 0, NULL), 0); /* the total (4) would fail */
  assert_int_equal(gate_with(&t, procs, "0", 0, NULL), 1);

  assert_int_equal(gate_with(&t, procs, "3.5", 1, &out), 0);
  assert_int_equal(test_json_number(out, "\"gpu\"", "max_bytes"), 3ULL << 30);
  assert_int_equal(test_json_number(out, "\"gpu\"", "max_gpu"), 1);
  assert_int_equal(test_json_number(out, "\"gpu\"", "total_bytes"), 4ULL << 30);
  assert_int_equal(test_json_number(out, "\"gpu\"", "nvml_api"), 3);
  assert_mentions(out, "\"verdict\":\"pass\"", "JSON");
  assert_mentions(out, "\"exit\":0", "JSON");
  free(out);
  free(procs);
  test_tree_stop(&t);
}

static void test_no_children_gates_the_process_alone(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  char *setting = test_format("FAKE_NVML_PROCS=0:%d:1G,1:%d:3G", (int)t.pids[P], (int)t.pids[G]);
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)t.pids[P]);
  test_cli_t r;
  test_cli_run(&r, cli, ARGV("--pid", pid, "--no-children", "--max-residual-gib", "2"),
               fake_env(setting));
  assert_exit(&r, 0);
  test_cli_free(&r);
  test_cli_run(&r, cli, ARGV("--pid", pid, "--max-residual-gib", "2"), fake_env(setting));
  assert_exit(&r, 1);
  test_cli_free(&r);
  free(setting);
  test_tree_stop(&t);
}

static void test_unknown_figure_fails_open_with_a_warning_or_closed(void **state) {
  (void)state;
  char self[16];
  snprintf(self, sizeof self, "%d", (int)getpid());
  test_cli_t r = run(ARGV("--pid", self, "--max-residual-gib", "1"), no_nvml_env);
  assert_exit(&r, 0);
  assert_mentions(r.stderr_text, "warning", "stderr");
  assert_mentions(r.stderr_text, "unknown", "stderr");
  assert_mentions(r.stderr_text, "no NVML", "stderr");
  test_cli_free(&r);

  r = run(ARGV("--pid", self, "--max-residual-gib", "1", "--fail-closed"), no_nvml_env);
  assert_exit(&r, 2);
  assert_mentions(r.stderr_text, "unknown", "stderr");
  test_cli_free(&r);

  r = run(ARGV("--pid", self, "--gpu", "--json", "--max-residual-gib", "1"), no_nvml_env);
  assert_exit(&r, 0);
  assert_mentions(r.stdout_text, "\"known\":false", "JSON");
  assert_mentions(r.stdout_text, "\"verdict\":\"unknown_pass\"", "JSON");
  test_cli_free(&r);

  /* Without a gate: a report, 0; --fail-closed makes unknown an error. */
  r = run(ARGV("--pid", self), no_nvml_env);
  assert_exit(&r, 0);
  assert_mentions(r.stdout_text, "unknown", "report");
  test_cli_free(&r);
  r = run(ARGV("--pid", self, "--gpu", "--fail-closed"), no_nvml_env);
  assert_exit(&r, 2);
  test_cli_free(&r);

  /* NVML present, no GPU: the same two paths. */
  r = run(ARGV("--pid", self, "--max-residual-gib", "1"),
          ENV("MEMSLEEP_NVML_LIBRARY=" FAKE_NVML_PATH, "FAKE_NVML_GPUS=0"));
  assert_exit(&r, 0);
  assert_mentions(r.stderr_text, "no GPU", "stderr");
  test_cli_free(&r);
  r = run(ARGV("--pid", self, "--max-residual-gib", "1", "--fail-closed"),
          ENV("MEMSLEEP_NVML_LIBRARY=" FAKE_NVML_PATH, "FAKE_NVML_GPUS=0"));
  assert_exit(&r, 2);
  test_cli_free(&r);
}

/* The host figure of the tree, as the CLI reports it in JSON. */
static size_t cli_host_bytes(const test_tree_t *t) {
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)t->pids[P]);
  test_cli_t r = run(ARGV("--pid", pid, "--host", "--json"), no_nvml_env);
  assert_exit(&r, 0);
  size_t bytes = (size_t)test_json_number(r.stdout_text, "\"host\"", "resident_bytes");
  assert_int_equal(test_json_number(r.stdout_text, NULL, "tree_processes"), SHAPE_N);
  test_cli_free(&r);
  return bytes;
}

static void test_host_gate_on_a_real_tree(void **state) {
  (void)state;
  const size_t each = 32 * MIB;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, each);
  size_t before = cli_host_bytes(&t);
  test_tree_command(&t, TREE_TOUCH);
  size_t after = cli_host_bytes(&t);
  size_t want = before + SHAPE_N * each;
  double diff = (double)after - (double)want;
  if (diff < -(double)want * 0.1 || diff > (double)want * 0.1)
    fail_msg("host figure %zu, expected %zu (baseline %zu + 4 x 32 MiB) within 10%%", after, want,
             before);

  char pid[16], above[32], below[32];
  snprintf(pid, sizeof pid, "%d", (int)t.pids[P]);
  snprintf(above, sizeof above, "%.6f", (double)(after + 16 * MIB) / (1 << 30));
  snprintf(below, sizeof below, "%.6f", (double)(before + 64 * MIB) / (1 << 30));
  /* NVML absent does not matter: --host alone gates the host figure. */
  test_cli_t r = run(ARGV("--pid", pid, "--host", "--max-residual-gib", above), no_nvml_env);
  assert_exit(&r, 0);
  assert_mentions(r.stdout_text, "host RSS", "gate line");
  test_cli_free(&r);
  r = run(ARGV("--pid", pid, "--host", "--max-residual-gib", below), no_nvml_env);
  assert_exit(&r, 1);
  test_cli_free(&r);
  test_tree_stop(&t);
}

/* Writes text to path through a rename, so a reader never sees half of it. */
static void write_atomically(const char *path, const char *text) {
  char *tmp = test_format("%s.new", path);
  FILE *f = fopen(tmp, "w");
  assert_non_null(f);
  assert_true(fputs(text, f) >= 0);
  assert_int_equal(fclose(f), 0);
  assert_int_equal(rename(tmp, path), 0);
  free(tmp);
}

static void test_wait_below_returns_when_the_gpu_figure_drops(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  char path[] = "fake_nvml_procs.XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  close(fd);
  char *high = test_format("0:%d:1G,1:%d:3G", (int)t.pids[P], (int)t.pids[C2]);
  char *low = test_format("0:%d:300M,1:%d:500M", (int)t.pids[P], (int)t.pids[C2]);
  write_atomically(path, high);
  char *file_setting = test_format("FAKE_NVML_PROCS_FILE=%s", path);
  char pid[16];
  snprintf(pid, sizeof pid, "%d", (int)t.pids[P]);

  test_cli_t r;
  test_cli_start(
      &r, cli,
      ARGV("--pid", pid, "--gpu", "--wait-below", "1", "--timeout", "30", "--interval", "0.05"),
      ENV("MEMSLEEP_NVML_LIBRARY=" FAKE_NVML_PATH, file_setting));
  test_sleep_ms(400);
  write_atomically(path, low);
  test_cli_finish(&r);
  assert_exit(&r, 0);
  assert_mentions(r.stderr_text, "waiting", "progress");
  assert_mentions(r.stderr_text, "GPU 1", "progress");
  assert_mentions(r.stdout_text, "pass", "gate line");
  test_cli_free(&r);

  /* Never drops: exit 1 at the timeout, with progress on the way. */
  write_atomically(path, high);
  double start = test_now_s();
  test_cli_run(
      &r, cli,
      ARGV("--pid", pid, "--gpu", "--wait-below", "1", "--timeout", "0.3", "--interval", "0.05"),
      ENV("MEMSLEEP_NVML_LIBRARY=" FAKE_NVML_PATH, file_setting));
  assert_exit(&r, 1);
  assert_true(test_now_s() - start >= 0.3);
  assert_mentions(r.stderr_text, "waiting", "progress");
  assert_mentions(r.stderr_text, "timed out", "stderr");
  test_cli_free(&r);

  unlink(path);
  free(file_setting);
  free(high);
  free(low);
  test_tree_stop(&t);
}

static void test_wait_below_returns_when_the_tree_frees_host_memory(void **state) {
  (void)state;
  const size_t each = 32 * MIB;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, each);
  size_t before = cli_host_bytes(&t);
  test_tree_command(&t, TREE_TOUCH);
  char pid[16], limit[32];
  snprintf(pid, sizeof pid, "%d", (int)t.pids[P]);
  snprintf(limit, sizeof limit, "%.6f", (double)(before + 2 * each) / (1 << 30));

  test_cli_t r;
  test_cli_start(
      &r, cli,
      ARGV("--pid", pid, "--host", "--wait-below", limit, "--timeout", "30", "--interval", "0.05"),
      no_nvml_env);
  test_sleep_ms(400);
  test_tree_command(&t, TREE_FREE);
  test_cli_finish(&r);
  assert_exit(&r, 0);
  assert_mentions(r.stderr_text, "waiting: host RSS", "progress");
  test_cli_free(&r);
  test_tree_stop(&t);
}

static void test_wait_below_with_an_unknown_figure(void **state) {
  (void)state;
  char self[16];
  snprintf(self, sizeof self, "%d", (int)getpid());
  /* Fail-open: passes at once, with the warning. */
  test_cli_t r = run(ARGV("--pid", self, "--wait-below", "1", "--timeout", "30"), no_nvml_env);
  assert_exit(&r, 0);
  assert_mentions(r.stderr_text, "warning", "stderr");
  test_cli_free(&r);
  /* Fail-closed: keeps polling in case it becomes known, then exits 2. */
  r = run(ARGV("--pid", self, "--wait-below", "1", "--timeout", "0.2", "--interval", "0.05",
               "--fail-closed"),
          no_nvml_env);
  assert_exit(&r, 2);
  assert_mentions(r.stderr_text, "unknown", "stderr");
  test_cli_free(&r);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_help_lists_the_options_and_exits_0),
      cmocka_unit_test(test_bad_pids_exit_2_with_a_clear_error),
      cmocka_unit_test(test_usage_errors_exit_2),
      cmocka_unit_test(test_gpu_gate_compares_the_largest_gpu),
      cmocka_unit_test(test_no_children_gates_the_process_alone),
      cmocka_unit_test(test_unknown_figure_fails_open_with_a_warning_or_closed),
      cmocka_unit_test(test_host_gate_on_a_real_tree),
      cmocka_unit_test(test_wait_below_returns_when_the_gpu_figure_drops),
      cmocka_unit_test(test_wait_below_returns_when_the_tree_frees_host_memory),
      cmocka_unit_test(test_wait_below_with_an_unknown_figure),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
