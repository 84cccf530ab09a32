/*
 * test_cuda_residual.c - what is left on the GPU after releasing everything.
 *
 * Allocates about 4 GiB in mixed sizes across three tags (weights with a
 * backup, a KV cache that reads zeros after a wake, scratch without a
 * policy), releases every tag at once, and checks that the device's free
 * memory (cuMemGetInfo) is back within 2 MiB of what it was before the first
 * allocation; resumes, checks contents, frees everything and checks again.
 * Where nvidia-smi lists this process, its per-process figure (what an RL
 * driver gating on NVML sees) must agree within 2 MiB too.
 *
 *   test_cuda_residual [--gib N]     (exit 0 pass, 1 fail, 77 no CUDA device)
 */
#include <cuda.h>
#include <dlfcn.h>
#include <unistd.h>

#include "gpu_test.h"

#define DEV 0

/* Free bytes from the driver API (the figure an inference engine checks).
 * libcuda is looked up at run time, so that on a machine without a driver
 * the test reaches its skip instead of failing to start. */
static size_t cu_free_bytes(void) {
  static CUresult (*get_info)(size_t *, size_t *);
  if (get_info == NULL) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (lib == NULL)
      lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (lib != NULL)
      *(void **)&get_info = dlsym(lib, "cuMemGetInfo_v2");
    if (get_info == NULL) {
      const char *why = dlerror();
      fprintf(stderr,
              "test_cuda_residual: no cuMemGetInfo_v2 in libcuda.so.1 (%s); using "
              "cudaMemGetInfo\n",
              why ? why : "not found");
      return gt_free_bytes();
    }
  }
  size_t free_b = 0, total_b = 0;
  CUresult r = get_info(&free_b, &total_b);
  if (r != CUDA_SUCCESS) {
    fprintf(stderr, "test_cuda_residual: cuMemGetInfo: CUresult %d; using cudaMemGetInfo\n",
            (int)r);
    return gt_free_bytes();
  }
  return free_b;
}

/* This process's used GPU memory in MiB as nvidia-smi reports it (summed
 * over GPUs), or -1 when nvidia-smi is missing or does not list the process
 * (another PID namespace). */
static long smi_used_mib(void) {
  FILE *f = popen("nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits "
                  "2>/dev/null",
                  "r");
  if (f == NULL)
    return -1;
  long sum = -1, pid = 0, mib = 0;
  char line[256];
  while (fgets(line, sizeof line, f) != NULL)
    if (sscanf(line, "%ld , %ld", &pid, &mib) == 2 && pid == (long)getpid())
      sum = (sum < 0 ? 0 : sum) + mib;
  pclose(f);
  return sum;
}

typedef struct piece {
  const char *tag;
  unsigned flags;
  size_t size;
  void *p;
} piece_t;

