/*
 * test_probe_nvml.c - GPU figures of a process tree, with a fake NVML in the driver's place.
 *
 * MEMSLEEP_NVML_LIBRARY points the probe at tests/probe/fake_nvml.c, which
 * reports the processes a test writes into FAKE_NVML_PROCS. The tree is
 * real (forked by the test) so the PIDs are; what each "holds" on which GPU
 * is made up. The tests prove what a user of the gate relies on: only the
 * tree's processes count, per GPU, the largest GPU is the gated figure, the
 * newest process-list call is used and older ones are fallen back to, a
 * list longer than the first buffer is fetched whole, and every way of not
 * knowing says so instead of reporting zero.
 */
#include <dlfcn.h>

#include "memsleep/probe.h"
#include "tree.h"

static const int shape[] = {-1, 0, 0, 1}; /* root P, children C1 C2, grandchild G under C1 */
#define SHAPE_N 4
enum { P = 0, C1 = 1, C2 = 2, G = 3 };

static test_tree_t tree;
static void *fake; /* the test's own handle on the fake: counters survive the probe's dlclose */
static unsigned long (*fake_count)(const char *);
static void (*fake_reset)(void);

static const char *const fake_vars[] = {
    "FAKE_NVML_PROCS", "FAKE_NVML_PROCS_FILE", "FAKE_NVML_GPUS",     "FAKE_NVML_INIT_RC",
    "FAKE_NVML_V3_RC", "FAKE_NVML_V3_STRIDE",  "FAKE_NVML_PHANTOMS", "FAKE_NVML_GROW",
};

/* Points the probe at the fake built at path, with a clean environment and counters. */
static void use_fake(const char *path) {
  for (size_t i = 0; i < sizeof fake_vars / sizeof fake_vars[0]; i++)
    unsetenv(fake_vars[i]);
  setenv("MEMSLEEP_NVML_LIBRARY", path, 1);
  if (fake != NULL)
    dlclose(fake);
  fake = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (fake == NULL)
    fail_msg("dlopen(%s): %s", path, dlerror());
  void *count = dlsym(fake, "fake_nvml_count");
  void *reset = dlsym(fake, "fake_nvml_reset");
  assert_non_null(count);
  assert_non_null(reset);
  memcpy(&fake_count, &count, sizeof fake_count);
  memcpy(&fake_reset, &reset, sizeof fake_reset);
  fake_reset();
}

/* What the fake reports: "gpu:pid:bytes[:kind],...". */
static void set_procs(const char *text) {
  setenv("FAKE_NVML_PROCS", text, 1);
}

/* The standard holdings: P 100 MiB and C1 50 MiB on GPU 0, G 300 MiB and C2
 * 10 MiB on GPU 1; the test process itself (not in the tree) 999 MiB on both. */
static void set_standard_procs(void) {
  char *text = test_format("0:%d:100M,0:%d:50M,1:%d:300M,1:%d:10M,0:%d:999M,1:%d:999M",
                           (int)tree.pids[P], (int)tree.pids[C1], (int)tree.pids[G],
                           (int)tree.pids[C2], (int)getpid(), (int)getpid());
  set_procs(text);
  free(text);
}

static memsleep_probe_gpu_result_t gpu(pid_t pid, unsigned flags) {
  memsleep_probe_gpu_result_t r;
  int rc = memsleep_probe_gpu(pid, flags, &r);
  if (rc != 0)
    fail_msg("memsleep_probe_gpu(%d): %s: %s", (int)pid, memsleep_strerror(rc),
             memsleep_last_error());
  return r;
}

static memsleep_probe_gpu_result_t known_gpu(pid_t pid, unsigned flags) {
  memsleep_probe_gpu_result_t r = gpu(pid, flags);
  if (!r.known)
    fail_msg("GPU figure unknown (%s): %s", memsleep_probe_reason_name(r.reason), r.detail);
  return r;
}

/* The figures of set_standard_procs() for the whole tree. */
static void assert_standard_figures(const memsleep_probe_gpu_result_t *r) {
  assert_int_equal(r->tree_processes, SHAPE_N);
  assert_int_equal(r->gpu_count, 2);
  assert_int_equal(r->gpus[0].resident_bytes, 150 * MIB);
  assert_int_equal(r->gpus[0].processes, 2);
  assert_int_equal(r->gpus[1].resident_bytes, 310 * MIB);
  assert_int_equal(r->gpus[1].processes, 2);
  assert_int_equal(r->max_bytes, 310 * MIB);
  assert_int_equal(r->max_gpu, 1);
  assert_int_equal(r->total_bytes, 460 * MIB);
  assert_int_equal(r->proc_count, 4);
}

