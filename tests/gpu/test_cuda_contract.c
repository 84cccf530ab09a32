/*
 * test_cuda_contract.c - the memory core's contract, re-run on the CUDA backend.
 *
 * The rules that the host-backend unit tests prove (tests/unit/), checked
 * where they matter: on device 0's memory, through the CUDA runtime calls a
 * program would use on it (cudaMemcpy), and through the device's free memory
 * (cudaMemGetInfo). Covered: allocation and free, bad input, release/resume
 * with MEMSLEEP_BACKUP keeping contents, MEMSLEEP_ZERO reading zeros,
 * memory without a policy handed back and usable again, the ESTATE/EINVAL
 * state rules, the stats and measured figures, free in any state, thousands
 * of small allocations (carved from slabs) and odd sizes surviving a cycle,
 * allocation in other tags while a release runs, memsleep_keep_backups(), a
 * release right after queued work backing up what that work wrote, and
 * nothing left once everything is freed.
 *
 *   test_cuda_contract          (exit 0 pass, 1 fail, 77 no CUDA device)
 */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>

#include "gpu_test.h"

#define DEV         0
#define MANY_BLOCKS 5000 /* 2 MiB allocations in the slab test */

static size_t sum_sizes(const size_t *sizes, size_t n) {
  size_t s = 0;
  for (size_t i = 0; i < n; i++)
    s += sizes[i];
  return s;
}

/* Host memory the kernel says is available (MemAvailable), in bytes; 0 if
 * unknown. Pinned backups come out of it. */
static size_t host_available_bytes(void) {
  FILE *f = fopen("/proc/meminfo", "r");
  size_t kib = 0;
  char line[256];
  while (f != NULL && fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "MemAvailable: %zu kB", &kib) == 1)
      break;
  if (f != NULL)
    fclose(f);
  return kib * 1024;
}

static int stats_equal(memsleep_stats_t a, memsleep_stats_t b) {
  return a.allocations == b.allocations && a.reserved_bytes == b.reserved_bytes &&
         a.resident_bytes == b.resident_bytes && a.backup_bytes == b.backup_bytes;
}

/* The backend answers at all: a first allocation on the device works. */
static void test_backend_available(void) {
  void *p = NULL;
  int rc = memsleep_alloc(&p, GT_MIB, DEV, "c-first", 0);
  GT_CHECK(rc == 0,
           "memsleep_alloc(1 MiB, device %d) returned %d (%s): %s -- is the CUDA backend "
           "built in and libcuda.so.1 loadable?",
           DEV, rc, memsleep_strerror(rc), memsleep_last_error());
out:
  gt_free_all(&p, 1);
}

/* Allocations are aligned like cudaMalloc's, distinct from each other,
 * usable by cudaMemcpy, counted in the stats, and give the device's memory
 * back when freed. */
static void test_alloc_free(void) {
  const size_t sizes[] = {GT_MIB, 256 * GT_MIB + 1, 1000};
  void *p[3] = {NULL, NULL, NULL};
  size_t free0 = gt_free_bytes();
  for (size_t i = 0; i < 3; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, "c-basic", 0));
    GT_CHECK(p[i] != NULL, "memsleep_alloc returned 0 but a NULL pointer");
    GT_CHECK((uintptr_t)p[i] % 256 == 0, "%zu bytes at %p: not 256-byte aligned like cudaMalloc",
             sizes[i], p[i]);
    GT_CHECK(memsleep_owns(p[i]) == 1, "memsleep_owns(%p) is not 1 for a live allocation", p[i]);
  }
  GT_CHECK(memsleep_owns((char *)p[1] + 4096) == 0,
           "memsleep_owns() is 1 for an address inside an allocation");
  for (size_t i = 0; i < 3; i++)
    for (size_t j = 0; j < 3; j++)
      GT_CHECK(i == j || (char *)p[i] + sizes[i] <= (char *)p[j] ||
                   (char *)p[j] + sizes[j] <= (char *)p[i],
               "allocations %p (%zu bytes) and %p (%zu bytes) overlap", p[i], sizes[i], p[j],
               sizes[j]);
  for (size_t i = 0; i < 3; i++)
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 100 + i));
  for (size_t i = 0; i < 3; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 100 + i, "a fresh allocation written with cudaMemcpy");

  memsleep_stats_t s = gt_stats("c-basic");
  gt_print_stats("c-basic, 3 allocations:", s);
  GT_CHECK(s.allocations == 3, "stats count %zu allocations, want 3", s.allocations);
  GT_CHECK(s.reserved_bytes >= sum_sizes(sizes, 3), "reserved %zu bytes < %zu allocated",
           s.reserved_bytes, sum_sizes(sizes, 3));
  GT_CHECK(s.resident_bytes == s.reserved_bytes, "awake tag: resident %zu != reserved %zu",
           s.resident_bytes, s.reserved_bytes);
  GT_CHECK(s.backup_bytes == 0, "no BACKUP allocation, yet backup_bytes = %zu", s.backup_bytes);
  size_t free1 = gt_free_bytes();
  GT_CHECK(free0 >= free1 + 256 * GT_MIB,
           "device free memory went down by %.1f MiB after allocating 257 MiB",
           gt_diff_mib(free0, free1));

  for (size_t i = 0; i < 3; i++) {
    void *gone = p[i];
    GT_OK(memsleep_free(gone));
    p[i] = NULL;
    GT_CHECK(memsleep_owns(gone) == 0, "memsleep_owns(%p) is still 1 after free", gone);
    GT_EXPECT(memsleep_free(gone), MEMSLEEP_ENOTFOUND);
  }
  s = gt_stats("c-basic");
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.resident_bytes == 0 &&
               s.backup_bytes == 0,
           "after freeing all: %zu allocations, reserved %zu, resident %zu, backup %zu",
           s.allocations, s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  size_t free2 = gt_free_bytes();
  printf("  free memory: %.1f MiB before, %.1f MiB allocated, %.1f MiB after freeing\n",
         gt_mib(free0), gt_diff_mib(free0, free1), gt_mib(free2));
  GT_CHECK(free2 + GT_SLACK >= free0, "%.1f MiB of device memory not given back after free",
           gt_diff_mib(free0, free2));
