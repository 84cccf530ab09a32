/*
 * test_probe_host.c - the process tree and its host resident memory, on a real tree.
 *
 * The test forks a root with two children and a grandchild, each of which
 * maps and touches a known amount of memory on command. The probe must find
 * exactly those processes (with either way of walking /proc), and its host
 * figure must move by what they touched: the baseline is the probe's own
 * figure for the same tree before touching, so the check is honest about
 * what a fresh process already holds (more under the sanitizers).
 */
#include <stdint.h>

#include "memsleep/probe.h"
#include "probe/proctree.h"
#include "tree.h"

/* root, two children, and a child of the first child. */
static const int shape[] = {-1, 0, 0, 1};
#define SHAPE_N     4
#define TOUCH_BYTES (64 * MIB)

static int contains(const pid_t *pids, size_t n, pid_t pid) {
  for (size_t i = 0; i < n; i++)
    if (pids[i] == pid)
      return 1;
  return 0;
}

/* |got - want| <= want / 10 */
static void assert_within_10_percent(size_t got, size_t want, const char *what) {
  double diff = (double)got - (double)want;
  if (diff < 0)
    diff = -diff;
  if (diff > (double)want * 0.10)
    fail_msg("%s: %zu bytes (%.1f MiB), expected %zu (%.1f MiB) within 10%%", what, got,
             (double)got / MIB, want, (double)want / MIB);
}

static memsleep_probe_host_result_t host(pid_t pid, unsigned flags) {
  memsleep_probe_host_result_t r;
  int rc = memsleep_probe_host(pid, flags, &r);
  if (rc != 0)
    fail_msg("memsleep_probe_host(%d): %s: %s", (int)pid, memsleep_strerror(rc),
             memsleep_last_error());
  if (!r.known)
    fail_msg("host figure unknown (%s): %s", memsleep_probe_reason_name(r.reason), r.detail);
  return r;
}

static void test_tree_lists_children_and_grandchildren(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  pid_t pids[16];
  size_t count = 0;
  assert_int_equal(memsleep_probe_tree(t.pids[0], 0, pids, 16, &count), 0);
  assert_int_equal(count, SHAPE_N);
  assert_int_equal(pids[0], t.pids[0]);
  for (size_t i = 0; i < SHAPE_N; i++)
    assert_true(contains(pids, count, t.pids[i]));
  assert_false(contains(pids, count, getpid()));

  assert_int_equal(memsleep_probe_tree(t.pids[0], MEMSLEEP_PROBE_NO_CHILDREN, pids, 16, &count), 0);
  assert_int_equal(count, 1);
  assert_int_equal(pids[0], t.pids[0]);

  /* A subtree: the first child and its child. */
  assert_int_equal(memsleep_probe_tree(t.pids[1], 0, pids, 16, &count), 0);
  assert_int_equal(count, 2);
  assert_true(contains(pids, count, t.pids[3]));

  /* cap smaller than the tree: the count still says how many. */
  assert_int_equal(memsleep_probe_tree(t.pids[0], 0, pids, 2, &count), 0);
  assert_int_equal(count, SHAPE_N);
  test_tree_stop(&t);
}

static void test_children_files_and_stat_scan_agree(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  ms__pidlist_t by_children, by_scan;
  int rc = ms__proctree_collect(t.pids[0], 1, MS__TREE_CHILDREN, &by_children);
  if (rc == MEMSLEEP_EUNAVAIL) {
    test_tree_stop(&t);
    skip(); /* a kernel without CONFIG_PROC_CHILDREN */
  }
  assert_int_equal(rc, 0);
  assert_int_equal(ms__proctree_collect(t.pids[0], 1, MS__TREE_SCAN, &by_scan), 0);
  assert_int_equal(by_children.count, SHAPE_N);
  assert_int_equal(by_scan.count, SHAPE_N);
  for (size_t i = 0; i < SHAPE_N; i++) {
    assert_true(ms__pidlist_contains(&by_children, t.pids[i]));
    assert_true(ms__pidlist_contains(&by_scan, t.pids[i]));
  }
  ms__pidlist_free(&by_children);
  ms__pidlist_free(&by_scan);
  test_tree_stop(&t);
}

