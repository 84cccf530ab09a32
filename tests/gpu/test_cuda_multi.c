/*
 * test_cuda_multi.c - tags on two GPUs: each release frees the right device.
 *
 * A tensor-parallel server holds memory on several GPUs, sometimes in one
 * tag. This test puts a tag on device 0, a tag on device 1 and a tag with
 * allocations on both (BACKUP, plus a ZERO one), and checks per device
 * (cudaMemGetInfo on each) that releasing a tag frees exactly its memory on
 * each device and no other, that contents come back on the right device,
 * and that releasing everything and freeing everything leave both devices as
 * they were. Skipped (exit 77) on a machine with fewer than two GPUs.
 *
 *   test_cuda_multi          (exit 0 pass, 1 fail, 77 fewer than 2 GPUs)
 */
#include "gpu_test.h"

typedef struct piece {
  const char *tag;
  int dev;
  size_t size;
  unsigned flags;
  void *p;
  int woken; /* went through a release/resume (a ZERO piece then reads zeros) */
} piece_t;

static piece_t pieces[] = {
    {"m-dev0", 0, 256 * GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-dev0", 0, GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-dev1", 1, 256 * GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-dev1", 1, GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-both", 0, 128 * GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-both", 1, 192 * GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-both", 1, 2 * GT_MIB, MEMSLEEP_BACKUP, NULL, 0},
    {"m-both", 0, 64 * GT_MIB, MEMSLEEP_ZERO, NULL, 0},
};
#define NPIECES (sizeof pieces / sizeof pieces[0])

/* Free bytes of device dev (selects it). */
static size_t free_on(int dev) {
  if (cudaSetDevice(dev) != cudaSuccess)
    return 0;
  return gt_free_bytes();
}

/* Bytes of tag (NULL: all) allocated on dev. */
static size_t bytes_of(const char *tag, int dev) {
  size_t sum = 0;
  for (size_t i = 0; i < NPIECES; i++)
    if (pieces[i].dev == dev && (tag == NULL || strcmp(pieces[i].tag, tag) == 0))
      sum += pieces[i].size;
  return sum;
}

/* Checks every awake piece's contents, on its own device. */
static void check_contents(const char *when) {
  for (size_t i = 0; i < NPIECES; i++) {
    if (memsleep_is_asleep(pieces[i].tag) != 0)
      continue;
    GT_CUDA(cudaSetDevice(pieces[i].dev));
    uint64_t want = pieces[i].flags == MEMSLEEP_ZERO && pieces[i].woken ? GT_BYTE(0) : 100 + i;
    size_t bad = SIZE_MAX;
    GT_CUDA(gt_dev_check(pieces[i].p, 0, pieces[i].size, want, &bad));
    GT_CHECK(bad == SIZE_MAX, "%s: %s allocation %zu on device %d differs at byte %zu", when,
             pieces[i].tag, i, pieces[i].dev, bad);
  }
out:
  return;
}

/* Releases tag (NULL: all) and checks each device gave back that tag's
 * bytes on it and not much more; then resumes and checks the contents. */
static void cycle(const char *tag) {
  const char *one[] = {tag};
  size_t before[2] = {free_on(0), free_on(1)};
  GT_CUDA(cudaSetDevice(0));
  GT_OK(memsleep_release(tag ? one : NULL, tag ? 1 : 0));
  size_t asleep[2] = {free_on(0), free_on(1)};
  for (int d = 0; d < 2; d++) {
    size_t want = bytes_of(tag, d);
    printf("  release %s: device %d gave back %.1f MiB (its allocations there: %.1f MiB)\n",
           tag ? tag : "(all)", d, gt_diff_mib(asleep[d], before[d]), gt_mib(want));
    GT_CHECK(asleep[d] + GT_SLACK >= before[d] + want,
             "release %s: device %d gave back %.1f MiB, want %.1f", tag ? tag : "(all)", d,
             gt_diff_mib(asleep[d], before[d]), gt_mib(want));
    if (want == 0)
      GT_CHECK(asleep[d] <= before[d] + GT_SLACK,
               "release %s freed %.1f MiB on device %d, where it has nothing", tag ? tag : "(all)",
               gt_diff_mib(asleep[d], before[d]), d);
  }
  check_contents("while one tag is asleep"); /* the others stay usable */
  GT_CUDA(cudaSetDevice(1));                 /* resume from another current device */
  GT_OK(memsleep_resume(tag ? one : NULL, tag ? 1 : 0));
  for (size_t i = 0; i < NPIECES; i++)
    pieces[i].woken |= tag == NULL || strcmp(pieces[i].tag, tag) == 0;
  size_t resumed[2] = {free_on(0), free_on(1)};
  for (int d = 0; d < 2; d++)
    GT_CHECK(resumed[d] <= before[d] + GT_SLACK && resumed[d] + GT_SLACK >= before[d],
             "after resume %s device %d has %.1f MiB free, %.1f before the release",
             tag ? tag : "(all)", d, gt_mib(resumed[d]), gt_mib(before[d]));
  check_contents("after resume");
out:
  return;
}