out:
  gt_free_all(p, 3);
}

static const char tag64[] = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/* Every bad argument gets its code, leaves the pointer untouched, creates no
 * tag and changes nothing: not the stats, not the device's free memory. */
static void test_bad_input(void) {
  size_t free0 = 0, total = 0;
  GT_CUDA(cudaMemGetInfo(&free0, &total));
  int ndev = 0;
  GT_CUDA(cudaGetDeviceCount(&ndev));
  const struct {
    size_t size;
    const char *tag;
    unsigned flags;
    int device;
    int code; /* 1: any failure of EINVAL, EUNAVAIL, ENOTFOUND */
    const char *what;
  } cases[] = {
      {0, "c-bad", 0, DEV, MEMSLEEP_EINVAL, "size 0"},
      {SIZE_MAX, "c-bad", 0, DEV, MEMSLEEP_EINVAL, "size SIZE_MAX"},
      {(size_t)1 << 60, "c-bad", MEMSLEEP_BACKUP, DEV, MEMSLEEP_EINVAL, "size 2^60"},
      {4096, NULL, 0, DEV, MEMSLEEP_EINVAL, "tag NULL"},
      {4096, "", 0, DEV, MEMSLEEP_EINVAL, "empty tag"},
      {4096, "a b", 0, DEV, MEMSLEEP_EINVAL, "tag with a space"},
      {4096, "a/b", 0, DEV, MEMSLEEP_EINVAL, "tag with a slash"},
      {4096, tag64, 0, DEV, MEMSLEEP_EINVAL, "tag of 64 characters"},
      {4096, "c-bad", 0x4u, DEV, MEMSLEEP_EINVAL, "unknown flag 0x4"},
      {4096, "c-bad", 0x80000000u, DEV, MEMSLEEP_EINVAL, "unknown flag 0x80000000"},
      {4096, "c-bad", MEMSLEEP_BACKUP | MEMSLEEP_ZERO, DEV, MEMSLEEP_EINVAL, "BACKUP|ZERO"},
      {4096, "c-bad", 0, -2, MEMSLEEP_EINVAL, "device -2"},
      {4096, "c-bad", 0, ndev + 3, 1, "a device that does not exist"},
      {total + GT_GIB, "c-bad", 0, DEV, MEMSLEEP_ENOMEM, "more than the device's memory"},
      {total + GT_GIB, "c-bad", MEMSLEEP_BACKUP, DEV, MEMSLEEP_ENOMEM,
       "more than the device's memory, BACKUP"},
  };
  memsleep_stats_t before = gt_stats(NULL);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    void *sentinel = (void *)(uintptr_t)0x1234;
    void *p = sentinel;
    int rc = memsleep_alloc(&p, cases[i].size, cases[i].device, cases[i].tag, cases[i].flags);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", memsleep_last_error() ? memsleep_last_error() : "");
    if (cases[i].code == 1)
      GT_CHECK(rc == MEMSLEEP_EINVAL || rc == MEMSLEEP_EUNAVAIL || rc == MEMSLEEP_ENOTFOUND,
               "alloc with %s returned %d (%s), want EINVAL/EUNAVAIL/ENOTFOUND", cases[i].what, rc,
               memsleep_strerror(rc));
    else
      GT_CHECK(rc == cases[i].code, "alloc with %s returned %d (%s), want %d (%s); last error: %s",
               cases[i].what, rc, memsleep_strerror(rc), cases[i].code,
               memsleep_strerror(cases[i].code), msg);
    GT_CHECK(p == sentinel, "alloc with %s failed but wrote %p into *ptr", cases[i].what, p);
    GT_CHECK(msg[0] != '\0', "alloc with %s: memsleep_last_error() is empty", cases[i].what);
    GT_CHECK(stats_equal(before, gt_stats(NULL)), "alloc with %s changed the stats", cases[i].what);
    printf("  %-40s -> %s: %s\n", cases[i].what, memsleep_strerror(rc), msg);
  }
  GT_CHECK(memsleep_is_asleep("c-bad") == MEMSLEEP_ENOTFOUND,
           "failed allocations brought tag \"c-bad\" into being");
  GT_EXPECT(memsleep_alloc(NULL, 4096, DEV, "c-bad", 0), MEMSLEEP_EINVAL);
  GT_EXPECT(memsleep_free(NULL), MEMSLEEP_EINVAL);
  GT_EXPECT(memsleep_free(&free0), MEMSLEEP_ENOTFOUND);
  const char *unknown[] = {"c-never-used"};
  GT_EXPECT(memsleep_release(unknown, 1), MEMSLEEP_ENOTFOUND);
  GT_EXPECT(memsleep_resume(unknown, 1), MEMSLEEP_ENOTFOUND);
  GT_EXPECT(memsleep_release_flags(NULL, 0, 0x8u), MEMSLEEP_EINVAL);
  size_t free1 = gt_free_bytes();
  GT_CHECK(free1 + GT_SLACK >= free0,
           "refused allocations kept %.1f MiB of device memory (an ENOMEM must leave nothing)",
           gt_diff_mib(free0, free1));