int main(int argc, char **argv) {
  double gib = 4.0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--gib") == 0 && i + 1 < argc)
      gib = atof(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--gib N]\n", argv[0]);
      return 2;
    }
  }
  int rc = gt_begin("test_cuda_residual", DEV);
  if (rc != 0)
    return rc;
  piece_t *pieces = NULL;
  size_t n = 0;
  void *plain = NULL;

  /* The test's own first use of CUDA (the runtime's memset and copy paths
   * load lazily) happens before the reference figure, on cudaMalloc memory. */
  GT_CUDA(cudaMalloc(&plain, 4 * GT_MIB));
  GT_CUDA(gt_dev_write(plain, 0, 4 * GT_MIB, 1));
  GT_CUDA(cudaMemset(plain, 0, 4 * GT_MIB));
  GT_CHECK_CONTENTS(plain, 0, 4 * GT_MIB, GT_BYTE(0), "cudaMalloc memory");
  GT_CUDA(cudaFree(plain));
  plain = NULL;
  GT_CUDA(cudaDeviceSynchronize());

  /* memsleep's own start-up on the device (its copy streams) is not memory
   * of the allocations: measured and reported apart, then the reference. */
  size_t free_pre = cu_free_bytes();
  void *first = NULL;
  GT_OK(memsleep_alloc(&first, 4096, DEV, "r-start", 0));
  GT_OK(memsleep_free(first));
  size_t free0 = cu_free_bytes();
  long smi0 = smi_used_mib();
  printf("memsleep start-up on the device: %.2f MiB\n", gt_diff_mib(free_pre, free0));
  GT_CHECK(free0 > 0, "cuMemGetInfo gave no figure");
  if ((double)free0 * 0.6 < gib * (double)GT_GIB) {
    gib = (double)free0 * 0.6 / (double)GT_GIB;
    printf("scaled down to %.2f GiB: %.0f MiB free\n", gib, gt_mib(free0));
  }
  /* The layout: a few large weights, many 2 MiB KV blocks (carved from
   * slabs), scratch of odd sizes. About gib GiB in all. */
  double unit = gib / 4.0 * (double)GT_GIB; /* bytes per quarter */
  size_t cap = 4096;
  pieces = calloc(cap, sizeof *pieces);
  GT_CHECK(pieces != NULL, "out of host memory");
  size_t big = (size_t)(unit / 2) / GT_MIB * GT_MIB;
  pieces[n++] = (piece_t){"r-weights", MEMSLEEP_BACKUP, big, NULL};
  pieces[n++] = (piece_t){"r-weights", MEMSLEEP_BACKUP, big / 2 + 12345, NULL};
  for (size_t i = 0; i < 40; i++)
    pieces[n++] =
        (piece_t){"r-weights", MEMSLEEP_BACKUP, (size_t)(unit / 2 / 40) / 2 * 2 + 8, NULL};
  for (size_t i = 0; i < (size_t)(unit * 2) / (2 * GT_MIB) && n < cap - 16; i++)
    pieces[n++] = (piece_t){"r-kv", MEMSLEEP_ZERO, 2 * GT_MIB, NULL};
  const size_t odd[] = {1, 1000, 4096, 3 * GT_MIB + 7, 17 * GT_MIB, 129 * GT_MIB + 3};
  for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++)
    pieces[n++] = (piece_t){"r-scratch", 0, odd[i], NULL};
  pieces[n++] = (piece_t){"r-scratch", 0, (size_t)unit / 2, NULL};

  size_t total = 0;
  for (size_t i = 0; i < n; i++) {
    GT_OK(memsleep_alloc(&pieces[i].p, pieces[i].size, DEV, pieces[i].tag, pieces[i].flags));
    total += pieces[i].size;
    if (pieces[i].flags == MEMSLEEP_BACKUP)
      GT_CUDA(gt_dev_write(pieces[i].p, 0, pieces[i].size, 50 + i));
    else
      GT_CUDA(cudaMemset(pieces[i].p, 0x5a, pieces[i].size));
  }
  GT_CUDA(cudaDeviceSynchronize());
  size_t free1 = cu_free_bytes();
  long smi1 = smi_used_mib();
  memsleep_stats_t all = gt_stats(NULL);
  printf("%zu allocations, %.1f MiB asked, %.1f MiB reserved; device memory used by them: %.1f "
         "MiB\n",
         n, gt_mib(total), gt_mib(all.reserved_bytes), gt_diff_mib(free0, free1));
  GT_CHECK(free0 >= free1 + total - GT_SLACK,
           "allocating %.1f MiB took only %.1f MiB of device memory", gt_mib(total),
           gt_diff_mib(free0, free1));

  GT_OK(memsleep_release(NULL, 0));
  size_t free2 = cu_free_bytes();
  long smi2 = smi_used_mib();
  memsleep_stats_t m = gt_measure(NULL);
  printf("released every tag: free %.1f MiB before allocating, %.1f MiB now: residual %.2f MiB\n",
         gt_mib(free0), gt_mib(free2), gt_diff_mib(free0, free2));
  GT_CHECK(memsleep_is_asleep("r-weights") == 1 && memsleep_is_asleep("r-kv") == 1 &&
               memsleep_is_asleep("r-scratch") == 1,
           "memsleep_release(NULL, 0) left a tag awake");
  GT_CHECK(m.resident_bytes == 0, "after releasing all, %zu bytes measured resident",
           m.resident_bytes);
  /* Checked at the end, once the figure after freeing everything is known
   * too: the two together say whether memory stays with the backups. */
  int released_ok = free2 + GT_SLACK >= free0;
  if (smi0 >= 0 && smi2 >= 0) {
    printf("nvidia-smi, this process: %ld MiB before, %ld MiB allocated, %ld MiB released\n", smi0,
           smi1, smi2);
    GT_CHECK(smi2 <= smi0 + 2, "nvidia-smi: %ld MiB used after releasing all, %ld MiB before", smi2,
             smi0);
  } else {
    printf("nvidia-smi does not list this process (missing, or another PID namespace): "
           "comparison skipped\n");
  }

  GT_OK(memsleep_resume(NULL, 0));
  size_t free3 = cu_free_bytes();
  printf("resumed: device memory in use again %.1f MiB\n", gt_diff_mib(free0, free3));
  GT_CHECK(free0 >= free3 + total - GT_SLACK, "resume brought back only %.1f MiB of %.1f MiB",
           gt_diff_mib(free0, free3), gt_mib(total));
  for (size_t i = 0; i < n; i++) {
    size_t bad = SIZE_MAX;
    if (pieces[i].flags == MEMSLEEP_BACKUP)
      GT_CUDA(gt_dev_check(pieces[i].p, 0, pieces[i].size, 50 + i, &bad));
    else if (pieces[i].flags == MEMSLEEP_ZERO)
      GT_CUDA(gt_dev_check(pieces[i].p, 0, pieces[i].size, GT_BYTE(0), &bad));
    GT_CHECK(bad == SIZE_MAX, "%s allocation %zu (%zu bytes) differs at byte %zu after resume",
             pieces[i].tag, i, pieces[i].size, bad);
  }

  for (size_t i = 0; i < n; i++)
    gt_free_all(&pieces[i].p, 1);
  memsleep_stats_t s = gt_stats(NULL);
  size_t free4 = cu_free_bytes();
  long smi4 = smi_used_mib();
  printf("freed everything: residual %.2f MiB\n", gt_diff_mib(free0, free4));
  GT_CHECK(s.allocations == 0 && s.reserved_bytes == 0 && s.resident_bytes == 0 &&
               s.backup_bytes == 0,
           "after freeing all: %zu allocations, reserved %zu, resident %zu, backup %zu",
           s.allocations, s.reserved_bytes, s.resident_bytes, s.backup_bytes);
  GT_CHECK(released_ok,
           "residual after releasing everything: %.2f MiB (limit 2 MiB) -- %.1f MiB allocated",
           gt_diff_mib(free0, free2), gt_mib(total));
  GT_CHECK(free4 + GT_SLACK >= free0, "residual after freeing everything: %.2f MiB (limit 2 MiB)",
           gt_diff_mib(free0, free4));
  if (smi0 >= 0 && smi4 >= 0)
    GT_CHECK(smi4 <= smi0 + 2, "nvidia-smi: %ld MiB used after freeing all, %ld MiB before", smi4,
             smi0);
out:
  if (plain != NULL)
    cudaFree(plain);
  for (size_t i = 0; pieces != NULL && i < n; i++)
    gt_free_all(&pieces[i].p, 1);
  free(pieces);
  return gt_end();
}
