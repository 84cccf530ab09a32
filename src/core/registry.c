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
  t->stats.allocations += a->nblocks;
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
  t->stats.allocations -= a->nblocks;
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

/* Records block b at offset off of unit a (lock held). Returns 0 or
 * MEMSLEEP_ENOMEM, leaving nothing recorded. */
static int ms__block_place(ms__tag_t *t, ms__alloc_t *a, ms__block_t *b, size_t off) {
  b->unit = a;
  b->ptr = (char *)a->va + off;
  int rc = ms__ptrmap_put(&ms__g.by_address, b->ptr, b);
  if (rc != 0)
    return ms__fail(rc,
                    "memsleep_alloc(%zu bytes, tag \"%s\"): out of host memory for the "
                    "registry",
                    b->size, t->name);
  a->nblocks++;
  t->stats.allocations++;
  if (a->slab && a->free_bytes == 0)
    ms__room_remove(t, a);
  return 0;
}

/* Waits until tag is neither busy nor asleep and claims it (lock held).
 * *created says whether this call made the tag. */
static int ms__tag_claim(const char *tag, size_t size, ms__tag_t **out, int *created) {
  *created = ms__tag_find(tag) == NULL;
  int rc = ms__tag_get(tag, out);
  while (rc == 0 && (*out)->busy)
    pthread_cond_wait(&ms__g.changed, &ms__g.lock);
  if (rc == 0 && (*out)->asleep)
    rc = ms__fail(MEMSLEEP_ESTATE,
                  "memsleep_alloc(%zu bytes, tag \"%s\"): the tag is asleep; resume it first", size,
                  tag);
  return rc;
}

/* Reserves and maps a new unit of reserved bytes (no lock held). */
static int ms__unit_create(ms__alloc_t *a, const char *tag, size_t asked) {
  int rc = ms__op_reserve(a->be, a->device, a->reserved, &a->va);
  if (rc == 0) {
    rc = ms__op_map(a->be, a->device, a->va, a->reserved);
    if (rc != 0) {
      a->be->unreserve(a->device, a->va, a->reserved);
      a->va = NULL;
    }
  }
  if (rc == 0 && a->slab) {
    rc = ms__slab_init(a);
    if (rc != 0) {
      a->be->unmap(a->device, a->va, a->reserved);
      a->be->unreserve(a->device, a->va, a->reserved);
      a->va = NULL;
    }
  }
  if (rc != 0)
    ms__fail_append(" (memsleep_alloc of %zu bytes, tag \"%s\"%s)", asked, tag,
                    a->slab ? ", a new slab" : "");
  return rc;
}

/* Gives a unit that no block uses any more back to its backend (no lock
 * held; nobody can reach it). */
static int ms__unit_destroy(ms__alloc_t *a) {
  int rc = 0;
  if (a->va != NULL) {
    if (a->state != MS__RELEASED)
      rc = a->be->unmap(a->device, a->va, a->reserved);
    int rc2 = a->be->unreserve(a->device, a->va, a->reserved);
    if (rc == 0)
      rc = rc2;
  }
  if (a->backup != NULL)
    a->be->backup_free(a->device, a->backup, a->backup_bytes);
  ms__slab_fini(a);
  free(a);
  return rc;
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
  size_t slab = ms__slab_bytes(be, gran);
  size_t span = (size + MS__SLAB_ALIGN - 1) / MS__SLAB_ALIGN * MS__SLAB_ALIGN;
  int small = slab != 0 && span <= slab / 4;

  ms__block_t *b = small ? calloc(1, sizeof *b) : NULL;
  ms__alloc_t *a = NULL;
  if (small && b == NULL)
    return ms__fail(MEMSLEEP_ENOMEM,
                    "memsleep_alloc(%zu bytes, tag \"%s\"): out of host memory for the "
                    "allocation record",
                    size, tag);

  /* Claim a place in an awake tag; a release of it waits for us. A small
   * allocation first looks for room in a slab it may share. */
  pthread_mutex_lock(&ms__g.lock);
  ms__tag_t *t = NULL;
  int created = 0;
  rc = ms__tag_claim(tag, size, &t, &created);
  if (rc == 0 && small) {
    b->size = size;
    b->span = span;
    for (ms__alloc_t *s = t->room; s != NULL; s = s->room_next) {
      size_t off = 0;
      if (s->device != device || s->flags != flags || ms__slab_carve(s, span, &off) != 0)
        continue;
      rc = ms__block_place(t, s, b, off);
      if (rc != 0)
        ms__slab_give(s, off, span);
      pthread_mutex_unlock(&ms__g.lock);
      if (rc != 0) {
        free(b);
        return rc;
      }
      *ptr = b->ptr;
      return 0;
    }
  }
  if (rc == 0)
    t->pending++;
  pthread_mutex_unlock(&ms__g.lock);
  if (rc != 0) {
    free(b);
    return rc; /* a tag that is busy or asleep existed before us */
  }

  /* A unit of its own, or a new slab: the physical work runs unlocked. */
  a = calloc(1, sizeof *a);
  if (a == NULL) {
    rc = ms__fail(MEMSLEEP_ENOMEM,
                  "memsleep_alloc(%zu bytes, tag \"%s\"): out of host memory for the "
                  "allocation record",
                  size, tag);
  } else {
    a->slab = small;
    a->reserved = small ? slab : (size + gran - 1) / gran * gran;
    a->size = small ? a->reserved : size;
    a->device = device;
    a->flags = flags;
    a->be = be;
    a->state = MS__MAPPED;
    rc = ms__unit_create(a, tag, size);
  }

  pthread_mutex_lock(&ms__g.lock);
  if (rc == 0) {
    ms__tag_link(t, a);
    if (small) {
      size_t off = 0;
      ms__room_add(t, a);
      ms__slab_carve(a, span, &off); /* a fresh slab has room: span <= slab/4 */
      rc = ms__block_place(t, a, b, off);
    } else {
      a->own.size = size;
      a->own.span = a->reserved;
      rc = ms__block_place(t, a, &a->own, 0);
    }
    if (rc != 0) {
      ms__room_remove(t, a);
      ms__tag_unlink(a);
    }
  }
  t->pending--;
  if (rc != 0 && created)
    ms__tag_drop_if_unused(t); /* a failed call leaves no new tag behind */
  pthread_cond_broadcast(&ms__g.changed);
  pthread_mutex_unlock(&ms__g.lock);

  if (rc != 0) {
    if (a != NULL)
      ms__unit_destroy(a);
    free(b);
    return rc;
  }
  *ptr = small ? b->ptr : a->own.ptr;
  return 0;
}