out:
  return;
}

/* MEMSLEEP_BACKUP: contents survive; the memory really leaves the device
 * while asleep; stats and measured figures follow. */
static void test_backup_roundtrip(void) {
  const char *tags[] = {"c-backup"};
  const size_t sizes[] = {GT_MIB, 5 * GT_MIB + 3, 64 * GT_MIB + 5, 300 * GT_MIB};
  enum { N = 4 };
  void *p[N] = {NULL};
  for (size_t i = 0; i < N; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], MEMSLEEP_BACKUP));
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 200 + i));
  }
  GT_CUDA(cudaDeviceSynchronize());
  memsleep_stats_t awake = gt_stats(tags[0]);
  memsleep_stats_t m = gt_measure(tags[0]);
  gt_print_stats("awake (stats):", awake);
  gt_print_stats("awake (measured):", m);
  GT_CHECK(awake.allocations == N, "stats count %zu allocations, want %d", awake.allocations, N);
  GT_CHECK(awake.reserved_bytes >= sum_sizes(sizes, N), "reserved %zu < %zu allocated",
           awake.reserved_bytes, sum_sizes(sizes, N));
  GT_CHECK(awake.resident_bytes == awake.reserved_bytes, "awake: resident %zu != reserved %zu",
           awake.resident_bytes, awake.reserved_bytes);
  GT_CHECK(m.resident_bytes == awake.resident_bytes,
           "awake: measured resident %zu bytes, stats say %zu", m.resident_bytes,
           awake.resident_bytes);
  size_t free_awake = gt_free_bytes();

  GT_OK(memsleep_release(tags, 1));
  size_t free_asleep = gt_free_bytes();
  memsleep_stats_t asleep = gt_stats(tags[0]);
  m = gt_measure(tags[0]);
  gt_print_stats("asleep (stats):", asleep);
  gt_print_stats("asleep (measured):", m);
  printf("  release gave back %.1f MiB of device memory (%.1f MiB reserved)\n",
         gt_diff_mib(free_asleep, free_awake), gt_mib(awake.reserved_bytes));
  GT_CHECK(memsleep_is_asleep(tags[0]) == 1, "tag not asleep after a release");
  GT_CHECK(asleep.resident_bytes == 0, "asleep: stats say %zu bytes resident",
           asleep.resident_bytes);
  GT_CHECK(m.resident_bytes == 0, "asleep: %zu bytes measured resident", m.resident_bytes);
  GT_CHECK(asleep.reserved_bytes == awake.reserved_bytes && asleep.allocations == N,
           "asleep: reserved %zu (was %zu), %zu allocations", asleep.reserved_bytes,
           awake.reserved_bytes, asleep.allocations);
  GT_CHECK(asleep.backup_bytes >= sum_sizes(sizes, N), "asleep: backup %zu bytes < %zu backed up",
           asleep.backup_bytes, sum_sizes(sizes, N));
  GT_CHECK(free_asleep + GT_SLACK >= free_awake + awake.reserved_bytes,
           "release of %.1f MiB gave back only %.1f MiB of device memory",
           gt_mib(awake.reserved_bytes), gt_diff_mib(free_asleep, free_awake));
  for (size_t i = 0; i < N; i++)
    GT_CHECK(memsleep_owns(p[i]) == 1, "memsleep_owns(%p) is not 1 while asleep", p[i]);

  GT_OK(memsleep_resume(tags, 1));
  size_t free_resumed = gt_free_bytes();
  memsleep_stats_t resumed = gt_stats(tags[0]);
  m = gt_measure(tags[0]);
  GT_CHECK(memsleep_is_asleep(tags[0]) == 0, "tag still asleep after a resume");
  GT_CHECK(resumed.resident_bytes == awake.reserved_bytes,
           "resumed: resident %zu bytes, reserved %zu", resumed.resident_bytes,
           awake.reserved_bytes);
  GT_CHECK(m.resident_bytes == awake.reserved_bytes, "resumed: measured resident %zu, want %zu",
           m.resident_bytes, awake.reserved_bytes);
  GT_CHECK(free_resumed + GT_SLACK >= free_awake && free_resumed <= free_awake + GT_SLACK,
           "free memory after resume %.1f MiB, before release %.1f MiB", gt_mib(free_resumed),
           gt_mib(free_awake));
  for (size_t i = 0; i < N; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 200 + i, "BACKUP allocation after release/resume");
out:
  gt_free_all(p, N);
}

/* MEMSLEEP_ZERO reads zeros after resume, in a slab and in a mapping of its
 * own, while a BACKUP neighbour in the same tag keeps its contents. */
static void test_zero(void) {
  const char *tags[] = {"c-zero"};
  const size_t sizes[] = {GT_MIB, 40 * GT_MIB, GT_MIB, 3 * GT_MIB};
  const unsigned flags[] = {MEMSLEEP_ZERO, MEMSLEEP_ZERO, MEMSLEEP_BACKUP, MEMSLEEP_BACKUP};
  enum { N = 4 };
  void *p[N] = {NULL};
  for (size_t i = 0; i < N; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], flags[i]));
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 300 + i));
  }
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK_CONTENTS(p[0], 0, sizes[0], GT_BYTE(0), "ZERO allocation (1 MiB) after resume");
  GT_CHECK_CONTENTS(p[1], 0, sizes[1], GT_BYTE(0), "ZERO allocation (40 MiB) after resume");
  GT_CHECK_CONTENTS(p[2], 0, sizes[2], 302, "BACKUP neighbour (1 MiB) of ZERO allocations");
  GT_CHECK_CONTENTS(p[3], 0, sizes[3], 303, "BACKUP neighbour (3 MiB) of ZERO allocations");