static void assert_unknown(const memsleep_probe_gpu_result_t *r, memsleep_probe_reason_t why,
                           const char *mention) {
  if (r->known)
    fail_msg("figure known (max %zu bytes), expected unknown (%s)", r->max_bytes,
             memsleep_probe_reason_name(why));
  assert_int_equal(r->reason, why);
  if (strstr(r->detail, mention) == NULL)
    fail_msg("detail \"%s\" does not mention \"%s\"", r->detail, mention);
}

static int setup(void **state) {
  (void)state;
  test_tree_start(&tree, shape, SHAPE_N, 0);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  test_tree_stop(&tree);
  if (fake != NULL)
    dlclose(fake);
  fake = NULL;
  return 0;
}

static void test_per_gpu_sums_count_only_the_tree(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  assert_int_equal(r.nvml_api, 3);
  assert_string_equal(r.gpus[0].uuid, "GPU-fake-0");
  assert_string_equal(r.gpus[1].uuid, "GPU-fake-1");
  for (size_t i = 0; i < r.proc_count; i++)
    assert_int_not_equal(r.procs[i].pid, getpid());
}

static void test_gated_figure_is_the_largest_gpu_not_the_sum(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  /* The root alone: 100 MiB on GPU 0, nothing on GPU 1. */
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], MEMSLEEP_PROBE_NO_CHILDREN);
  assert_int_equal(r.tree_processes, 1);
  assert_int_equal(r.gpus[0].resident_bytes, 100 * MIB);
  assert_int_equal(r.gpus[1].resident_bytes, 0);
  assert_int_equal(r.max_bytes, 100 * MIB);
  assert_int_equal(r.max_gpu, 0);
  /* The subtree of C1 (C1 and G): 50 MiB on GPU 0, 300 MiB on GPU 1. */
  r = known_gpu(tree.pids[C1], 0);
  assert_int_equal(r.max_bytes, 300 * MIB);
  assert_int_equal(r.max_gpu, 1);
  assert_int_equal(r.total_bytes, 350 * MIB);
}

static void test_falls_back_to_v2_when_v3_is_not_exported(void **state) {
  (void)state;
  use_fake(FAKE_NVML_V2_PATH);
  set_standard_procs();
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  assert_int_equal(r.nvml_api, 2);
  assert_true(fake_count("compute_v2") > 0);
  assert_int_equal(fake_count("compute_v1"), 0);
}

static void test_falls_back_to_v1_when_neither_v3_nor_v2_is_exported(void **state) {
  (void)state;
  use_fake(FAKE_NVML_V1_PATH);
  set_standard_procs();
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  assert_int_equal(r.nvml_api, 1);
  assert_true(fake_count("compute_v1") > 0);
}

static void test_falls_back_when_the_driver_does_not_serve_v3(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_V3_RC", "13", 1); /* NVML_ERROR_FUNCTION_NOT_FOUND */
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  assert_int_equal(r.nvml_api, 2);
  assert_true(fake_count("compute_v3") > 0);
  assert_true(fake_count("compute_v2") > 0);
}

static void test_other_list_errors_make_the_figure_unknown(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_V3_RC", "4", 1); /* NVML_ERROR_NO_PERMISSION */
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NVML_ERROR, "NVML_ERROR_NO_PERMISSION");
  assert_non_null(strstr(r.detail, "nvmlDeviceGetComputeRunningProcesses_v3"));
  assert_int_equal(fake_count("compute_v2"), 0);
}

static void test_reads_v3_entries_of_every_size_drivers_wrote(void **state) {
  (void)state;
  static const char *const strides[] = {"24", "32", "16"};
  for (size_t i = 0; i < 3; i++) {
    use_fake(FAKE_NVML_PATH);
    set_standard_procs();
    setenv("FAKE_NVML_V3_STRIDE", strides[i], 1);
    memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
    assert_standard_figures(&r);
    assert_int_equal(r.nvml_api, 3);
  }
}

static void test_long_lists_are_fetched_again_with_a_bigger_buffer(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_PHANTOMS", "100", 1); /* more than the first buffer holds */
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  /* GPU 0's compute list: refused once, then fetched; GPU 1's: at once. */
  assert_int_equal(fake_count("compute_v3"), 3);

  /* Processes starting between the calls: the list outgrows the buffer twice. */
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_PHANTOMS", "100", 1);
  setenv("FAKE_NVML_GROW", "200", 1);
  r = known_gpu(tree.pids[P], 0);
  assert_standard_figures(&r);
  assert_true(fake_count("compute_v3") >= 4);
}

static void test_a_list_that_never_fits_is_unknown(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_PHANTOMS", "100", 1);
  setenv("FAKE_NVML_GROW", "100000", 1);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NVML_ERROR, "NVML_ERROR_INSUFFICIENT_SIZE");
}