/* Looks ptr up, waiting while a release/resume owns its tag (lock held;
 * look up again after each wait, another thread may have freed ptr). */
static ms__block_t *ms__block_wait(const void *ptr) {
  ms__block_t *b;
  while ((b = ms__ptrmap_get(&ms__g.by_address, ptr)) != NULL && b->unit->tag->busy)
    pthread_cond_wait(&ms__g.changed, &ms__g.lock);
  return b;
}

int memsleep_free(void *ptr) {
  if (ptr == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "memsleep_free: ptr is NULL");
  pthread_mutex_lock(&ms__g.lock);
  ms__block_t *b = ms__block_wait(ptr);
  const ms__backend_t *be = b != NULL ? b->unit->be : NULL;
  int device = b != NULL ? b->unit->device : 0;
  int mapped = b != NULL && b->unit->state != MS__RELEASED;
  pthread_mutex_unlock(&ms__g.lock);
  if (b == NULL)
    return ms__fail(MEMSLEEP_ENOTFOUND,
                    "memsleep_free(%p): not an address memsleep_alloc returned "
                    "(or already freed)",
                    ptr);
  /* Like cudaFree: work already queued on the device may still use the
   * memory, so wait for it before the range can be reused or unmapped. */
  int rc = mapped ? be->sync(device) : 0;

  pthread_mutex_lock(&ms__g.lock);
  b = ms__block_wait(ptr);
  if (b == NULL) {
    pthread_mutex_unlock(&ms__g.lock);
    return ms__fail(MEMSLEEP_ENOTFOUND,
                    "memsleep_free(%p): freed by another thread at the same time", ptr);
  }
  ms__alloc_t *a = b->unit;
  ms__tag_t *t = a->tag;
  ms__ptrmap_remove(&ms__g.by_address, ptr);
  a->nblocks--;
  t->stats.allocations--;
  int last = a->nblocks == 0;
  if (last) {
    ms__room_remove(t, a);
    ms__tag_unlink(a);
  } else {
    ms__slab_give(a, (size_t)((char *)b->ptr - (char *)a->va), b->span);
    if (a->free_bytes > 0)
      ms__room_add(t, a);
  }
  pthread_mutex_unlock(&ms__g.lock);
  if (b != &a->own)
    free(b);
  if (!last)
    return rc;

  /* Nobody can reach a now: give its memory back outside the lock. */
  int rc2 = ms__unit_destroy(a);
  if (rc == 0)
    rc = rc2;
  if (rc != 0)
    ms__fail_append(" (memsleep_free(%p): the allocation is gone from memsleep, its memory may "
                    "not be)",
                    ptr);
  return rc;
}

int memsleep_owns(const void *ptr) {
  if (ptr == NULL)
    return 0;
  pthread_mutex_lock(&ms__g.lock);
  int owns = ms__ptrmap_get(&ms__g.by_address, ptr) != NULL;
  pthread_mutex_unlock(&ms__g.lock);
  return owns;
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