out:
  gt_free_all(p, N);
}

/* Memory without a backup policy leaves the device on release, keeps no
 * host copy, and comes back usable; MEMSLEEP_RELEASE_NO_BACKUP does the same
 * to BACKUP memory. */
static void test_no_backup(void) {
  const char *plain[] = {"c-plain"}, *nob[] = {"c-nobackup"};
  void *p[3] = {NULL, NULL, NULL};
  GT_OK(memsleep_alloc(&p[0], 512 * GT_MIB, DEV, plain[0], 0));
  GT_OK(memsleep_alloc(&p[1], 2 * GT_MIB, DEV, plain[0], 0));
  GT_OK(memsleep_alloc(&p[2], 64 * GT_MIB, DEV, nob[0], MEMSLEEP_BACKUP));
  GT_CUDA(gt_dev_write(p[0], 0, 512 * GT_MIB, 400));
  GT_CUDA(gt_dev_write(p[2], 0, 64 * GT_MIB, 402));
  GT_CUDA(cudaDeviceSynchronize());
  memsleep_stats_t awake = gt_stats(plain[0]);
  size_t free_awake = gt_free_bytes();
  GT_OK(memsleep_release(plain, 1));
  size_t free_asleep = gt_free_bytes();
  memsleep_stats_t asleep = gt_stats(plain[0]);
  GT_CHECK(asleep.resident_bytes == 0 && asleep.backup_bytes == 0,
           "no-policy tag asleep: resident %zu, backup %zu (want 0 and 0)", asleep.resident_bytes,
           asleep.backup_bytes);
  GT_CHECK(free_asleep + GT_SLACK >= free_awake + awake.reserved_bytes,
           "release of %.1f MiB without backup gave back only %.1f MiB",
           gt_mib(awake.reserved_bytes), gt_diff_mib(free_asleep, free_awake));
  GT_OK(memsleep_resume(plain, 1));
  size_t free_resumed = gt_free_bytes();
  GT_CHECK(free_resumed <= free_awake + GT_SLACK,
           "after resume only %.1f MiB of device memory is in use again, want %.1f",
           gt_diff_mib(free_asleep, free_resumed), gt_mib(awake.reserved_bytes));
  GT_CHECK(gt_stats(plain[0]).resident_bytes == awake.reserved_bytes,
           "resumed no-policy tag: resident is not the reserved size");
  GT_CUDA(gt_dev_write(p[0], 0, 512 * GT_MIB, 410));
  GT_CUDA(gt_dev_write(p[1], 0, 2 * GT_MIB, 411));
  GT_CHECK_CONTENTS(p[0], 0, 512 * GT_MIB, 410, "no-policy memory written after resume");
  GT_CHECK_CONTENTS(p[1], 0, 2 * GT_MIB, 411, "no-policy memory written after resume");

  size_t free_b = gt_free_bytes();
  GT_OK(memsleep_release_flags(nob, 1, MEMSLEEP_RELEASE_NO_BACKUP));
  memsleep_stats_t s = gt_stats(nob[0]);
  GT_CHECK(s.resident_bytes == 0 && s.backup_bytes == 0,
           "release with MEMSLEEP_RELEASE_NO_BACKUP: resident %zu, backup %zu (want 0 and 0)",
           s.resident_bytes, s.backup_bytes);
  GT_CHECK(gt_free_bytes() + GT_SLACK >= free_b + 64 * GT_MIB,
           "release with MEMSLEEP_RELEASE_NO_BACKUP gave back less than 64 MiB");
  GT_OK(memsleep_resume(nob, 1));
  GT_CUDA(gt_dev_write(p[2], 0, 64 * GT_MIB, 412));
  GT_CHECK_CONTENTS(p[2], 0, 64 * GT_MIB, 412, "memory written after a NO_BACKUP cycle");
out:
  gt_free_all(p, 3);
}

/* ESTATE and EINVAL rules: each refused call changes nothing. */
static void test_state_rules(void) {
  const char *one[] = {"c-state"}, *twice[] = {"c-state", "c-state"},
             *mixed[] = {"c-state", "c-never-used"};
  void *p = NULL;
  void *sentinel = (void *)(uintptr_t)0x1234, *q = sentinel;
  GT_OK(memsleep_alloc(&p, 4 * GT_MIB, DEV, one[0], MEMSLEEP_BACKUP));
  GT_CUDA(gt_dev_write(p, 0, 4 * GT_MIB, 500));
  GT_CUDA(cudaDeviceSynchronize());
  GT_EXPECT(memsleep_resume(one, 1), MEMSLEEP_ESTATE);
  GT_EXPECT(memsleep_release(twice, 2), MEMSLEEP_EINVAL);
  GT_CHECK(memsleep_is_asleep(one[0]) == 0, "a refused release (tag named twice) put it to sleep");
  GT_EXPECT(memsleep_release(mixed, 2), MEMSLEEP_ENOTFOUND);
  GT_CHECK(memsleep_is_asleep(one[0]) == 0,
           "a release refused for an unknown tag put the known one to sleep (not all-or-nothing)");
  GT_CHECK_CONTENTS(p, 0, 4 * GT_MIB, 500, "awake allocation after refused releases");

  GT_OK(memsleep_release(one, 1));
  memsleep_stats_t asleep = gt_stats(one[0]);
  GT_EXPECT(memsleep_release(one, 1), MEMSLEEP_ESTATE);
  GT_CHECK(memsleep_is_asleep(one[0]) == 1 && stats_equal(asleep, gt_stats(one[0])),
           "a second release changed the tag");
  GT_EXPECT(memsleep_alloc(&q, GT_MIB, DEV, one[0], MEMSLEEP_BACKUP), MEMSLEEP_ESTATE);
  GT_CHECK(q == sentinel, "refused alloc into an asleep tag wrote %p into *ptr", q);
  GT_EXPECT(memsleep_alloc(&q, 64 * GT_MIB, DEV, one[0], 0), MEMSLEEP_ESTATE);
  GT_CHECK(stats_equal(asleep, gt_stats(one[0])), "refused allocs changed the asleep tag's stats");
  GT_EXPECT(memsleep_resume(twice, 2), MEMSLEEP_EINVAL);
  GT_CHECK(memsleep_is_asleep(one[0]) == 1, "a refused resume (tag named twice) woke the tag");
  GT_OK(memsleep_resume(one, 1));
  GT_EXPECT(memsleep_resume(one, 1), MEMSLEEP_ESTATE);
  GT_CHECK_CONTENTS(p, 0, 4 * GT_MIB, 500, "allocation after the state rules' cycle");
out:
  gt_free_all(&p, 1);
}

