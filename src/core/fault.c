/*
 * fault.c - the fault injector behind the ms__op_* wrappers (see fault.h).
 *
 * Disarmed, it costs one relaxed atomic load per backend operation.
 */
#include "fault.h"

#include <stdatomic.h>

#include "error.h"
#include "memsleep/memsleep.h"

static atomic_long ms__fault_at;   /* 0: disarmed; else fire at this count */
static atomic_long ms__fault_seen; /* counted operations since arming */
static atomic_int ms__fault_sticky;

void ms__fault_arm(long k, int sticky) {
  atomic_store(&ms__fault_seen, 0);
  atomic_store(&ms__fault_sticky, sticky);
  atomic_store(&ms__fault_at, k < 0 ? 0 : k);
}

long ms__fault_count(void) {
  return atomic_load(&ms__fault_seen);
}

int ms__fault_hit(const char *op, const void *va, size_t size) {
  long at = atomic_load_explicit(&ms__fault_at, memory_order_relaxed);
  long n = atomic_fetch_add(&ms__fault_seen, 1) + 1;
  if (at == 0)
    return 0;
  if (n == at || (n > at && atomic_load(&ms__fault_sticky)))
    return ms__fail(MEMSLEEP_EBACKEND, "%s(%p, %zu bytes): injected fault (operation %ld)", op, va,
                    size, n);
  return 0;
}
