/*
 * registry.c - allocations and the questions asked about them: alloc, free,
 * is_asleep, stats, the list of tags.
 *
 * The physical work (reserve, map, unmap) runs outside the global lock so a
 * large allocation in one tag does not stall the others; a tag counts its
 * allocations in flight (pending) so a release of it waits for them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fault.h"
#include "state.h"

ms__global_t ms__g = {
    .lock = PTHREAD_MUTEX_INITIALIZER,
    .changed = PTHREAD_COND_INITIALIZER,
    .transition = PTHREAD_MUTEX_INITIALIZER,
};

/* Larger than any address space a backend can reserve (2^47 bytes is the
 * user half of x86-64 and the common ARM64 layout). */
#define MS__SIZE_MAX ((size_t)1 << 47)

static void ms__tag_link(ms__tag_t *t, ms__alloc_t *a) {
  a->tag = t;
  a->prev = NULL;
  a->next = t->head;
  if (t->head != NULL)
    t->head->prev = a;
  t->head = a;
  t->stats.allocations++;
  t->stats.reserved_bytes += a->reserved;
  if (a->state != MS__RELEASED)
    t->stats.resident_bytes += a->reserved;
  t->stats.backup_bytes += a->backup_bytes;
}

static void ms__tag_unlink(ms__alloc_t *a) {
  ms__tag_t *t = a->tag;
  if (a->prev != NULL)
    a->prev->next = a->next;
  else
    t->head = a->next;
  if (a->next != NULL)
    a->next->prev = a->prev;
  t->stats.allocations--;
  t->stats.reserved_bytes -= a->reserved;
  if (a->state != MS__RELEASED)
    t->stats.resident_bytes -= a->reserved;
  t->stats.backup_bytes -= a->backup_bytes;
}

int ms__flags_check(unsigned flags) {
  if (flags & ~(MEMSLEEP_BACKUP | MEMSLEEP_ZERO))
    return ms__fail(MEMSLEEP_EINVAL,
                    "flags 0x%x: unknown bits 0x%x (known: MEMSLEEP_BACKUP 0x1, "
                    "MEMSLEEP_ZERO 0x2)",
                    flags, flags & ~(MEMSLEEP_BACKUP | MEMSLEEP_ZERO));
  if ((flags & MEMSLEEP_BACKUP) && (flags & MEMSLEEP_ZERO))
    return ms__fail(MEMSLEEP_EINVAL,
                    "flags 0x%x: MEMSLEEP_ZERO applies to memory without a backup; pass one of "
                    "MEMSLEEP_BACKUP and MEMSLEEP_ZERO",
                    flags);
  return 0;
}