/* memsleep_free works asleep and awake, and frees the device memory. */
static void test_free_any_state(void) {
  const char *tags[] = {"c-free"};
  const size_t sizes[] = {8 * GT_MIB, GT_MIB, 64 * GT_MIB, 3 * GT_MIB};
  const unsigned flags[] = {MEMSLEEP_BACKUP, MEMSLEEP_ZERO, 0, MEMSLEEP_BACKUP};
  enum { N = 4 };
  void *p[N] = {NULL};
  size_t free0 = gt_free_bytes();
  for (size_t i = 0; i < N; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], flags[i]));
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 600 + i));
  }
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  void *a = p[0], *c = p[2];
  GT_OK(memsleep_free(a));
  p[0] = NULL;
  GT_OK(memsleep_free(c));
  p[2] = NULL;
  GT_CHECK(memsleep_owns(a) == 0 && memsleep_owns(c) == 0, "freed while asleep, still owned");
  GT_CHECK(gt_stats(tags[0]).allocations == 2, "asleep tag after 2 frees: %zu allocations",
           gt_stats(tags[0]).allocations);
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK_CONTENTS(p[1], 0, sizes[1], GT_BYTE(0), "ZERO allocation after its neighbours freed");
  GT_CHECK_CONTENTS(p[3], 0, sizes[3], 603, "BACKUP allocation after its neighbours freed");
  GT_OK(memsleep_free(p[1]));
  p[1] = NULL;
  GT_OK(memsleep_free(p[3]));
  p[3] = NULL;
  memsleep_stats_t s = gt_stats(tags[0]);
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.resident_bytes == 0 &&
               s.backup_bytes == 0,
           "tag after freeing everything: %zu allocations, reserved %zu, resident %zu, backup %zu",
           s.allocations, s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  size_t free1 = gt_free_bytes();
  GT_CHECK(free1 + GT_SLACK >= free0, "%.1f MiB of device memory not given back",
           gt_diff_mib(free0, free1));
out:
  gt_free_all(p, N);
}

typedef struct span {
  char *p;
  size_t size;
} span_t;

static int span_cmp(const void *a, const void *b) {
  const span_t *x = a, *y = b;
  return x->p < y->p ? -1 : x->p > y->p;
}

/* Thousands of 2 MiB allocations and odd sizes in one BACKUP tag (most
 * carved from slabs) survive a cycle byte for byte, never overlap, and
 * leave nothing behind. */
