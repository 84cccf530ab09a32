/*
 * host.c - the host-memory backend: anonymous mmap.
 *
 * Reservations are PROT_NONE mappings with no physical pages, so touching
 * released memory faults (SIGSEGV). Mapping replaces the range with fresh,
 * populated read/write pages (MAP_FIXED replaces atomically: the address
 * range is never free for another mmap to take). Unmapping replaces the
 * pages with a PROT_NONE reservation again, which gives them back to the
 * kernel: the process's resident set shrinks at once.
 *
 * Backups: on Linux the pages of an allocation are moved into the backup and
 * back with mremap (MREMAP_DONTUNMAP keeps the source range reserved), so a
 * release with backup copies nothing. Where the kernel cannot do that, or
 * MEMSLEEP_HOST_MOVE=0 is set in the environment, move_out answers
 * MEMSLEEP_EUNAVAIL and the core copies into a backup buffer instead - the
 * path the CUDA backend always takes.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include "core/backend.h"
#include "core/error.h"
#include "memsleep/memsleep.h"

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

/* -1 unknown, 0 off (environment or unsupported kernel), 1 on */
static atomic_int ms__host_moves = -1;

static int ms__host_errno_code(int err) {
  return err == ENOMEM ? MEMSLEEP_ENOMEM : MEMSLEEP_EBACKEND;
}

static int ms__host_init(int device) {
  (void)device;
  if (atomic_load(&ms__host_moves) < 0) {
    const char *env = getenv("MEMSLEEP_HOST_MOVE");
    atomic_store(&ms__host_moves, env != NULL && strcmp(env, "0") == 0 ? 0 : 1);
  }
  return 0;
}

static int ms__host_granularity(int device, size_t *out_bytes) {
  (void)device;
  long page = sysconf(_SC_PAGESIZE);
  *out_bytes = page > 0 ? (size_t)page : 4096;
  return 0;
}

static int ms__host_reserve(int device, size_t size, void **va) {
  (void)device;
  void *p = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    return ms__fail(ms__host_errno_code(err), "mmap(PROT_NONE, %zu bytes): %s", size,
                    strerror(err));
  }
  *va = p;
  return 0;
}

static int ms__host_unreserve(int device, void *va, size_t size) {
  (void)device;
  if (munmap(va, size) != 0) {
    int err = errno;
    return ms__fail(MEMSLEEP_EBACKEND, "munmap(%p, %zu bytes): %s", va, size, strerror(err));
  }
  return 0;
}

/* Mapping populates every page, so a mapping larger than the machine's RAM
 * and swap together could only end with the kernel's out-of-memory killer:
 * refuse it up front, whatever the overcommit setting. */
static int ms__host_fits(size_t size) {
  struct sysinfo si;
  if (sysinfo(&si) != 0)
    return 0;
  unsigned long long unit = si.mem_unit ? si.mem_unit : 1;
  unsigned long long limit = ((unsigned long long)si.totalram + si.totalswap) * unit;
  if ((unsigned long long)size > limit)
    return ms__fail(MEMSLEEP_ENOMEM,
                    "host mapping of %zu bytes: more than this machine's RAM and swap (%llu bytes)",
                    size, limit);
  return 0;
}

