/*
 * ptrmap.h - hash table from an allocation's address to its record.
 *
 * Open addressing with linear probing and backward-shift deletion, so
 * lookup, insert and remove stay O(1) with hundreds of thousands of live
 * allocations and no tombstones pile up. Not thread-safe: the core's lock
 * guards it.
 */
#ifndef MEMSLEEP_CORE_PTRMAP_H
#define MEMSLEEP_CORE_PTRMAP_H

#include <stddef.h>

typedef struct ms__ptrmap_slot {
  const void *key; /* NULL: empty */
  void *value;
} ms__ptrmap_slot_t;

typedef struct ms__ptrmap {
  ms__ptrmap_slot_t *slots; /* capacity entries, a power of two */
  size_t capacity;
  size_t count;
} ms__ptrmap_t;

/* Returns the value stored for key, or NULL. */
void *ms__ptrmap_get(const ms__ptrmap_t *m, const void *key);
/* Stores key -> value (key not yet present). Returns 0 or MEMSLEEP_ENOMEM. */
int ms__ptrmap_put(ms__ptrmap_t *m, const void *key, void *value);
/* Removes key; returns its value or NULL if absent. */
void *ms__ptrmap_remove(ms__ptrmap_t *m, const void *key);
/* Frees the table's storage (not the values). */
void ms__ptrmap_destroy(ms__ptrmap_t *m);

#endif /* MEMSLEEP_CORE_PTRMAP_H */
