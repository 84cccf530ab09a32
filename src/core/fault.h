/*
 * fault.h - fault injection for tests, and the checked backend calls.
 *
 * The core reaches its backend only through the ms__op_* wrappers below.
 * Each counts as one backend operation; a test can arm the injector so that
 * the k-th operation from now fails with MEMSLEEP_EBACKEND (once, or that
 * one and every later one), which is how the tests prove that release and
 * resume are all-or-nothing. Cleanup calls (unreserve, backup_free) are not
 * counted: the core has no way back from them and does not need one.
 */
#ifndef MEMSLEEP_CORE_FAULT_H
#define MEMSLEEP_CORE_FAULT_H

#include <stddef.h>

#include "backend.h"

/* Makes the k-th counted backend operation from now fail (k >= 1); with
 * sticky, that one and all after it until disarmed. k == 0 disarms.
 * Process-wide. Exported for tests only; not part of the public API. */
void ms__fault_arm(long k, int sticky);
/* Counted operations since the last ms__fault_arm(). */
long ms__fault_count(void);

/* 0, or MEMSLEEP_EBACKEND with a last-error naming op if the injector fires. */
int ms__fault_hit(const char *op, const void *va, size_t size);

static inline int ms__op_reserve(const ms__backend_t *be, int dev, size_t size, void **va) {
  int rc = ms__fault_hit("reserve", NULL, size);
  return rc ? rc : be->reserve(dev, size, va);
}
static inline int ms__op_map(const ms__backend_t *be, int dev, void *va, size_t size) {
  int rc = ms__fault_hit("map", va, size);
  return rc ? rc : be->map(dev, va, size);
}
static inline int ms__op_unmap(const ms__backend_t *be, int dev, void *va, size_t size) {
  int rc = ms__fault_hit("unmap", va, size);
  return rc ? rc : be->unmap(dev, va, size);
}
static inline int ms__op_zero(const ms__backend_t *be, int dev, void *va, size_t size) {
  int rc = ms__fault_hit("zero", va, size);
  return rc ? rc : be->zero(dev, va, size);
}
static inline int ms__op_backup_alloc(const ms__backend_t *be, int dev, size_t size, void **h) {
  int rc = ms__fault_hit("backup_alloc", NULL, size);
  return rc ? rc : be->backup_alloc(dev, size, h);
}
static inline int ms__op_copy_out(const ms__backend_t *be, int dev, const void *va, void *h,
                                  size_t size) {
  int rc = ms__fault_hit("copy_out", va, size);
  return rc ? rc : be->copy_out(dev, va, h, size);
}
static inline int ms__op_copy_in(const ms__backend_t *be, int dev, const void *h, void *va,
                                 size_t size) {
  int rc = ms__fault_hit("copy_in", va, size);
  return rc ? rc : be->copy_in(dev, h, va, size);
}
static inline int ms__op_sync(const ms__backend_t *be, int dev) {
  int rc = ms__fault_hit("sync", NULL, 0);
  return rc ? rc : be->sync(dev);
}
static inline int ms__op_move_out(const ms__backend_t *be, int dev, void *va, size_t size,
                                  void **h) {
  int rc = ms__fault_hit("move_out", va, size);
  return rc ? rc : be->move_out(dev, va, size, h);
}
static inline int ms__op_move_in(const ms__backend_t *be, int dev, void *h, void *va, size_t size) {
  int rc = ms__fault_hit("move_in", va, size);
  return rc ? rc : be->move_in(dev, h, va, size);
}

#endif /* MEMSLEEP_CORE_FAULT_H */