static void test_host_figure_moves_by_what_the_tree_touched(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, TOUCH_BYTES);
  memsleep_probe_host_result_t before = host(t.pids[0], 0);
  assert_int_equal(before.tree_processes, SHAPE_N);
  assert_int_equal(before.proc_count, SHAPE_N);

  test_tree_command(&t, TREE_TOUCH);
  memsleep_probe_host_result_t after = host(t.pids[0], 0);
  assert_within_10_percent(after.resident_bytes, before.resident_bytes + SHAPE_N * TOUCH_BYTES,
                           "tree after touching");
  /* Each process grew by its own share, not one process by all of it. */
  for (size_t i = 0; i < after.proc_count; i++) {
    size_t was = 0;
    for (size_t j = 0; j < before.proc_count; j++)
      if (before.procs[j].pid == after.procs[i].pid)
        was = before.procs[j].resident_bytes;
    assert_int_equal(after.procs[i].gpu, MEMSLEEP_HOST);
    assert_within_10_percent(after.procs[i].resident_bytes - was, TOUCH_BYTES,
                             "one process's growth");
  }

  test_tree_command(&t, TREE_FREE);
  memsleep_probe_host_result_t freed = host(t.pids[0], 0);
  assert_true(freed.resident_bytes < after.resident_bytes);
  assert_within_10_percent(after.resident_bytes - freed.resident_bytes, SHAPE_N * TOUCH_BYTES,
                           "drop after freeing");
  test_tree_stop(&t);
}

static void test_host_figure_without_children_is_the_root_alone(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, TOUCH_BYTES);
  memsleep_probe_host_result_t before = host(t.pids[0], MEMSLEEP_PROBE_NO_CHILDREN);
  assert_int_equal(before.tree_processes, 1);
  test_tree_command(&t, TREE_TOUCH);
  memsleep_probe_host_result_t after = host(t.pids[0], MEMSLEEP_PROBE_NO_CHILDREN);
  assert_int_equal(after.proc_count, 1);
  assert_int_equal(after.procs[0].pid, t.pids[0]);
  assert_within_10_percent(after.resident_bytes, before.resident_bytes + TOUCH_BYTES,
                           "root alone after touching");
  test_tree_stop(&t);
}

/* A PID no process can have: pid_max itself (PIDs go up to pid_max - 1). */
static pid_t free_pid(void) {
  FILE *f = fopen("/proc/sys/kernel/pid_max", "r");
  long max = 32768;
  if (f != NULL) {
    if (fscanf(f, "%ld", &max) != 1)
      max = 32768;
    fclose(f);
  }
  return (pid_t)max;
}

static void test_bad_pids_are_errors_that_name_the_pid(void **state) {
  (void)state;
  memsleep_probe_host_result_t h;
  memsleep_probe_gpu_result_t g;
  size_t count;
  assert_int_equal(memsleep_probe_host(-5, 0, &h), MEMSLEEP_EINVAL);
  assert_non_null(strstr(memsleep_last_error(), "-5"));
  assert_int_equal(memsleep_probe_host(0, 0, &h), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_probe_gpu(-1, 0, &g), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_probe_tree(-1, 0, NULL, 0, &count), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_probe_host(getpid(), 0, NULL), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_probe_host(getpid(), 0x80, &h), MEMSLEEP_EINVAL);
  assert_int_equal(memsleep_probe_tree(getpid(), 0, NULL, 4, &count), MEMSLEEP_EINVAL);

  pid_t gone = free_pid();
  char text[32];
  snprintf(text, sizeof text, "%d", (int)gone);
  assert_int_equal(memsleep_probe_host(gone, 0, &h), MEMSLEEP_ENOTFOUND);
  assert_non_null(strstr(memsleep_last_error(), text));
  assert_int_equal(memsleep_probe_gpu(gone, 0, &g), MEMSLEEP_ENOTFOUND);
  assert_int_equal(memsleep_probe_tree(gone, 0, NULL, 0, &count), MEMSLEEP_ENOTFOUND);
}

static void test_exited_tree_is_not_found(void **state) {
  (void)state;
  test_tree_t t;
  test_tree_start(&t, shape, SHAPE_N, 0);
  pid_t root = t.pids[0];
  test_tree_stop(&t); /* reaped: the PID is free again */
  memsleep_probe_host_result_t h;
  assert_int_equal(memsleep_probe_host(root, 0, &h), MEMSLEEP_ENOTFOUND);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tree_lists_children_and_grandchildren),
      cmocka_unit_test(test_children_files_and_stat_scan_agree),
      cmocka_unit_test(test_host_figure_moves_by_what_the_tree_touched),
      cmocka_unit_test(test_host_figure_without_children_is_the_root_alone),
      cmocka_unit_test(test_bad_pids_are_errors_that_name_the_pid),
      cmocka_unit_test(test_exited_tree_is_not_found),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
