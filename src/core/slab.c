/*
 * slab.c - small allocations carved out of shared mappings.
 *
 * A GPU driver charges per mapping (tens of microseconds to create, map,
 * set access, unmap), so a paged KV cache made of 20,000 blocks of 2 MiB
 * would take over a second to release with one mapping each. Small
 * allocations of one tag, policy and device are therefore placed in slabs:
 * units of mapping of MEMSLEEP_SLAB_BYTES (per backend default) that
 * release unmaps and resume maps as a whole. Inside a slab a first-fit list
 * of free ranges, sorted by offset and merged on free, hands out blocks
 * aligned to MS__SLAB_ALIGN bytes. A slab is given back to the backend as
 * soon as its last block is freed, so freeing everything leaves nothing
 * reserved. Everything here runs under the core's lock.
 */
#include <stdlib.h>

#include "error.h"
#include "state.h"

/* MEMSLEEP_SLAB_BYTES, read once per process (every allocation asks):
 * -2 not read yet, -1 unset or malformed (backend defaults), else bytes. */
static _Atomic long long ms__slab_env = -2;

size_t ms__slab_bytes(const ms__backend_t *be, size_t gran) {
  long long env = ms__slab_env;
  if (env == -2) {
    const char *s = getenv("MEMSLEEP_SLAB_BYTES");
    char *end = NULL;
    unsigned long long v = s != NULL && *s != '\0' ? strtoull(s, &end, 10) : 0;
    env = end != NULL && *end == '\0' && v <= (1ull << 47) ? (long long)v : -1;
    ms__slab_env = env; /* racing readers store the same value */
  }
  size_t bytes = env >= 0 ? (size_t)env : be->slab_bytes; /* a malformed value keeps the default */
  if (bytes == 0 || gran == 0)
    return 0;
  return (bytes + gran - 1) / gran * gran;
}

int ms__slab_init(ms__alloc_t *s) {
  ms__range_t *r = malloc(sizeof *r);
  if (r == NULL)
    return ms__fail(MEMSLEEP_ENOMEM, "out of host memory for a slab's free list");
  r->off = 0;
  r->len = s->reserved;
  r->next = NULL;
  s->free_list = r;
  s->free_bytes = s->reserved;
  return 0;
}

int ms__slab_carve(ms__alloc_t *s, size_t span, size_t *off) {
  if (s->free_bytes < span)
    return MEMSLEEP_ENOMEM;
  for (ms__range_t **link = &s->free_list; *link != NULL; link = &(*link)->next) {
    ms__range_t *r = *link;
    if (r->len < span)
      continue;
    *off = r->off;
    r->off += span;
    r->len -= span;
    if (r->len == 0) {
      *link = r->next;
      free(r);
    }
    s->free_bytes -= span;
    return 0;
  }
  return MEMSLEEP_ENOMEM;
}

void ms__slab_give(ms__alloc_t *s, size_t off, size_t span) {
  ms__range_t *prev = NULL, *next = s->free_list;
  while (next != NULL && next->off < off) {
    prev = next;
    next = next->next;
  }
  s->free_bytes += span;
  int joins_prev = prev != NULL && prev->off + prev->len == off;
  int joins_next = next != NULL && off + span == next->off;
  if (joins_prev && joins_next) {
    prev->len += span + next->len;
    prev->next = next->next;
    free(next);
  } else if (joins_prev) {
    prev->len += span;
  } else if (joins_next) {
    next->off = off;
    next->len += span;
  } else {
    ms__range_t *r = malloc(sizeof *r);
    if (r == NULL) {
      /* The range stays unusable until the slab empties and goes back as
       * a whole; nothing else is lost. */
      s->free_bytes -= span;
      return;
    }
    r->off = off;
    r->len = span;
    r->next = next;
    if (prev != NULL)
      prev->next = r;
    else
      s->free_list = r;
  }
}

void ms__slab_fini(ms__alloc_t *s) {
  while (s->free_list != NULL) {
    ms__range_t *r = s->free_list;
    s->free_list = r->next;
    free(r);
  }
  s->free_bytes = 0;
}

void ms__room_add(ms__tag_t *t, ms__alloc_t *s) {
  if (s->in_room)
    return;
  s->room_prev = NULL;
  s->room_next = t->room;
  if (t->room != NULL)
    t->room->room_prev = s;
  t->room = s;
  s->in_room = 1;
}

void ms__room_remove(ms__tag_t *t, ms__alloc_t *s) {
  if (!s->in_room)
    return;
  if (s->room_prev != NULL)
    s->room_prev->room_next = s->room_next;
  else
    t->room = s->room_next;
  if (s->room_next != NULL)
    s->room_next->room_prev = s->room_prev;
  s->room_prev = s->room_next = NULL;
  s->in_room = 0;
}