static int ms__host_map(int device, void *va, size_t size) {
  (void)device;
  int rc = ms__host_fits(size);
  if (rc != 0)
    return rc;
  /* Populated now so that resident_bytes is what is really there, and an
   * out-of-memory shows here rather than as a fault later. */
  void *p = mmap(va, size, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    /* The failed MAP_FIXED may have dropped the reservation: put it back. */
    mmap(va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
    return ms__fail(ms__host_errno_code(err), "mmap(MAP_FIXED|MAP_POPULATE, %p, %zu bytes): %s", va,
                    size, strerror(err));
  }
  return 0;
}

static int ms__host_unmap(int device, void *va, size_t size) {
  (void)device;
  void *p =
      mmap(va, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    return ms__fail(ms__host_errno_code(err), "mmap(PROT_NONE, MAP_FIXED, %p, %zu bytes): %s", va,
                    size, strerror(err));
  }
  return 0;
}

static int ms__host_resident(int device, const void *va, size_t size, size_t *out_bytes) {
  (void)device;
  size_t page = 0;
  ms__host_granularity(MEMSLEEP_HOST, &page);
  enum { WINDOW = 4096 }; /* pages asked about per mincore() call */
  unsigned char vec[WINDOW];
  size_t pages = (size + page - 1) / page, resident = 0;
  for (size_t first = 0; first < pages; first += WINDOW) {
    size_t n = pages - first < WINDOW ? pages - first : WINDOW;
    void *at = (char *)(uintptr_t)va + first * page;
    if (mincore(at, n * page, vec) != 0) {
      int err = errno;
      return ms__fail(MEMSLEEP_EBACKEND, "mincore(%p, %zu bytes): %s", at, n * page, strerror(err));
    }
    for (size_t i = 0; i < n; i++)
      resident += vec[i] & 1u;
  }
  *out_bytes = resident * page;
  return 0;
}

static int ms__host_zero(int device, void *va, size_t size) {
  (void)device;
  memset(va, 0, size);
  return 0;
}

static int ms__host_backup_alloc(int device, size_t size, void **host) {
  (void)device;
  void *p =
      mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  if (p == MAP_FAILED) {
    int err = errno;
    return ms__fail(ms__host_errno_code(err), "mmap(backup, %zu bytes): %s", size, strerror(err));
  }
  *host = p;
  return 0;
}

static size_t ms__host_round(size_t size) {
  size_t page = 0;
  ms__host_granularity(MEMSLEEP_HOST, &page);
  return (size + page - 1) / page * page;
}

static void ms__host_backup_free(int device, void *host, size_t size) {
  (void)device;
  munmap(host, ms__host_round(size));
}

static int ms__host_copy_out(int device, const void *va, void *host, size_t size) {
  (void)device;
  memcpy(host, va, size);
  return 0;
}

static int ms__host_copy_in(int device, const void *host, void *va, size_t size) {
  (void)device;
  memcpy(va, host, size);
  return 0;
}

static int ms__host_sync(int device) {
  (void)device;
  return 0;
}

static int ms__host_move_out(int device, void *va, size_t size, void **host) {
  (void)device;
  if (atomic_load(&ms__host_moves) != 1)
    return MEMSLEEP_EUNAVAIL;
  /* Protect first: the pages travel PROT_NONE, and the range left behind is
   * a PROT_NONE reservation the moment the move is done. */
  if (mprotect(va, size, PROT_NONE) != 0) {
    int err = errno;
    return ms__fail(MEMSLEEP_EBACKEND, "mprotect(%p, %zu bytes, PROT_NONE): %s", va, size,
                    strerror(err));
  }
  /* The fifth argument must be given: recent kernels read it as a hint with
   * MREMAP_DONTUNMAP and refuse an unaligned one. */
  void *p = mremap(va, size, size, MREMAP_MAYMOVE | MREMAP_DONTUNMAP, NULL);
  if (p == MAP_FAILED) {
    int err = errno;
    mprotect(va, size, PROT_READ | PROT_WRITE);
    if (err == EINVAL) { /* kernel without MREMAP_DONTUNMAP for this mapping */
      atomic_store(&ms__host_moves, 0);
      return MEMSLEEP_EUNAVAIL;
    }
    return ms__fail(ms__host_errno_code(err), "mremap(%p, %zu bytes, MREMAP_DONTUNMAP): %s", va,
                    size, strerror(err));
  }
  *host = p;
  return 0;
}

static int ms__host_move_in(int device, void *host, void *va, size_t size) {
  (void)device;
  /* MREMAP_FIXED replaces the reservation at va atomically. */
  void *p = mremap(host, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, va);
  if (p == MAP_FAILED) {
    int err = errno;
    return ms__fail(ms__host_errno_code(err), "mremap(%p -> %p, %zu bytes, MREMAP_FIXED): %s", host,
                    va, size, strerror(err));
  }
  if (mprotect(va, size, PROT_READ | PROT_WRITE) != 0) {
    int err = errno;
    /* Put the pages back where the backup was, leaving va reserved, so
     * that the failed call changes nothing. */
    mremap(va, size, size, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, host);
    return ms__fail(MEMSLEEP_EBACKEND, "mprotect(%p, %zu bytes, PROT_READ|PROT_WRITE): %s", va,
                    size, strerror(err));
  }
  return 0;
}

/* Copies here are done when copy_out returns: a fence has nothing to wait
 * for. Offered so that the core's early-unmap path runs (and is tested)
 * where backups are copied. */
static int ms__host_fence(int device, void **token) {
  (void)device;
  *token = &ms__host_moves; /* any non-NULL token */
  return 0;
}

static int ms__host_fence_wait(int device, void *token) {
  (void)device;
  (void)token;
  return 0;
}

const ms__backend_t ms__host_backend = {
    .name = "host",
    .init = ms__host_init,
    .granularity = ms__host_granularity,
    .reserve = ms__host_reserve,
    .unreserve = ms__host_unreserve,
    .map = ms__host_map,
    .unmap = ms__host_unmap,
    .zero = ms__host_zero,
    .resident = ms__host_resident,
    .backup_alloc = ms__host_backup_alloc,
    .backup_free = ms__host_backup_free,
    .copy_out = ms__host_copy_out,
    .copy_in = ms__host_copy_in,
    .sync = ms__host_sync,
    .fence = ms__host_fence,
    .fence_wait = ms__host_fence_wait,
    .move_out = ms__host_move_out,
    .move_in = ms__host_move_in,
    .keep_backups = 0,
    .slab_bytes = 0, /* off unless MEMSLEEP_SLAB_BYTES asks: one mapping each */
    .map_zeroes = 1,
};
