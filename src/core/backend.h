/*
 * backend.h - the interface between the memory core and a memory backend.
 *
 * The core keeps the registry, the tags and the all-or-nothing logic; a
 * backend only knows how to reserve address space, put physical memory behind
 * it, take it away again and move contents to and from host backups. The host
 * backend (mmap) and the CUDA backend (driver VMM API) implement this table;
 * the core never calls mmap or a driver itself.
 *
 * Every operation returns 0 or a negative MEMSLEEP_E* code and, on failure,
 * sets the thread's last error naming the call and the bytes involved. An
 * operation that fails leaves its own range as it found it.
 */
#ifndef MEMSLEEP_CORE_BACKEND_H
#define MEMSLEEP_CORE_BACKEND_H

#include <stddef.h>

typedef struct ms__backend {
  const char *name; /* "host", "cuda" */

  /* Ready the backend for device (loads the driver on first use). Returns
   * MEMSLEEP_EUNAVAIL, with the reason, where it cannot run here. */
  int (*init)(int device);

  /* Size every reservation and mapping on device is a multiple of. */
  int (*granularity)(int device, size_t *out_bytes);

  /* Reserves size bytes of address space (no physical memory; access faults). */
  int (*reserve)(int device, size_t size, void **va);
  /* Gives back a reservation made by reserve(); the range must be unmapped. */
  int (*unreserve)(int device, void *va, size_t size);

  /* Puts fresh physical memory behind a reserved range and makes it
   * readable and writable by the device. Contents are undefined. */
  int (*map)(int device, void *va, size_t size);
  /* Frees the physical memory behind a mapped range; the range stays
   * reserved and touching it faults. */
  int (*unmap)(int device, void *va, size_t size);
  /* Sets a mapped range to zeros (may complete at sync()). */
  int (*zero)(int device, void *va, size_t size);

  /* Measures how many bytes of [va, va+size) have physical memory behind
   * them now (not what the core believes is mapped). */
  int (*resident)(int device, const void *va, size_t size, size_t *out_bytes);

  /* Host memory for a backup of size bytes of device memory. */
  int (*backup_alloc)(int device, size_t size, void **host);
  void (*backup_free)(int device, void *host, size_t size);
  /* Optional (NULL when not needed): the sizes backup_alloc() is about to
   * be asked for on device, in that order, so the backend can prepare the
   * buffers ahead while earlier copies run; n == 0 ends it and frees what
   * was prepared but not asked for. */
  void (*backup_prepare)(int device, const size_t *sizes, size_t n);
  /* Copies a mapped range into a backup and back; both may run
   * asynchronously and are complete only once sync() returned 0. */
  int (*copy_out)(int device, const void *va, void *host, size_t size);
  int (*copy_in)(int device, const void *host, void *va, size_t size);
  /* Waits for every copy and zero issued so far on device, and for the
   * work the user queued there. */
  int (*sync)(int device);
  /* Optional (both NULL when not offered): fence() marks the copies issued
   * so far on device (*token); fence_wait() waits for them and frees the
   * token (a failing wait frees it too). Lets a release unmap allocations
   * whose backups are complete while later copies still run. */
  int (*fence)(int device, void **token);
  int (*fence_wait)(int device, void *token);

  /* Optional (NULL when the backend cannot): hands the physical memory of a
   * mapped range over to a new host backup without copying, leaving the
   * range reserved and unmapped; move_in() hands it back, consuming the
   * backup. Either one, on failure, changes nothing. */
  int (*move_out)(int device, void *va, size_t size, void **host);
  int (*move_in)(int device, void *host, void *va, size_t size);

  /* 1 if backups should be kept after a resume so the next release reuses
   * them (pinned memory is costly to allocate), 0 to free them at once. */
  int keep_backups;
  /* Size of the slabs small allocations are carved from (0: every
   * allocation gets its own mapping). Allocations of at most a quarter of
   * it go to slabs; MEMSLEEP_SLAB_BYTES overrides it for every backend. */
  size_t slab_bytes;
  /* 1 if map() always hands out zeroed memory, so MEMSLEEP_ZERO needs no
   * zero() after it. */
  int map_zeroes;
} ms__backend_t;

/* The backend that serves device (MEMSLEEP_HOST or a CUDA ordinal); sets
 * *out, or returns MEMSLEEP_EUNAVAIL / MEMSLEEP_EINVAL with the reason. */
int ms__backend_for(int device, const ms__backend_t **out);

extern const ms__backend_t ms__host_backend;
extern const ms__backend_t ms__cuda_backend;

#endif /* MEMSLEEP_CORE_BACKEND_H */
