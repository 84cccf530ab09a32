/*
 * cuda_pin.h - pinned host buffers for backups, prepared ahead of time.
 *
 * A first release of many gigabytes needs as many gigabytes of new pinned
 * host memory, and pinning is slower than the copy it serves: faulting the
 * pages in (zeroing them) runs at about 6 GB/s per thread, registering
 * them with the driver at about 55 GB/s on one thread. A pin job, started
 * with the list of sizes a release will ask for, faults buffers in on
 * several threads and registers them on another, in order, while the
 * release copies into the ones already ready.
 */
#ifndef MEMSLEEP_BACKEND_CUDA_PIN_H
#define MEMSLEEP_BACKEND_CUDA_PIN_H

#include <stddef.h>

#include "cuda_driver.h"

typedef struct ms__pin_job ms__pin_job_t;

/* Starts preparing n buffers of the given sizes for device (context ctx).
 * Returns NULL if it cannot (the caller then pins each buffer itself). */
ms__pin_job_t *ms__pin_start(int device, CUcontext ctx, const size_t *sizes, size_t n);

/* The next prepared buffer, if it has exactly size bytes: waits until it
 * is ready. NULL if the job has none (or its preparation failed): the
 * caller pins one itself. */
void *ms__pin_take(ms__pin_job_t *job, size_t size);

/* Stops the job and frees every buffer it prepared that was not taken. */
void ms__pin_stop(ms__pin_job_t *job);

/* Maps ms__pin_round(size) bytes of anonymous memory, asking for huge
 * pages, and faults it in on this thread; NULL on failure. */
void *ms__pin_fault(size_t size);

/* The length of a buffer for size bytes: what to register and munmap. */
size_t ms__pin_round(size_t size);

#endif /* MEMSLEEP_BACKEND_CUDA_PIN_H */