int memsleep_alloc(void **ptr, size_t size, int device, const char *tag, unsigned flags) {
  if (ptr == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_alloc: ptr is NULL");
  if (size == 0)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_alloc: size is 0");
  if (size > MS__SIZE_MAX)
    return ms__fail(MEMSLEEP_EINVAL,
                    "memsleep_alloc: size %zu bytes is more than any address space can reserve "
                    "(limit %zu bytes)",
                    size, MS__SIZE_MAX);
  int rc = ms__tag_check(tag);
  if (rc == 0)
    rc = ms__flags_check(flags);
  const ms__backend_t *be = NULL;
  if (rc == 0)
    rc = ms__backend_for(device, &be);
  if (rc == 0)
    rc = be->init(device);
  size_t gran = 0;
  if (rc == 0)
    rc = be->granularity(device, &gran);
  if (rc != 0)
    return rc;
  size_t reserved = (size + gran - 1) / gran * gran;

  ms__alloc_t *a = calloc(1, sizeof *a);
  if (a == NULL)
    return ms__fail(MEMSLEEP_ENOMEM,
                    "memsleep_alloc(%zu bytes, tag \"%s\"): out of host memory "
                    "for the allocation record",
                    size, tag);
  a->size = size;
  a->reserved = reserved;
  a->device = device;
  a->flags = flags;
  a->be = be;
  a->state = MS__MAPPED;

  /* Claim a place in an awake tag; a release of it waits for us. */
  pthread_mutex_lock(&ms__g.lock);
  ms__tag_t *t = NULL;
  int existed = ms__tag_find(tag) != NULL;
  rc = ms__tag_get(tag, &t);
  while (rc == 0 && t->busy)
    pthread_cond_wait(&ms__g.changed, &ms__g.lock);
  if (rc == 0 && t->asleep)
    rc = ms__fail(MEMSLEEP_ESTATE,
                  "memsleep_alloc(%zu bytes, tag \"%s\"): the tag is asleep; resume it first", size,
                  tag);
  if (rc == 0)
    t->pending++;
  pthread_mutex_unlock(&ms__g.lock);
  if (rc != 0) {
    free(a);
    return rc; /* a tag that is busy or asleep existed before us */
  }

  rc = ms__op_reserve(be, device, reserved, &a->va);
  if (rc == 0) {
    rc = ms__op_map(be, device, a->va, reserved);
    if (rc != 0) {
      be->unreserve(device, a->va, reserved);
      a->va = NULL;
    }
  }
  if (rc != 0)
    ms__fail_append(" (memsleep_alloc of %zu bytes, tag \"%s\")", size, tag);

  pthread_mutex_lock(&ms__g.lock);
  if (rc == 0) {
    rc = ms__ptrmap_put(&ms__g.by_address, a->va, a);
    if (rc == 0)
      ms__tag_link(t, a);
    else
      ms__fail(rc, "memsleep_alloc(%zu bytes, tag \"%s\"): out of host memory for the registry",
               size, tag);
  }
  t->pending--;
  if (rc != 0 && !existed)
    ms__tag_drop_if_unused(t); /* a failed call leaves no new tag behind */
  pthread_cond_broadcast(&ms__g.changed);
  pthread_mutex_unlock(&ms__g.lock);

  if (rc != 0) {
    if (a->va != NULL) {
      be->unmap(device, a->va, reserved);
      be->unreserve(device, a->va, reserved);
    }
    free(a);
    return rc;
  }
  *ptr = a->va;
  return 0;
}

int memsleep_free(void *ptr) {
  if (ptr == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_free: ptr is NULL");
  pthread_mutex_lock(&ms__g.lock);
  ms__alloc_t *a;
  /* A release/resume owns its tag's allocations: wait for it to finish.
   * Look up again after each wait, another thread may have freed ptr. */
  while ((a = ms__ptrmap_get(&ms__g.by_address, ptr)) != NULL && a->tag->busy)
    pthread_cond_wait(&ms__g.changed, &ms__g.lock);
  if (a == NULL) {
    pthread_mutex_unlock(&ms__g.lock);
    return ms__fail(MEMSLEEP_ENOTFOUND,
                    "memsleep_free(%p): not an address memsleep_alloc returned "
                    "(or already freed)",
                    ptr);
  }
  ms__ptrmap_remove(&ms__g.by_address, ptr);
  ms__tag_unlink(a);
  pthread_mutex_unlock(&ms__g.lock);

  /* Nobody can reach a now: give its memory back outside the lock. */
  int rc = 0;
  if (a->state != MS__RELEASED)
    rc = a->be->unmap(a->device, a->va, a->reserved);
  int rc2 = a->be->unreserve(a->device, a->va, a->reserved);
  if (a->backup != NULL)
    a->be->backup_free(a->device, a->backup, a->backup_bytes);
  free(a);
  if (rc == 0)
    rc = rc2;
  if (rc != 0)
    ms__fail_append(" (memsleep_free(%p): the allocation is gone from memsleep, its memory may "
                    "not be)",
                    ptr);
  return rc;
}

int memsleep_is_asleep(const char *tag) {
  int rc = ms__tag_check(tag);
  if (rc != 0)
    return rc;
  pthread_mutex_lock(&ms__g.lock);
  ms__tag_t *t = ms__tag_find(tag);
  rc = t == NULL
           ? ms__fail(MEMSLEEP_ENOTFOUND, "memsleep_is_asleep: tag \"%s\" was never used", tag)
           : t->asleep;
  pthread_mutex_unlock(&ms__g.lock);
  return rc;
}

/* Adds the figures of t to *s; with measure, resident bytes come from the
 * backend rather than the bookkeeping (lock held, so no allocation goes away
 * under the walk; the backend calls are cheap queries). */
static int ms__stats_add(const ms__tag_t *t, int measure, memsleep_stats_t *s) {
  s->allocations += t->stats.allocations;
  s->reserved_bytes += t->stats.reserved_bytes;
  s->backup_bytes += t->stats.backup_bytes;
  if (!measure) {
    s->resident_bytes += t->stats.resident_bytes;
    return 0;
  }
  for (const ms__alloc_t *a = t->head; a != NULL; a = a->next) {
    size_t bytes = 0;
    int rc = a->be->resident(a->device, a->va, a->reserved, &bytes);
    if (rc != 0)
      return rc;
    s->resident_bytes += bytes;
  }
  return 0;
}

static int ms__stats(const char *verb, const char *tag, int measure, memsleep_stats_t *out) {
  if (out == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "%s: out is NULL", verb);
  if (tag != NULL) {
    int rc = ms__tag_check(tag);
    if (rc != 0)
      return rc;
  }
  memsleep_stats_t s = {0, 0, 0, 0};
  int rc = 0;
  pthread_mutex_lock(&ms__g.lock);
  if (tag != NULL) {
    ms__tag_t *t = ms__tag_find(tag);
    if (t == NULL)
      rc = ms__fail(MEMSLEEP_ENOTFOUND, "%s: tag \"%s\" was never used", verb, tag);
    else
      rc = ms__stats_add(t, measure, &s);
  } else {
    for (size_t i = 0; rc == 0 && i < ms__g.ntags; i++)
      rc = ms__stats_add(ms__g.tags[i], measure, &s);
  }
  pthread_mutex_unlock(&ms__g.lock);
  if (rc == 0)
    *out = s;
  return rc;
}

int memsleep_stats(const char *tag, memsleep_stats_t *out) {
  return ms__stats("memsleep_stats", tag, 0, out);
}

int memsleep_measure(const char *tag, memsleep_stats_t *out) {
  return ms__stats("memsleep_measure", tag, 1, out);
}

int memsleep_tags(char (*names)[MEMSLEEP_TAG_MAX + 1], size_t cap) {
  if (names == NULL && cap > 0)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_tags: names is NULL but cap is %zu", cap);
  pthread_mutex_lock(&ms__g.lock);
  size_t n = ms__g.ntags;
  for (size_t i = 0; i < n && i < cap; i++)
    memcpy(names[i], ms__g.tags[i]->name, sizeof names[i]);
  pthread_mutex_unlock(&ms__g.lock);
  return (int)n;
}