static void test_many_small(void) {
  const char *tags[] = {"c-many"};
  const size_t odd[] = {1, 255, 257, 1000, 4097, 3 * GT_MIB + 7, 16 * GT_MIB + 1};
  const size_t nodd = sizeof odd / sizeof odd[0];
  size_t free0 = gt_free_bytes();
  /* The blocks take 40% of the free device memory at most, and their pinned
   * backups 40% of the available host memory. */
  size_t budget = free0 / 10 * 4;
  size_t host = host_available_bytes();
  if (host != 0 && host / 10 * 4 < budget)
    budget = host / 10 * 4;
  size_t nblocks = MANY_BLOCKS;
  if (nblocks * 2 * GT_MIB + 64 * GT_MIB > budget)
    nblocks = budget > 64 * GT_MIB ? (budget - 64 * GT_MIB) / (2 * GT_MIB) : 0;
  size_t n = nblocks + nodd;
  void **p = calloc(n, sizeof *p);
  size_t *sizes = calloc(n, sizeof *sizes);
  span_t *spans = calloc(n, sizeof *spans);
  GT_CHECK(p != NULL && sizes != NULL && spans != NULL, "out of host memory");
  GT_CHECK(nblocks >= 100, "too little memory for the test: %.0f MiB free on the device",
           gt_mib(free0));
  if (nblocks < MANY_BLOCKS)
    printf("  scaled down to %zu blocks of 2 MiB (%.0f MiB free on the device, %.0f MiB on the "
           "host)\n",
           nblocks, gt_mib(free0), gt_mib(host));
  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    sizes[i] = i < nodd ? odd[i] : 2 * GT_MIB;
    total += sizes[i];
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], MEMSLEEP_BACKUP));
    GT_CHECK((uintptr_t)p[i] % 256 == 0, "%zu bytes at %p: not 256-byte aligned", sizes[i], p[i]);
    spans[i].p = p[i];
    spans[i].size = sizes[i];
  }
  qsort(spans, n, sizeof *spans, span_cmp);
  for (size_t i = 0; i + 1 < n; i++)
    GT_CHECK(spans[i].p + spans[i].size <= spans[i + 1].p,
             "allocations overlap: %p (%zu bytes) and %p", (void *)spans[i].p, spans[i].size,
             (void *)spans[i + 1].p);
  for (size_t i = 0; i < n; i++)
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 1000 + i));
  GT_CUDA(cudaDeviceSynchronize());
  memsleep_stats_t awake = gt_stats(tags[0]);
  gt_print_stats("awake:", awake);
  GT_CHECK(awake.allocations == n, "stats count %zu allocations, want %zu", awake.allocations, n);

  double t0 = gt_now_s();
  GT_OK(memsleep_release(tags, 1));
  double t1 = gt_now_s();
  memsleep_stats_t asleep = gt_stats(tags[0]);
  gt_print_stats("asleep:", asleep);
  GT_CHECK(asleep.resident_bytes == 0, "asleep: %zu bytes resident", asleep.resident_bytes);
  GT_CHECK(asleep.backup_bytes >= total, "asleep: backup %zu bytes < %zu allocated",
           asleep.backup_bytes, total);
  GT_OK(memsleep_resume(tags, 1));
  double t2 = gt_now_s();
  printf("  %zu allocations, %.1f MiB: release %.1f ms, resume %.1f ms\n", n, gt_mib(total),
         (t1 - t0) * 1e3, (t2 - t1) * 1e3);
  for (size_t i = 0; i < n; i++) {
    size_t bad = SIZE_MAX;
    GT_CUDA(gt_dev_check(p[i], 0, sizes[i], 1000 + i, &bad));
    GT_CHECK(bad == SIZE_MAX, "allocation %zu of %zu (%zu bytes at %p) differs at byte %zu", i, n,
             sizes[i], p[i], bad);
  }
  gt_free_all(p, n);
  memsleep_stats_t s = gt_stats(tags[0]);
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.resident_bytes == 0 &&
               s.backup_bytes == 0,
           "after freeing all: %zu allocations, reserved %zu, resident %zu, backup %zu",
           s.allocations, s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  size_t free1 = gt_free_bytes();
  GT_CHECK(free1 + GT_SLACK >= free0, "%.1f MiB of device memory not given back (empty slabs?)",
           gt_diff_mib(free0, free1));
out:
  if (p != NULL)
    gt_free_all(p, n);
  free(p);
  free(sizes);
  free(spans);
}

/* A thread allocating, using and freeing memory in a tag of its own. It
 * frees in batches of WORKER_LIVE: a free waits for the device work queued
 * before it (like cudaFree), so the allocations between batches are the
 * ones that show whether a release of another tag holds them up. */
#define WORKER_LIVE 32
typedef struct worker {
  pthread_t thread;
  char tag[32];
  int id;
  atomic_int *stop;
  atomic_int ops;      /* allocations done */
  atomic_int finished; /* the thread has returned (error or stop) */
  double (*times)[2];  /* [start, end] of each memsleep_alloc call */
  size_t ntimes, cap;
  char error[512]; /* first failure, "" if none */
} worker_t;

static int worker_record(worker_t *w, double a, double b) {
  if (w->ntimes == w->cap) {
    size_t cap = w->cap ? 2 * w->cap : 1024;
    double(*t)[2] = realloc(w->times, cap * sizeof *t);
    if (t == NULL)
      return -1;
    w->times = t;
    w->cap = cap;
  }
  w->times[w->ntimes][0] = a;
  w->times[w->ntimes][1] = b;
  w->ntimes++;
  return 0;
}

static void worker_run(worker_t *w) {
  void *live[WORKER_LIVE] = {NULL};
  size_t nlive = 0;
  cudaError_t e = cudaSetDevice(DEV);
  if (e != cudaSuccess) {
    snprintf(w->error, sizeof w->error, "cudaSetDevice: %s", cudaGetErrorName(e));
    return;
  }
  for (int i = 0; !atomic_load(w->stop) || i < 4; i++) {
    if (nlive == WORKER_LIVE) {
      for (size_t k = 0; k < nlive; k++) {
        int rc = memsleep_free(live[k]);
        live[k] = NULL;
        if (rc != 0) {
          snprintf(w->error, sizeof w->error, "memsleep_free (tag %s): %s: %s", w->tag,
                   memsleep_strerror(rc), memsleep_last_error());
          goto done;
        }
      }
      nlive = 0;
    }
    size_t size = i % 2 ? 24 * GT_MIB : GT_MIB + 4096 * (size_t)w->id;
    unsigned flags = i % 3 == 0 ? MEMSLEEP_BACKUP : 0;
    void *p = NULL;
    double a = gt_now_s();
    int rc = memsleep_alloc(&p, size, DEV, w->tag, flags);
    double b = gt_now_s();
    if (rc != 0) {
      snprintf(w->error, sizeof w->error, "memsleep_alloc(%zu, \"%s\"): %s: %s", size, w->tag,
               memsleep_strerror(rc), memsleep_last_error());
      goto done;
    }
    live[nlive++] = p;
    size_t bad = SIZE_MAX;
    e = gt_dev_write(p, 0, 64 * 1024, 700 + (uint64_t)i);
    if (e == cudaSuccess)
      e = gt_dev_check(p, 0, 64 * 1024, 700 + (uint64_t)i, &bad);
    if (e != cudaSuccess || bad != SIZE_MAX) {
      snprintf(w->error, sizeof w->error, "allocation %d of tag %s: %s, differs at byte %zu", i,
               w->tag, cudaGetErrorName(e), bad);
      goto done;
    }
    if (worker_record(w, a, b) != 0) {
      snprintf(w->error, sizeof w->error, "out of host memory");
      goto done;
    }
    atomic_fetch_add(&w->ops, 1);
  }
done:
  for (size_t k = 0; k < nlive; k++)
    if (memsleep_free(live[k]) != 0 && w->error[0] == '\0')
      snprintf(w->error, sizeof w->error, "memsleep_free (tag %s): %s", w->tag,
               memsleep_last_error());
}

