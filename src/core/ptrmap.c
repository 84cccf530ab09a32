/*
 * ptrmap.c - open-addressing pointer hash table (see ptrmap.h).
 */
#include "ptrmap.h"

#include <stdint.h>
#include <stdlib.h>

#include "memsleep/memsleep.h"

/* Allocation addresses are page-aligned, so the low bits carry nothing:
 * mix every bit in (the finalizer of a 64-bit murmur-style hash). */
static size_t ms__hash(const void *p) {
  uint64_t x = (uint64_t)(uintptr_t)p;
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return (size_t)x;
}

void *ms__ptrmap_get(const ms__ptrmap_t *m, const void *key) {
  if (m->capacity == 0 || key == NULL)
    return NULL;
  size_t mask = m->capacity - 1;
  for (size_t i = ms__hash(key) & mask;; i = (i + 1) & mask) {
    if (m->slots[i].key == key)
      return m->slots[i].value;
    if (m->slots[i].key == NULL)
      return NULL;
  }
}

static void ms__ptrmap_insert_slot(ms__ptrmap_slot_t *slots, size_t capacity, const void *key,
                                   void *value) {
  size_t mask = capacity - 1;
  size_t i = ms__hash(key) & mask;
  while (slots[i].key != NULL)
    i = (i + 1) & mask;
  slots[i].key = key;
  slots[i].value = value;
}

static int ms__ptrmap_grow(ms__ptrmap_t *m) {
  size_t capacity = m->capacity ? m->capacity * 2 : 64;
  ms__ptrmap_slot_t *slots = calloc(capacity, sizeof *slots);
  if (slots == NULL)
    return MEMSLEEP_ENOMEM;
  for (size_t i = 0; i < m->capacity; i++)
    if (m->slots[i].key != NULL)
      ms__ptrmap_insert_slot(slots, capacity, m->slots[i].key, m->slots[i].value);
  free(m->slots);
  m->slots = slots;
  m->capacity = capacity;
  return 0;
}

int ms__ptrmap_put(ms__ptrmap_t *m, const void *key, void *value) {
  /* Keep the load factor under 1/2 so probe sequences stay short. */
  if ((m->count + 1) * 2 > m->capacity) {
    int rc = ms__ptrmap_grow(m);
    if (rc != 0)
      return rc;
  }
  ms__ptrmap_insert_slot(m->slots, m->capacity, key, value);
  m->count++;
  return 0;
}

void *ms__ptrmap_remove(ms__ptrmap_t *m, const void *key) {
  if (m->capacity == 0 || key == NULL)
    return NULL;
  size_t mask = m->capacity - 1;
  size_t i = ms__hash(key) & mask;
  while (m->slots[i].key != key) {
    if (m->slots[i].key == NULL)
      return NULL;
    i = (i + 1) & mask;
  }
  void *value = m->slots[i].value;
  /* Backward-shift: move later members of the probe run into the hole so
   * that every key stays reachable from its home slot without tombstones. */
  size_t hole = i;
  for (size_t j = (i + 1) & mask; m->slots[j].key != NULL; j = (j + 1) & mask) {
    size_t home = ms__hash(m->slots[j].key) & mask;
    /* j may move to hole if home is not cyclically inside (hole, j]. */
    int home_in_between = (hole < j) ? (home > hole && home <= j) : (home > hole || home <= j);
    if (!home_in_between) {
      m->slots[hole] = m->slots[j];
      hole = j;
    }
  }
  m->slots[hole].key = NULL;
  m->slots[hole].value = NULL;
  m->count--;
  return value;
}

void ms__ptrmap_destroy(ms__ptrmap_t *m) {
  free(m->slots);
  m->slots = NULL;
  m->capacity = 0;
  m->count = 0;
}
