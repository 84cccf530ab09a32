/*
 * gpu_sleep_wake.c - benchmark of release/resume on the CUDA backend.
 *
 * In one run on one GPU, it measures:
 *   - the limit: raw cudaMemcpyAsync between device memory and pinned host
 *     memory, device to host and host to device, of the backup size (the
 *     pinned buffer is allocated once, outside the timing). Two ways, best of
 *     three each: one copy on one stream, and the bytes in 256 pieces over
 *     MEMSLEEP_CUDA_STREAMS streams; the faster is the limit;
 *   - release/resume with backup of 16 GiB in 256 allocations, cycle by
 *     cycle: the first cycle pins the backups, later ones reuse them. GB/s
 *     and the ratio to the limit (device to host for release, host to device
 *     for resume);
 *   - release/resume without backup of one 40 GiB allocation, and of 40 GiB
 *     in 20,000 allocations of 2 MiB (a paged KV cache of small blocks);
 *     beside them, the same bytes unmapped and mapped again with raw driver
 *     calls (one piece, and 1 GiB pieces): the driver scrubs memory it has
 *     just taken back before handing it out again, so a map right after an
 *     unmap pays for that whoever calls it. Also a resume after a second of
 *     idle, when the scrub is done.
 * Every release is checked to have given the memory back (cudaMemGetInfo),
 * every resume without backup to have mapped it (a memset of all of it
 * afterwards), and the backup case's contents after the last resume (every
 * allocation's head and tail, four allocations whole), so a fast but wrong
 * result cannot pass. Sizes shrink, with a note, when the GPU or the host has
 * less memory. The table comes last: case, bytes, time, GB/s, ratio to the
 * limit, target, met.
 *
 *   bench_gpu_sleep_wake [--gib-backup N] [--gib-nobackup N] [--cycles N] [--device N]
 */
#include <cuda.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "memsleep/memsleep.h"

#define MIB            ((size_t)1 << 20)
#define GIB            ((size_t)1 << 30)
#define NBACKUP        256         /* allocations in the backup case */
#define BLOCK          (2 * MIB)   /* KV block size */
#define BLOCKS_PER_GIB 500         /* 40 GiB -> 20,000 blocks */
#define EDGE           (64 * 1024) /* head and tail written with a unique pattern */
#define STREAMS_MAX    16