static void *worker_main(void *arg) {
  worker_t *w = arg;
  worker_run(w);
  atomic_store(&w->finished, 1);
  return NULL;
}

/* Allocations of other tags go on while a large release runs (they are not
 * queued behind it), and neither disturbs the other's memory. */
static void test_threads_during_release(void) {
  enum { NW = 4 };
  const char *tags[] = {"c-big"};
  worker_t w[NW];
  atomic_int stop = 0;
  int started = 0;
  void *big = NULL;
  memset(w, 0, sizeof w);
  size_t size = 2 * GT_GIB;
  size_t free0 = gt_free_bytes();
  if (size > free0 / 5)
    size = free0 / 5 / GT_MIB * GT_MIB;
  GT_OK(memsleep_alloc(&big, size, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_CUDA(gt_dev_write(big, 0, size, 900));
  GT_CUDA(cudaDeviceSynchronize());
  for (int i = 0; i < NW; i++) {
    w[i].id = i;
    w[i].stop = &stop;
    atomic_init(&w[i].ops, 0);
    atomic_init(&w[i].finished, 0);
    snprintf(w[i].tag, sizeof w[i].tag, "c-thread-%d", i);
    GT_CHECK(pthread_create(&w[i].thread, NULL, worker_main, &w[i]) == 0, "pthread_create");
    started++;
  }
  /* Every worker is running before the release starts. */
  for (double t = gt_now_s(); gt_now_s() - t < 60;) {
    int ready = 0;
    for (int i = 0; i < NW; i++)
      ready += atomic_load(&w[i].ops) > 0 || atomic_load(&w[i].finished);
    if (ready == NW)
      break;
    usleep(1000);
  }
  double t0 = gt_now_s();
  int rc_rel = memsleep_release(tags, 1);
  double t1 = gt_now_s();
  usleep(20000);
  int rc_res = rc_rel == 0 ? memsleep_resume(tags, 1) : rc_rel;
  double t2 = gt_now_s();
  atomic_store(&stop, 1);
  for (int i = 0; i < started; i++)
    pthread_join(w[i].thread, NULL);
  started = 0;
  GT_CHECK(rc_rel == 0, "release of %s during allocations: %s: %s", tags[0],
           memsleep_strerror(rc_rel), memsleep_last_error());
  GT_CHECK(rc_res == 0, "resume of %s during allocations: %s: %s", tags[0],
           memsleep_strerror(rc_res), memsleep_last_error());
  size_t during = 0, ops = 0;
  for (int i = 0; i < NW; i++) {
    GT_CHECK(w[i].error[0] == '\0', "worker %d: %s", i, w[i].error);
    ops += w[i].ntimes;
    for (size_t k = 0; k < w[i].ntimes; k++)
      during += w[i].times[k][0] >= t0 && w[i].times[k][1] <= t1;
  }
  printf("  release of %.0f MiB took %.1f ms, resume %.1f ms; %zu allocations in other tags, %zu "
         "of them started and finished during the release\n",
         gt_mib(size), (t1 - t0) * 1e3, (t2 - t1) * 1e3, ops, during);
  if (t1 - t0 >= 0.1)
    GT_CHECK(during > 0,
             "no allocation in another tag completed during a %.0f ms release: allocations "
             "wait for releases of other tags",
             (t1 - t0) * 1e3);
  GT_CHECK_CONTENTS(big, 0, size, 900, "BACKUP allocation released while others allocated");
out:
  atomic_store(&stop, 1);
  for (int i = 0; i < started; i++)
    pthread_join(w[i].thread, NULL);
  for (int i = 0; i < NW; i++)
    free(w[i].times);
  gt_free_all(&big, 1);
}

/* keep_backups(1) keeps the host backups after a resume (and the next
 * release refreshes them: no stale contents come back); keep_backups(0)
 * frees the kept ones at once and every backup at resume. */
static void test_keep_backups(void) {
  const char *tags[] = {"c-keep"};
  const size_t sizes[] = {64 * GT_MIB, GT_MIB};
  void *p[2] = {NULL, NULL};
  int orig = memsleep_keep_backups(-1);
  GT_CHECK(orig == 0 || orig == 1, "memsleep_keep_backups(-1) returned %d", orig);
  printf("  keep_backups was %d (MEMSLEEP_KEEP_BACKUPS=%s)\n", orig,
         getenv("MEMSLEEP_KEEP_BACKUPS") ? getenv("MEMSLEEP_KEEP_BACKUPS") : "unset");
  GT_CHECK(memsleep_keep_backups(1) == orig,
           "memsleep_keep_backups(1) did not return the old value");
  GT_CHECK(memsleep_keep_backups(-1) == 1, "memsleep_keep_backups(-1) after setting 1");
  for (size_t i = 0; i < 2; i++) {
    GT_OK(memsleep_alloc(&p[i], sizes[i], DEV, tags[0], MEMSLEEP_BACKUP));
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 1100 + i));
  }
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  size_t backup = gt_stats(tags[0]).backup_bytes;
  GT_CHECK(backup >= sizes[0] + sizes[1], "asleep: backup %zu bytes", backup);
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK(gt_stats(tags[0]).backup_bytes == backup,
           "keep_backups(1): backup %zu bytes after resume, %zu while asleep",
           gt_stats(tags[0]).backup_bytes, backup);
  for (size_t i = 0; i < 2; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 1100 + i, "first cycle with kept backups");
  /* New contents: the next release must copy them, not trust the kept copy. */
  for (size_t i = 0; i < 2; i++)
    GT_CUDA(gt_dev_write(p[i], 0, sizes[i], 1110 + i));
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  GT_OK(memsleep_resume(tags, 1));
  for (size_t i = 0; i < 2; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 1110 + i, "second cycle, reusing kept backups");

  GT_CHECK(memsleep_keep_backups(0) == 1, "memsleep_keep_backups(0) did not return 1");
  GT_CHECK(gt_stats(tags[0]).backup_bytes == 0, "keep_backups(0) left %zu bytes of kept backups",
           gt_stats(tags[0]).backup_bytes);
  GT_OK(memsleep_release(tags, 1));
  GT_CHECK(gt_stats(tags[0]).backup_bytes >= sizes[0] + sizes[1],
           "keep_backups(0), asleep: backup %zu bytes", gt_stats(tags[0]).backup_bytes);
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK(gt_stats(tags[0]).backup_bytes == 0,
           "keep_backups(0): %zu bytes of backups still held after resume",
           gt_stats(tags[0]).backup_bytes);
  for (size_t i = 0; i < 2; i++)
    GT_CHECK_CONTENTS(p[i], 0, sizes[i], 1110 + i, "cycle with keep_backups(0)");
out:
  if (orig == 0 || orig == 1)
    memsleep_keep_backups(orig);
  gt_free_all(p, 2);
}

