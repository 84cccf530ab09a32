/*
 * backend.c - picks the backend that serves a device.
 *
 * MEMSLEEP_HOST is served by the host (mmap) backend, CUDA ordinals by the
 * CUDA backend (which answers MEMSLEEP_EUNAVAIL from its init where there is
 * no driver).
 */
#include "backend.h"

#include "error.h"
#include "memsleep/memsleep.h"

int ms__backend_for(int device, const ms__backend_t **out) {
  if (device == MEMSLEEP_HOST) {
    *out = &ms__host_backend;
    return 0;
  }
  if (device < 0)
    return ms__fail(MEMSLEEP_EINVAL, "device %d: not MEMSLEEP_HOST (-1) nor a CUDA ordinal (>= 0)",
                    device);
  *out = &ms__cuda_backend;
  return 0;
}