static void test_graphics_and_mps_processes_count_once_each(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  /* P holds a graphics context, C1 is an MPS client, C2 has compute and
   * graphics contexts (listed in both with its one total), and G's two
   * compute entries (two MIG instances) add up. */
  char *text = test_format("0:%d:100M:g,0:%d:50M:m,1:%d:20M:c,1:%d:20M:g,1:%d:7M,1:%d:8M",
                           (int)tree.pids[P], (int)tree.pids[C1], (int)tree.pids[C2],
                           (int)tree.pids[C2], (int)tree.pids[G], (int)tree.pids[G]);
  set_procs(text);
  free(text);
  memsleep_probe_gpu_result_t r = known_gpu(tree.pids[P], 0);
  assert_int_equal(r.gpus[0].resident_bytes, 150 * MIB);
  assert_int_equal(r.gpus[0].processes, 2);
  assert_int_equal(r.gpus[1].resident_bytes, 35 * MIB);
  assert_int_equal(r.gpus[1].processes, 2);
  assert_true(fake_count("graphics_v3") > 0);
  assert_true(fake_count("mps_v3") > 0);
}

static void test_nvml_absent_is_unknown_not_zero(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH); /* clears the fake's variables */
  setenv("MEMSLEEP_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NO_NVML, "/nonexistent/libnvidia-ml.so.1");
  assert_int_equal(r.max_gpu, -1);
  assert_int_equal(r.tree_processes, SHAPE_N);
}

static void test_a_library_that_is_not_nvml_is_no_nvml(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  setenv("MEMSLEEP_NVML_LIBRARY", "libc.so.6", 1);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NO_NVML, "nvmlInit_v2");
}

static void test_nvml_init_failure_is_no_nvml(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_INIT_RC", "9", 1);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NO_NVML, "NVML_ERROR_DRIVER_NOT_LOADED");
}

static void test_no_gpu_is_unknown(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  setenv("FAKE_NVML_GPUS", "0", 1);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NO_GPU, "no GPU");
}

static void test_a_tree_nvml_does_not_list_is_not_visible(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  char *text = test_format("0:%d:999M,1:4194000:5G", (int)getpid());
  set_procs(text);
  free(text);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NOT_VISIBLE, "PID namespace");
}

static void test_a_process_without_a_figure_makes_it_unknown(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  char *text = test_format("0:%d:100M,1:%d:na", (int)tree.pids[P], (int)tree.pids[C2]);
  set_procs(text);
  free(text);
  memsleep_probe_gpu_result_t r = gpu(tree.pids[P], 0);
  assert_unknown(&r, MEMSLEEP_PROBE_NVML_ERROR, "NOT_AVAILABLE");
}

static void test_every_probe_shuts_nvml_down(void **state) {
  (void)state;
  use_fake(FAKE_NVML_PATH);
  set_standard_procs();
  for (int i = 0; i < 5; i++)
    known_gpu(tree.pids[P], 0);
  setenv("FAKE_NVML_GPUS", "0", 1);
  gpu(tree.pids[P], 0);
  assert_int_equal(fake_count("init"), 6);
  assert_int_equal(fake_count("shutdown"), 6);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_per_gpu_sums_count_only_the_tree),
      cmocka_unit_test(test_gated_figure_is_the_largest_gpu_not_the_sum),
      cmocka_unit_test(test_falls_back_to_v2_when_v3_is_not_exported),
      cmocka_unit_test(test_falls_back_to_v1_when_neither_v3_nor_v2_is_exported),
      cmocka_unit_test(test_falls_back_when_the_driver_does_not_serve_v3),
      cmocka_unit_test(test_other_list_errors_make_the_figure_unknown),
      cmocka_unit_test(test_reads_v3_entries_of_every_size_drivers_wrote),
      cmocka_unit_test(test_long_lists_are_fetched_again_with_a_bigger_buffer),
      cmocka_unit_test(test_a_list_that_never_fits_is_unknown),
      cmocka_unit_test(test_graphics_and_mps_processes_count_once_each),
      cmocka_unit_test(test_nvml_absent_is_unknown_not_zero),
      cmocka_unit_test(test_a_library_that_is_not_nvml_is_no_nvml),
      cmocka_unit_test(test_nvml_init_failure_is_no_nvml),
      cmocka_unit_test(test_no_gpu_is_unknown),
      cmocka_unit_test(test_a_tree_nvml_does_not_list_is_not_visible),
      cmocka_unit_test(test_a_process_without_a_figure_makes_it_unknown),
      cmocka_unit_test(test_every_probe_shuts_nvml_down),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