/* A release called right after work was queued on the memory, without a
 * synchronize (what a PyTorch program does), backs up what that work wrote:
 * the backup is taken after the queued work, not during it. */
static void test_release_after_queued_work(void) {
  const char *tags[] = {"c-queued"};
  void *p = NULL;
  size_t size = GT_GIB;
  size_t free0 = gt_free_bytes();
  if (size > free0 / 8)
    size = free0 / 8 / GT_MIB * GT_MIB;
  int keep = memsleep_keep_backups(1);
  GT_OK(memsleep_alloc(&p, size, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_CUDA(cudaMemset(p, 0x11, size));
  GT_CUDA(cudaDeviceSynchronize());
  /* A first cycle leaves the pinned backup in place, so that the release
   * below starts copying at once instead of pinning memory first. */
  GT_OK(memsleep_release(tags, 1));
  GT_OK(memsleep_resume(tags, 1));
  /* Tens of milliseconds of work on the default stream; the last one wins. */
  for (int k = 0; k < 32; k++)
    GT_CUDA(cudaMemsetAsync(p, 0x20 + k, size, 0));
  GT_OK(memsleep_release(tags, 1));
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK_CONTENTS(p, 0, size, GT_BYTE(0x3f),
                    "BACKUP allocation released right after queued memsets (no synchronize)");
out:
  if (keep == 0 || keep == 1)
    memsleep_keep_backups(keep);
  gt_free_all(&p, 1);
}

/* Nothing is leaked: with every allocation freed, all figures are zero. */
static void test_all_freed(void) {
  memsleep_stats_t s = gt_stats(NULL), m = gt_measure(NULL);
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.resident_bytes == 0 &&
               s.backup_bytes == 0,
           "everything freed, yet stats(NULL): %zu allocations, reserved %zu, resident %zu, "
           "backup %zu",
           s.allocations, s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  GT_CHECK(m.resident_bytes == 0 && m.reserved_bytes == 0,
           "everything freed, yet measure(NULL): reserved %zu, resident %zu", m.reserved_bytes,
           m.resident_bytes);
out:
  return;
}

int main(void) {
  int rc = gt_begin("test_cuda_contract", DEV);
  if (rc != 0)
    return rc;
  printf("MEMSLEEP_CUDA_STREAMS=%s MEMSLEEP_SLAB_BYTES=%s MEMSLEEP_KEEP_BACKUPS=%s\n",
         getenv("MEMSLEEP_CUDA_STREAMS") ? getenv("MEMSLEEP_CUDA_STREAMS") : "(default)",
         getenv("MEMSLEEP_SLAB_BYTES") ? getenv("MEMSLEEP_SLAB_BYTES") : "(default)",
         getenv("MEMSLEEP_KEEP_BACKUPS") ? getenv("MEMSLEEP_KEEP_BACKUPS") : "(default)");
  const struct {
    const char *name;
    void (*fn)(void);
  } tests[] = {
      {"backend_available", test_backend_available},
      {"alloc_free", test_alloc_free},
      {"bad_input", test_bad_input},
      {"backup_roundtrip", test_backup_roundtrip},
      {"zero", test_zero},
      {"no_backup", test_no_backup},
      {"state_rules", test_state_rules},
      {"free_any_state", test_free_any_state},
      {"many_small", test_many_small},
      {"threads_during_release", test_threads_during_release},
      {"keep_backups", test_keep_backups},
      {"release_after_queued_work", test_release_after_queued_work},
      {"all_freed", test_all_freed},
  };
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    int before = gt_failed;
    double t = gt_now_s();
    printf("-- %s\n", tests[i].name);
    tests[i].fn();
    printf("   %s: %s (%.2f s)\n", tests[i].name, gt_failed == before ? "ok" : "FAILED",
           gt_now_s() - t);
    if (i == 0 && gt_failed != before)
      break; /* no backend: every other test would fail the same way */
  }
  return gt_end();
}