int main(void) {
  int rc = gt_begin("test_cuda_multi", 0);
  if (rc != 0)
    return rc;
  int ndev = 0;
  GT_CUDA(cudaGetDeviceCount(&ndev));
  if (ndev < 2) {
    printf("test_cuda_multi: SKIP: needs 2 GPUs, this machine has %d\n", ndev);
    return GT_SKIP;
  }
  GT_CUDA(cudaSetDevice(1));
  GT_CUDA(cudaFree(NULL)); /* device 1's context exists before the first figure */
  size_t free0[2] = {free_on(0), free_on(1)};
  printf("free: device 0 %.0f MiB, device 1 %.0f MiB\n", gt_mib(free0[0]), gt_mib(free0[1]));

  for (size_t i = 0; i < NPIECES; i++) {
    GT_OK(memsleep_alloc(&pieces[i].p, pieces[i].size, pieces[i].dev, pieces[i].tag,
                         pieces[i].flags));
    struct cudaPointerAttributes attr;
    cudaError_t e = cudaPointerGetAttributes(&attr, pieces[i].p);
    if (e == cudaSuccess)
      GT_CHECK(attr.device == pieces[i].dev, "allocation %zu asked on device %d lives on device %d",
               i, pieces[i].dev, attr.device);
    else
      printf("  cudaPointerGetAttributes(%p): %s (device not checked this way)\n", pieces[i].p,
             cudaGetErrorName(cudaGetLastError()));
    GT_CUDA(cudaSetDevice(pieces[i].dev));
    GT_CUDA(gt_dev_write(pieces[i].p, 0, pieces[i].size, 100 + i));
  }
  for (int d = 0; d < 2; d++) {
    GT_CUDA(cudaSetDevice(d));
    GT_CUDA(cudaDeviceSynchronize());
  }
  size_t used[2] = {free_on(0), free_on(1)};
  for (int d = 0; d < 2; d++)
    GT_CHECK(free0[d] >= used[d] + bytes_of(NULL, d) - GT_SLACK,
             "device %d: allocating %.1f MiB there took %.1f MiB", d, gt_mib(bytes_of(NULL, d)),
             gt_diff_mib(free0[d], used[d]));

  printf("-- one device's tag at a time\n");
  cycle("m-dev1");
  cycle("m-dev0");
  printf("-- a tag on both devices\n");
  cycle("m-both");
  printf("-- every tag\n");
  cycle(NULL);
  if (gt_failed != 0)
    goto out;

  for (size_t i = 0; i < NPIECES; i++)
    gt_free_all(&pieces[i].p, 1);
  size_t after[2] = {free_on(0), free_on(1)};
  for (int d = 0; d < 2; d++)
    GT_CHECK(after[d] + GT_SLACK >= free0[d], "device %d: %.1f MiB not given back after free", d,
             gt_diff_mib(free0[d], after[d]));
  memsleep_stats_t s = gt_stats(NULL);
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.backup_bytes == 0,
           "after freeing all: %zu allocations, reserved %zu, backup %zu", s.allocations,
           s.reserved_bytes, s.backup_bytes);
out:
  for (size_t i = 0; i < NPIECES; i++)
    gt_free_all(&pieces[i].p, 1);
  return gt_end();
}
