/*
 * state.h - the memory core's records and its one global state.
 *
 * An ms__block_t is what the user holds: one address memsleep_alloc()
 * returned. It lives in an ms__alloc_t, a unit of mapping: a reserved
 * address range with, while awake, physical memory behind it. A large
 * allocation has a unit to itself; small ones of the same tag, policy and
 * device share a slab unit, so a release costs per slab, not per block.
 * An ms__tag_t groups the units of one tag and carries the tag's
 * asleep/awake state. The registry (ptrmap) finds a block by its address.
 *
 * Locking: ms__g.lock guards every field below except where noted. A tag
 * that is in a release or resume is marked busy; the thread running the
 * transition then owns the allocations of that tag and works on them without
 * the lock, so that allocations of other tags continue meanwhile. Threads
 * that want a busy tag (alloc, free) wait on ms__g.changed. ms__g.transition
 * serialises releases and resumes.
 */
#ifndef MEMSLEEP_CORE_STATE_H
#define MEMSLEEP_CORE_STATE_H

#include <pthread.h>
#include <stddef.h>

#include "backend.h"
#include "memsleep/memsleep.h"
#include "ptrmap.h"

/* Where an allocation's contents are. */
typedef enum ms__alloc_state {
  MS__MAPPED,   /* physical memory behind it; contents in place */
  MS__RELEASED, /* no physical memory; contents in the backup if BACKUP */
  MS__STALE     /* mapped again but contents not yet restored (mid-resume) */
} ms__alloc_state_t;

typedef struct ms__tag ms__tag_t;
typedef struct ms__alloc ms__alloc_t;

/* A free range inside a slab, in a list sorted by offset. */
typedef struct ms__range {
  size_t off;
  size_t len;
  struct ms__range *next;
} ms__range_t;

/* What the user holds: an address memsleep_alloc() returned. A block lives
 * in a unit (an ms__alloc_t), alone (the unit's own block) or carved out of
 * a slab with other small blocks of the same tag, policy and device. */
typedef struct ms__block {
  void *ptr;         /* address handed to the user */
  size_t size;       /* bytes the user asked for */
  size_t span;       /* bytes it takes in its unit (aligned size) */
  ms__alloc_t *unit; /* the mapping it lives in */
} ms__block_t;

/* A unit of mapping: one reserved range that release unmaps and resume
 * maps as a whole. It serves one large allocation, or (slab) many small
 * ones, so that the cost of a release does not grow with their number. */
struct ms__alloc {
  void *va;                    /* start of the range; fixed for life */
  size_t size;                 /* bytes whose contents matter (copied to a backup) */
  size_t reserved;             /* size rounded up to the backend granularity */
  int slab;                    /* 1: shared by small blocks; 0: one block */
  size_t nblocks;              /* live blocks in it */
  ms__block_t own;             /* the block of a unit that is not a slab */
  ms__range_t *free_list;      /* slab: its free ranges, by offset */
  size_t free_bytes;           /* slab: sum of those */
  struct ms__alloc *room_prev; /* slab: neighbours in the tag's slabs with room */
  struct ms__alloc *room_next;
  int in_room;             /* slab: on that list */
  int device;              /* MEMSLEEP_HOST or a CUDA ordinal */
  unsigned flags;          /* MEMSLEEP_BACKUP / MEMSLEEP_ZERO */
  const ms__backend_t *be; /* backend serving device */
  ms__tag_t *tag;          /* owning tag */
  struct ms__alloc *prev;  /* neighbours in the tag's list */
  struct ms__alloc *next;
  ms__alloc_state_t state; /* see above */
  void *backup;            /* host backup buffer, or NULL */
  size_t backup_bytes;     /* size of that buffer */
  int backup_valid;        /* backup holds the current contents */
  int backup_moved;        /* backup came from move_out (consumed by move_in) */
  unsigned did;            /* MS__DID_* steps of the running transition */
};

/* What the transition that owns an allocation has done to it so far; the
 * rollback undoes exactly these steps, in reverse. */
enum {
  MS__DID_NEW_BACKUP = 1u << 0, /* allocated its backup buffer */
  MS__DID_COPY_OUT = 1u << 1,   /* copied its contents into the backup */
  MS__DID_MOVE_OUT = 1u << 2,   /* moved its pages into a backup */
  MS__DID_UNMAP = 1u << 3,      /* freed its physical memory */
  MS__DID_MAP = 1u << 4,        /* mapped fresh physical memory */
  MS__DID_MOVE_IN = 1u << 5     /* moved its backup pages back in */
};

struct ms__tag {
  char name[MEMSLEEP_TAG_MAX + 1];
  int asleep;             /* released (1) or awake (0) */
  int busy;               /* a release/resume of this tag is running */
  size_t pending;         /* allocations being mapped outside the lock */
  ms__alloc_t *head;      /* the tag's units */
  ms__alloc_t *room;      /* its slabs with free space */
  memsleep_stats_t stats; /* kept current under the lock */
};

typedef struct ms__global {
  pthread_mutex_t lock;       /* guards everything here */
  pthread_cond_t changed;     /* signalled when busy or pending drops */
  pthread_mutex_t transition; /* one release/resume at a time */
  ms__ptrmap_t by_address;    /* user address -> ms__block_t */
  ms__tag_t **tags;           /* every tag ever used, in order of first use */
  size_t ntags;
  size_t tags_capacity;
} ms__global_t;

extern ms__global_t ms__g;

/* The most tags a process may use; a guard against tag names made up per
 * request, which would otherwise grow the table without bound. */
#define MS__TAGS_MAX 4096

/* Slabs (slab.c). Blocks inside a slab start at multiples of this. */
#define MS__SLAB_ALIGN 256
/* The slab size for allocations on be's device (0: no slabs), from the
 * backend's default or MEMSLEEP_SLAB_BYTES, rounded to granularity gran. */
size_t ms__slab_bytes(const ms__backend_t *be, size_t gran);
/* Sets up a new slab unit's free list (one range, the whole slab). */
int ms__slab_init(ms__alloc_t *s);
/* Carves span bytes out of slab s; 0 with *off, or MEMSLEEP_ENOMEM if no
 * free range is large enough. */
int ms__slab_carve(ms__alloc_t *s, size_t span, size_t *off);
/* Gives [off, off+span) back to slab s, merging neighbours. */
void ms__slab_give(ms__alloc_t *s, size_t off, size_t span);
/* Frees a slab's free list. */
void ms__slab_fini(ms__alloc_t *s);
/* Puts slab s on / takes it off its tag's list of slabs with room. */
void ms__room_add(ms__tag_t *t, ms__alloc_t *s);
void ms__room_remove(ms__tag_t *t, ms__alloc_t *s);

/* Validates a tag name (1..63 of [A-Za-z0-9_.-]); 0 or MEMSLEEP_EINVAL. */
int ms__tag_check(const char *tag);
/* Validates allocation flags (known bits, not BACKUP and ZERO together);
 * 0 or MEMSLEEP_EINVAL. */
int ms__flags_check(unsigned flags);
/* Finds a tag by name (lock held); NULL if never used. */
ms__tag_t *ms__tag_find(const char *name);
/* Finds or creates a tag (lock held). Returns 0, EINVAL or ENOMEM. */
int ms__tag_get(const char *name, ms__tag_t **out);
/* Forgets a tag that a failed call created: only if it has no allocations,
 * none in flight, and is awake (lock held). */
void ms__tag_drop_if_unused(ms__tag_t *t);
/* Recomputes a tag's stats from its allocations (lock held). */
void ms__tag_restat(ms__tag_t *t);

#endif /* MEMSLEEP_CORE_STATE_H */