#define CUDA_OK(call)                                                                              \
  do {                                                                                             \
    cudaError_t e_ = (call);                                                                       \
    if (e_ != cudaSuccess) {                                                                       \
      fprintf(stderr, "bench_gpu_sleep_wake: %s: %s: %s\n", #call, cudaGetErrorName(e_),           \
              cudaGetErrorString(e_));                                                             \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

#define MS_OK(call)                                                                                \
  do {                                                                                             \
    int rc_ = (call);                                                                              \
    if (rc_ != 0) {                                                                                \
      fprintf(stderr, "bench_gpu_sleep_wake: %s: %s: %s\n", #call, memsleep_strerror(rc_),         \
              memsleep_last_error());                                                              \
      exit(1);                                                                                     \
    }                                                                                              \
  } while (0)

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void fail(const char *what) {
  fprintf(stderr, "bench_gpu_sleep_wake: FAIL: %s\n", what);
  exit(1);
}

static size_t free_bytes(void) {
  size_t f = 0, t = 0;
  CUDA_OK(cudaMemGetInfo(&f, &t));
  return f;
}

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

static double median(const double *v, int n) {
  double s[64];
  if (n <= 0)
    return 0;
  if (n > 64)
    n = 64;
  memcpy(s, v, (size_t)n * sizeof *s);
  for (int i = 1; i < n; i++)
    for (int j = i; j > 0 && s[j - 1] > s[j]; j--) {
      double t = s[j];
      s[j] = s[j - 1];
      s[j - 1] = t;
    }
  return n % 2 ? s[n / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
}

/* The unique pattern of allocation i's head and tail. */
static void edge_pattern(unsigned char *buf, size_t n, uint64_t i, int tail) {
  uint64_t z = (i + 1) * 0x9e3779b97f4a7c15ULL + (uint64_t)tail * 0xbf58476d1ce4e5b9ULL;
  for (size_t k = 0; k < n; k += 8) {
    z ^= z >> 31;
    z *= 0xd6e8feb86659fd93ULL;
    z += 0x632be59bd9b4e019ULL;
    memcpy(buf + k, &z, n - k < 8 ? n - k : 8);
  }
}

static unsigned char body_byte(size_t i) {
  return (unsigned char)(i * 7 + 1);
}

/* One line of the final table. */
typedef struct row {
  char name[64];
  size_t bytes;
  double seconds;
  double ratio; /* to the limit; < 0: not a copy */
  char target[24];
  int met; /* 1 yes, 0 no, -1 no target */
} row_t;

static row_t rows[40];
static int nrows;

static void add_row(const char *name, size_t bytes, double seconds, double ratio,
                    const char *target, int met) {
  if (nrows == (int)(sizeof rows / sizeof rows[0]))
    return;
  row_t *r = &rows[nrows++];
  snprintf(r->name, sizeof r->name, "%s", name);
  r->bytes = bytes;
  r->seconds = seconds;
  r->ratio = ratio;
  snprintf(r->target, sizeof r->target, "%s", target);
  r->met = met;
}

static const char *env_or(const char *name, const char *dflt) {
  const char *v = getenv(name);
  return v != NULL && *v != '\0' ? v : dflt;
}

/* Times copies of bytes between dev and pinned host one way: one copy on one
 * stream, then NBACKUP pieces round-robin over streams; best of three each.
 * Returns the best seconds. */
static double copy_limit(void *dev, void *host, size_t bytes, int d2h, cudaStream_t *streams,
                         int nstreams) {
  double best = 1e30;
  size_t piece = bytes / NBACKUP;
  for (int way = 0; way < 2; way++) {
    double best_way = 1e30;
    for (int r = 0; r < 3; r++) {
      double t0 = now_s();
      if (way == 0) {
        CUDA_OK(d2h ? cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, streams[0])
                    : cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, streams[0]));
      } else {
        for (size_t k = 0; k < NBACKUP; k++) {
          char *h = (char *)host + k * piece, *g = (char *)dev + k * piece;
          cudaStream_t s = streams[k % (size_t)nstreams];
          CUDA_OK(d2h ? cudaMemcpyAsync(h, g, piece, cudaMemcpyDeviceToHost, s)
                      : cudaMemcpyAsync(g, h, piece, cudaMemcpyHostToDevice, s));
        }
      }
      for (int s = 0; s < nstreams; s++)
        CUDA_OK(cudaStreamSynchronize(streams[s]));
      double dt = now_s() - t0;
      if (dt < best_way)
        best_way = dt;
    }
    printf("  pinned %s, %s: %.1f ms, %.2f GB/s\n", d2h ? "device->host" : "host->device",
           way == 0 ? "one copy, one stream" : "256 pieces over the streams", best_way * 1e3,
           (double)bytes / best_way / 1e9);
    if (best_way < best)
      best = best_way;
  }
  return best;
}

/* The driver alone: reserve bytes, then `cycles` times unmap every piece
 * and map it again at once (cuMemCreate, cuMemMap, cuMemSetAccess per piece
 * of `piece` bytes, the handle released after mapping as memsleep does).
 * Medians of the unmap and map times. */
static void raw_vmm(int device, size_t bytes, size_t piece, int cycles, double *unmap_s,
                    double *map_s) {
  CUdeviceptr va = 0;
  CUmemAllocationProp prop;
  memset(&prop, 0, sizeof prop);
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  CUmemAccessDesc access;
  memset(&access, 0, sizeof access);
  access.location = prop.location;
  access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
  if (cuMemAddressReserve(&va, bytes, 0, 0, 0) != CUDA_SUCCESS)
    fail("raw driver baseline: cuMemAddressReserve failed");
  double um[16], mp[16];
  if (cycles > 16)
    cycles = 16;
  for (int c = 0; c <= cycles; c++) {
    double t0 = now_s();
    for (size_t off = 0; off < bytes; off += piece) {
      size_t n = bytes - off < piece ? bytes - off : piece;
      CUmemGenericAllocationHandle h;
      if (cuMemCreate(&h, n, &prop, 0) != CUDA_SUCCESS || cuMemMap(va + off, n, 0, h, 0) != 0 ||
          cuMemSetAccess(va + off, n, &access, 1) != CUDA_SUCCESS)
        fail("raw driver baseline: mapping failed");
      cuMemRelease(h);
    }
    double t1 = now_s();
    for (size_t off = 0; off < bytes; off += piece)
      cuMemUnmap(va + off, bytes - off < piece ? bytes - off : piece);
    double t2 = now_s();
    if (c > 0) { /* the first map is of scrubbed memory: not a cycle */
      mp[c - 1] = t1 - t0;
      um[c - 1] = t2 - t1;
    }
  }
  cuMemAddressFree(va, bytes);
  *unmap_s = median(um, cycles);
  *map_s = median(mp, cycles);
}

/* The least device memory a release gave back, over every cycle, and what
 * it was meant to give back: a row of the table says how close. */
static size_t least_back[3] = {SIZE_MAX, SIZE_MAX, SIZE_MAX};

/* Release and resume of tag, checking the device gave back the want_back
 * bytes while asleep (less `keep` bytes: the device memory the driver needs
 * to map pinned backups, reported in the table) and took them again. */
static void cycle(int which, const char *tag, size_t want_back, size_t keep, double *rel_s,
                  double *res_s) {
  const char *tags[] = {tag};
  size_t before = free_bytes();
  double t0 = now_s();
  MS_OK(memsleep_release(tags, 1));
  double t1 = now_s();
  size_t asleep = free_bytes();
  double t2 = now_s();
  MS_OK(memsleep_resume(tags, 1));
  double t3 = now_s();
  size_t awake = free_bytes();
  size_t back = asleep > before ? asleep - before : 0;
  if (back < least_back[which])
    least_back[which] = back;
  if (back + 2 * MIB + keep < want_back) {
    fprintf(stderr, "bench_gpu_sleep_wake: release of %s gave back %.1f MiB, want %.1f MiB\n", tag,
            (double)back / (double)MIB, (double)want_back / (double)MIB);
    fail("a release did not free the device memory");
  }
  if (awake > before + 2 * MIB)
    fail("a resume did not map the memory back (free memory stayed up)");
  *rel_s = t1 - t0;
  *res_s = t3 - t2;
}

int main(int argc, char **argv) {
  double gib_backup = 16, gib_nobackup = 40;
  int cycles = 4, device = 0;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--gib-backup") == 0 && i + 1 < argc)
      gib_backup = atof(argv[++i]);
    else if (strcmp(argv[i], "--gib-nobackup") == 0 && i + 1 < argc)
      gib_nobackup = atof(argv[++i]);
    else if (strcmp(argv[i], "--cycles") == 0 && i + 1 < argc)
      cycles = atoi(argv[++i]);
    else if (strcmp(argv[i], "--device") == 0 && i + 1 < argc)
      device = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--gib-backup N] [--gib-nobackup N] [--cycles N] [--device N]\n",
              argv[0]);
      return 2;
    }
  }
  if (gib_backup <= 0 || gib_nobackup <= 0 || cycles < 1 || cycles > 64) {
    fprintf(stderr, "bench_gpu_sleep_wake: sizes must be positive, cycles 1..64\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  int ndev = 0;
  cudaError_t e = cudaGetDeviceCount(&ndev);
  if (e != cudaSuccess || ndev <= device) {
    printf("bench_gpu_sleep_wake: SKIP: no CUDA device %d (%s)\n", device,
           e == cudaSuccess ? "not present" : cudaGetErrorName(e));
    return 77;
  }
  CUDA_OK(cudaSetDevice(device));
  CUDA_OK(cudaFree(NULL));
  struct cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, device));
  int drv = 0, rt = 0;
  cudaDriverGetVersion(&drv);
  cudaRuntimeGetVersion(&rt);
  size_t free0 = 0, total0 = 0;
  CUDA_OK(cudaMemGetInfo(&free0, &total0));
  size_t host = host_available_bytes();
  int keep = memsleep_keep_backups(-1);
  printf("GPU sleep/wake benchmark: device %d, %s (PCI %04x:%02x:%02x), %.1f GiB total, %.1f GiB "
         "free; host %.1f GiB available; driver CUDA %d.%d, runtime %d.%d\n",
         device, prop.name, prop.pciDomainID, prop.pciBusID, prop.pciDeviceID,
         (double)total0 / (double)GIB, (double)free0 / (double)GIB, (double)host / (double)GIB,
         drv / 1000, drv % 1000 / 10, rt / 1000, rt % 1000 / 10);
  printf("in force: MEMSLEEP_CUDA_STREAMS=%s MEMSLEEP_SLAB_BYTES=%s MEMSLEEP_KEEP_BACKUPS=%s "
         "(keep_backups %d) MEMSLEEP_CUDA_MAP_PIECE=%s MEMSLEEP_CUDA_PIN=%s "
         "MEMSLEEP_CUDA_PIN_THREADS=%s\n",
         env_or("MEMSLEEP_CUDA_STREAMS", "(default 4)"),
         env_or("MEMSLEEP_SLAB_BYTES", "(default 64 MiB)"),
         env_or("MEMSLEEP_KEEP_BACKUPS", "(default 1)"), keep,
         env_or("MEMSLEEP_CUDA_MAP_PIECE", "(default 1 GiB)"),
         env_or("MEMSLEEP_CUDA_PIN", "(default register)"),
         env_or("MEMSLEEP_CUDA_PIN_THREADS", "(default)"));

  /* Sizes that fit: 2 GiB of the device and 4 GiB of the host stay free. */
  double fit_dev = ((double)free0 - 2.0 * (double)GIB) / (double)GIB;
  double fit_host = host > 0 ? ((double)host - 4.0 * (double)GIB) / (double)GIB : gib_backup;
  if (gib_backup > fit_dev || gib_backup > fit_host) {
    double g = fit_dev < fit_host ? fit_dev : fit_host;
    printf("note: scaled the backup case down from %.1f to %.1f GiB (device or host memory)\n",
           gib_backup, g);
    gib_backup = g;
  }
  if (gib_nobackup > fit_dev) {
    printf("note: scaled the no-backup cases down from %.1f to %.1f GiB (device memory)\n",
           gib_nobackup, fit_dev);
    gib_nobackup = fit_dev;
  }
  if (gib_backup < 0.5 || gib_nobackup < 0.5)
    fail("less than 0.5 GiB to measure with");
  size_t each = (size_t)(gib_backup * (double)GIB) / NBACKUP / BLOCK * BLOCK;
  size_t backup_bytes = each * NBACKUP;
  size_t one_bytes = (size_t)(gib_nobackup * (double)GIB) / BLOCK * BLOCK;
  size_t nblocks = (size_t)(gib_nobackup * BLOCKS_PER_GIB + 0.5);
  double scale_nb = gib_nobackup / 40.0; /* targets scale with size */
  double scale_blocks = (double)nblocks / 20000.0;
  if (scale_nb < 0.999 || scale_nb > 1.001)
    printf("note: the no-backup targets (28 ms / 2 ms for 40 GiB, 150 ms for 20,000 blocks) "
           "scale with the size measured\n");

  /* 1. The limit: pinned copies of the same bytes. */
  printf("-- pinned copy limit, %.2f GiB\n", (double)backup_bytes / (double)GIB);
  int nstreams = atoi(env_or("MEMSLEEP_CUDA_STREAMS", "4"));
  if (nstreams < 1 || nstreams > STREAMS_MAX)
    nstreams = 4;
  cudaStream_t streams[STREAMS_MAX];
  for (int s = 0; s < nstreams; s++)
    CUDA_OK(cudaStreamCreateWithFlags(&streams[s], cudaStreamNonBlocking));
  void *dev = NULL, *pinned = NULL;
  CUDA_OK(cudaMalloc(&dev, backup_bytes));
  double tp = now_s();
  CUDA_OK(cudaHostAlloc(&pinned, backup_bytes, cudaHostAllocDefault));
  tp = now_s() - tp;
  printf("  (cudaHostAlloc of %.2f GiB took %.2f s, %.2f GB/s: what a first release pays if it "
         "pins this way)\n",
         (double)backup_bytes / (double)GIB, tp, (double)backup_bytes / tp / 1e9);
  CUDA_OK(cudaMemset(dev, 1, backup_bytes));
  CUDA_OK(cudaDeviceSynchronize());
  double lim_d2h = copy_limit(dev, pinned, backup_bytes, 1, streams, nstreams);
  double lim_h2d = copy_limit(dev, pinned, backup_bytes, 0, streams, nstreams);
  double gbs_d2h = (double)backup_bytes / lim_d2h / 1e9,
         gbs_h2d = (double)backup_bytes / lim_h2d / 1e9;
  add_row("limit: pinned copy device->host", backup_bytes, lim_d2h, 1.0, "-", -1);
  add_row("limit: pinned copy host->device", backup_bytes, lim_h2d, 1.0, "-", -1);
  CUDA_OK(cudaFree(dev));
  CUDA_OK(cudaFreeHost(pinned));
  for (int s = 0; s < nstreams; s++)
    CUDA_OK(cudaStreamDestroy(streams[s]));

  /* 2. Release/resume with backup, cycle by cycle. */
  printf("-- backup: %d allocations of %.1f MiB (%.2f GiB), MEMSLEEP_BACKUP\n", NBACKUP,
         (double)each / (double)MIB, (double)backup_bytes / (double)GIB);
  void *ptrs[NBACKUP];
  unsigned char *edge = malloc(EDGE), *got = malloc(EDGE);
  if (edge == NULL || got == NULL)
    fail("out of host memory");
  double ta = now_s();
  for (size_t i = 0; i < NBACKUP; i++)
    MS_OK(memsleep_alloc(&ptrs[i], each, device, "bench_weights", MEMSLEEP_BACKUP));
  ta = now_s() - ta;
  printf("  allocated in %.1f ms\n", ta * 1e3);
  for (size_t i = 0; i < NBACKUP; i++) {
    CUDA_OK(cudaMemset(ptrs[i], body_byte(i), each));
    edge_pattern(edge, EDGE, i, 0);
    CUDA_OK(cudaMemcpy(ptrs[i], edge, EDGE, cudaMemcpyHostToDevice));
    edge_pattern(edge, EDGE, i, 1);
    CUDA_OK(cudaMemcpy((char *)ptrs[i] + each - EDGE, edge, EDGE, cudaMemcpyHostToDevice));
  }
  CUDA_OK(cudaDeviceSynchronize());
  double rel[64], res[64];
  printf("  %-6s %11s %9s %7s %11s %9s %7s\n", "cycle", "release ms", "GB/s", "ratio", "resume ms",
         "GB/s", "ratio");
  for (int c = 0; c < cycles; c++) {
    cycle(0, "bench_weights", backup_bytes, backup_bytes / 256, &rel[c], &res[c]);
    double g1 = (double)backup_bytes / rel[c] / 1e9, g2 = (double)backup_bytes / res[c] / 1e9;
    printf("  %-6d %11.1f %9.2f %7.2f %11.1f %9.2f %7.2f\n", c + 1, rel[c] * 1e3, g1, g1 / gbs_d2h,
           res[c] * 1e3, g2, g2 / gbs_h2d);
  }
  /* Contents: every head and tail, a window in the middle of each, four
   * allocations whole. */
  size_t window = each < 2 * MIB + 2 * EDGE ? each - 2 * EDGE : 2 * MIB;
  unsigned char *buf = malloc(each > window ? each : window);
  if (buf == NULL)
    fail("out of host memory");
  for (size_t i = 0; i < NBACKUP; i++) {
    for (int tail = 0; tail < 2; tail++) {
      edge_pattern(edge, EDGE, i, tail);
      CUDA_OK(cudaMemcpy(got, (char *)ptrs[i] + (tail ? each - EDGE : 0), EDGE,
                         cudaMemcpyDeviceToHost));
      if (memcmp(got, edge, EDGE) != 0)
        fail("an allocation's head or tail lost its contents after the last resume");
    }
    int whole = i == 0 || i == NBACKUP / 3 || i == 2 * NBACKUP / 3 || i == NBACKUP - 1;
    size_t off = whole ? EDGE : (each - window) / 2, n = whole ? each - 2 * EDGE : window;
    CUDA_OK(cudaMemcpy(buf, (char *)ptrs[i] + off, n, cudaMemcpyDeviceToHost));
    for (size_t k = 0; k < n; k++)
      if (buf[k] != body_byte(i))
        fail("an allocation's body lost its contents after the last resume");
  }
  printf("  device memory given back by a release: at least %.1f of %.1f MiB (%.3f%%; the rest "
         "maps the pinned backups for the copies)\n",
         (double)least_back[0] / (double)MIB, (double)backup_bytes / (double)MIB,
         100.0 * (double)least_back[0] / (double)backup_bytes);
  add_row("backup: fraction given back by release", backup_bytes, 0,
          (double)least_back[0] / (double)backup_bytes, "-", -1);
  printf("  contents after %d cycles: intact (every head and tail, %zu MiB of every body, 4 "
         "allocations whole)\n",
         cycles, window / MIB);
  free(buf);
  for (size_t i = 0; i < NBACKUP; i++)
    MS_OK(memsleep_free(ptrs[i]));
  {
    char target[24];
    double r1 = (double)backup_bytes / rel[0] / 1e9 / gbs_d2h;
    double r2 = (double)backup_bytes / res[0] / 1e9 / gbs_h2d;
    add_row("backup release, cycle 1", backup_bytes, rel[0], r1, ">= 0.50 x limit", r1 >= 0.5);
    add_row("backup resume, cycle 1", backup_bytes, res[0], r2, ">= 0.50 x limit", r2 >= 0.5);
    if (cycles >= 2) {
      double worst_rel = 0, worst_res = 0;
      for (int c = 1; c < cycles; c++) {
        worst_rel = rel[c] > worst_rel ? rel[c] : worst_rel;
        worst_res = res[c] > worst_res ? res[c] : worst_res;
      }
      r1 = (double)backup_bytes / worst_rel / 1e9 / gbs_d2h;
      r2 = (double)backup_bytes / worst_res / 1e9 / gbs_h2d;
      snprintf(target, sizeof target, ">= 0.90 x limit");
      add_row("backup release, cycles 2+ (slowest)", backup_bytes, worst_rel, r1, target,
              r1 >= 0.9);
      add_row("backup resume, cycles 2+ (slowest)", backup_bytes, worst_res, r2, target, r2 >= 0.9);
    }
  }

  /* 3. Without backup, one allocation. */
  printf("-- no backup: one allocation of %.2f GiB\n", (double)one_bytes / (double)GIB);
  void *one = NULL;
  ta = now_s();
  MS_OK(memsleep_alloc(&one, one_bytes, device, "bench_kv_one", 0));
  ta = now_s() - ta;
  CUDA_OK(cudaMemset(one, 0, one_bytes));
  CUDA_OK(cudaDeviceSynchronize());
  add_row("no backup, 1 alloc: alloc", one_bytes, ta, -1, "-", -1);
  for (int c = 0; c < cycles; c++) {
    cycle(1, "bench_kv_one", one_bytes, 0, &rel[c], &res[c]);
    CUDA_OK(cudaMemset(one, c + 1, one_bytes)); /* faults if not mapped */
    CUDA_OK(cudaDeviceSynchronize());
    printf("  cycle %d: release %.2f ms, resume %.2f ms\n", c + 1, rel[c] * 1e3, res[c] * 1e3);
  }
  {
    /* The same resume after a second of idle: the driver's scrub is done. */
    const char *tags[] = {"bench_kv_one"};
    MS_OK(memsleep_release(tags, 1));
    struct timespec idle = {1, 0};
    nanosleep(&idle, NULL);
    double t0 = now_s();
    MS_OK(memsleep_resume(tags, 1));
    double t1 = now_s();
    printf("  resume after 1 s idle: %.2f ms\n", (t1 - t0) * 1e3);
    add_row("no backup, 1 alloc: resume after 1 s idle", one_bytes, t1 - t0, -1, "-", -1);
  }
  MS_OK(memsleep_free(one));
  {
    double um = 0, mp = 0;
    raw_vmm(device, one_bytes, one_bytes, cycles, &um, &mp);
    printf("  raw driver, one piece: unmap %.2f ms, map right after %.2f ms\n", um * 1e3, mp * 1e3);
    add_row("raw driver, 1 piece: unmap (median)", one_bytes, um, -1, "baseline", -1);
    add_row("raw driver, 1 piece: map (median)", one_bytes, mp, -1, "baseline", -1);
    raw_vmm(device, one_bytes, GIB, cycles, &um, &mp);
    printf("  raw driver, 1 GiB pieces: unmap %.2f ms, map right after %.2f ms\n", um * 1e3,
           mp * 1e3);
    add_row("raw driver, 1 GiB pieces: unmap (median)", one_bytes, um, -1, "baseline", -1);
    add_row("raw driver, 1 GiB pieces: map (median)", one_bytes, mp, -1, "baseline", -1);
  }
  {
    char target[24];
    double mr = median(rel, cycles), ms = median(res, cycles);
    snprintf(target, sizeof target, "<= %.1f ms", 28.0 * scale_nb);
    add_row("no backup, 1 alloc: release (median)", one_bytes, mr, -1, target,
            mr * 1e3 <= 28.0 * scale_nb);
    snprintf(target, sizeof target, "<= %.1f ms", 2.0 * scale_nb);
    add_row("no backup, 1 alloc: resume (median)", one_bytes, ms, -1, target,
            ms * 1e3 <= 2.0 * scale_nb);
  }

  /* 4. Without backup, many 2 MiB blocks. */
  printf("-- no backup: %zu allocations of 2 MiB (%.2f GiB)\n", nblocks,
         (double)(nblocks * BLOCK) / (double)GIB);
  void **blocks = calloc(nblocks, sizeof *blocks);
  if (blocks == NULL)
    fail("out of host memory");
  ta = now_s();
  for (size_t i = 0; i < nblocks; i++)
    MS_OK(memsleep_alloc(&blocks[i], BLOCK, device, "bench_kv_blocks", 0));
  ta = now_s() - ta;
  printf("  allocated in %.1f ms (%.1f us each)\n", ta * 1e3, ta * 1e6 / (double)nblocks);
  memsleep_stats_t st;
  MS_OK(memsleep_stats("bench_kv_blocks", &st));
  printf("  reserved %.1f MiB in the tag (slabs included)\n",
         (double)st.reserved_bytes / (double)MIB);
  add_row("no backup, 2 MiB blocks: alloc", nblocks * BLOCK, ta, -1, "-", -1);
  for (int c = 0; c < cycles; c++) {
    cycle(2, "bench_kv_blocks", nblocks * BLOCK, 0, &rel[c], &res[c]);
    for (size_t i = 0; i < nblocks; i++) /* faults if not mapped */
      CUDA_OK(cudaMemsetAsync(blocks[i], c + 1, BLOCK, 0));
    CUDA_OK(cudaDeviceSynchronize());
    printf("  cycle %d: release %.2f ms, resume %.2f ms\n", c + 1, rel[c] * 1e3, res[c] * 1e3);
  }
  ta = now_s();
  for (size_t i = 0; i < nblocks; i++)
    MS_OK(memsleep_free(blocks[i]));
  ta = now_s() - ta;
  printf("  freed in %.1f ms\n", ta * 1e3);
  free(blocks);
  {
    char target[24];
    double mr = median(rel, cycles), ms = median(res, cycles);
    snprintf(target, sizeof target, "< %.0f ms", 150.0 * scale_blocks);
    add_row("no backup, 2 MiB blocks: release (median)", nblocks * BLOCK, mr, -1, target,
            mr * 1e3 < 150.0 * scale_blocks);
    add_row("no backup, 2 MiB blocks: resume (median)", nblocks * BLOCK, ms, -1, target,
            ms * 1e3 < 150.0 * scale_blocks);
  }
  free(edge);
  free(got);

  memsleep_stats_t all;
  MS_OK(memsleep_stats(NULL, &all));
  if (all.reserved_bytes || all.resident_bytes || all.backup_bytes)
    fail("memory left in memsleep after freeing everything");

  printf("\n%-42s %10s %11s %9s %7s %-16s %s\n", "case", "GiB", "ms", "GB/s", "ratio", "target",
         "met");
  int met = 0, targets = 0;
  for (int i = 0; i < nrows; i++) {
    const row_t *r = &rows[i];
    char ratio[16] = "-", gbs[16] = "-";
    if (r->ratio >= 0)
      snprintf(ratio, sizeof ratio, "%.3f", r->ratio);
    if (strstr(r->name, ": alloc") == NULL && r->seconds > 0) /* bytes moved per second */
      snprintf(gbs, sizeof gbs, "%.2f", (double)r->bytes / r->seconds / 1e9);
    printf("%-42s %10.2f %11.2f %9s %7s %-16s %s\n", r->name, (double)r->bytes / (double)GIB,
           r->seconds * 1e3, gbs, ratio, r->target,
           r->met < 0 ? "-"
           : r->met   ? "yes"
                      : "NO");
    if (r->met >= 0) {
      targets++;
      met += r->met;
    }
  }
  printf("bench_gpu_sleep_wake: targets met: %d of %d (limit %.2f GB/s device->host, %.2f GB/s "
         "host->device)\n",
         met, targets, gbs_d2h, gbs_h2d);
  return 0;
}
