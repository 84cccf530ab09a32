/*
 * transition.c - memsleep_release() and memsleep_resume(), all-or-nothing.
 *
 * A transition runs in three parts:
 *   1. plan (under the lock): check every argument, mark the tags busy, wait
 *      for allocations in flight, take a snapshot of the allocations;
 *   2. work (no lock): backend operations, each step recorded in the
 *      allocation's `did` bits;
 *   3. commit or roll back: on any failure, undo the recorded steps in
 *      reverse, then publish the tags' states and clear busy.
 *
 * Release frees the memory of an allocation with a backup only once its
 * backup is complete (on the CUDA backend while later backups still copy),
 * and the memory of allocations without one only after every backup is
 * saved, so that a failure loses nothing that a retry needs. If a rollback step itself fails
 * (two failures in one call), the allocation stays released with its backup
 * intact and its tag is reported asleep: a later resume completes it.
 */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fault.h"
#include "state.h"

/* The devices a transition issued asynchronous work on, to sync each once. */
#define MS__SYNC_MAX 64
typedef struct ms__syncset {
  const ms__backend_t *be[MS__SYNC_MAX];
  int dev[MS__SYNC_MAX];
  size_t n;
} ms__syncset_t;

static void ms__syncset_add(ms__syncset_t *s, const ms__backend_t *be, int dev) {
  for (size_t i = 0; i < s->n; i++)
    if (s->be[i] == be && s->dev[i] == dev)
      return;
  if (s->n < MS__SYNC_MAX) {
    s->be[s->n] = be;
    s->dev[s->n] = dev;
    s->n++;
  }
}

/* Syncs every device in s (all of them, even after a failure, so no copy is
 * left running); returns the first error. */
static int ms__syncset_sync(ms__syncset_t *s) {
  int first = 0;
  for (size_t i = 0; i < s->n; i++) {
    int rc = ms__op_sync(s->be[i], s->dev[i]);
    if (rc != 0 && first == 0)
      first = rc;
  }
  s->n = 0;
  return first;
}

typedef struct ms__plan {
  ms__tag_t **tags;
  size_t ntags;
  ms__alloc_t **allocs;
  size_t nallocs;
} ms__plan_t;

static void ms__plan_free(ms__plan_t *p) {
  free(p->tags);
  free(p->allocs);
}

/* Checks the arguments and claims the tags. want_asleep is the state every
 * named tag must be in (0 for a release, 1 for a resume). On success the
 * tags are busy and p holds them and their allocations. */
static int ms__plan_begin(const char *verb, const char *const *tags, size_t ntags, int want_asleep,
                          ms__plan_t *p) {
  memset(p, 0, sizeof *p);
  if (ntags > 0 && tags == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "%s: tags is NULL but ntags is %zu", verb, ntags);
  for (size_t i = 0; i < ntags; i++) {
    int rc = ms__tag_check(tags[i]);
    if (rc != 0) {
      ms__fail_append(" (%s, tag #%zu)", verb, i);
      return rc;
    }
    for (size_t j = 0; j < i; j++)
      if (strcmp(tags[i], tags[j]) == 0)
        return ms__fail(MEMSLEEP_EINVAL, "%s: tag \"%s\" is named twice (#%zu and #%zu)", verb,
                        tags[i], j, i);
  }

  int rc = 0;
  pthread_mutex_lock(&ms__g.lock);
  size_t cap = ntags > 0 ? ntags : ms__g.ntags;
  p->tags = calloc(cap ? cap : 1, sizeof *p->tags);
  if (p->tags == NULL)
    rc = ms__fail(MEMSLEEP_ENOMEM, "%s: out of host memory for %zu tags", verb, cap);
  for (size_t i = 0; rc == 0 && i < ntags; i++) {
    ms__tag_t *t = ms__tag_find(tags[i]);
    if (t == NULL)
      rc = ms__fail(MEMSLEEP_ENOTFOUND, "%s: tag \"%s\" was never used", verb, tags[i]);
    else if (t->asleep != want_asleep)
      rc = ms__fail(MEMSLEEP_ESTATE, "%s: tag \"%s\" is already %s", verb, tags[i],
                    t->asleep ? "asleep" : "awake");
    else
      p->tags[p->ntags++] = t;
  }
  for (size_t i = 0; rc == 0 && ntags == 0 && i < ms__g.ntags; i++)
    if (ms__g.tags[i]->asleep == want_asleep)
      p->tags[p->ntags++] = ms__g.tags[i];

  if (rc == 0) {
    for (size_t i = 0; i < p->ntags; i++)
      p->tags[i]->busy = 1;
    /* Allocations that were admitted before we marked the tags busy finish
     * mapping; new ones wait for us. */
    for (size_t i = 0; i < p->ntags; i++)
      while (p->tags[i]->pending > 0)
        pthread_cond_wait(&ms__g.changed, &ms__g.lock);
    for (size_t i = 0; i < p->ntags; i++)
      p->nallocs += p->tags[i]->stats.allocations;
    p->allocs = calloc(p->nallocs ? p->nallocs : 1, sizeof *p->allocs);
    if (p->allocs == NULL) {
      rc = ms__fail(MEMSLEEP_ENOMEM, "%s: out of host memory for a list of %zu allocations", verb,
                    p->nallocs);
      for (size_t i = 0; i < p->ntags; i++)
        p->tags[i]->busy = 0;
      pthread_cond_broadcast(&ms__g.changed);
    } else {
      /* Allocations with a backup first: release handles them first. */
      size_t n = 0;
      for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i < p->ntags; i++)
          for (ms__alloc_t *a = p->tags[i]->head; a != NULL; a = a->next)
            if (((a->flags & MEMSLEEP_BACKUP) != 0) == (pass == 0)) {
              a->did = 0;
              p->allocs[n++] = a;
            }
      p->nallocs = n; /* units; the count above was of blocks, never fewer */
    }
  }
  pthread_mutex_unlock(&ms__g.lock);
  if (rc != 0)
    ms__plan_free(p);
  return rc;
}

/* Publishes the outcome: a tag is asleep when asked (release succeeded), or
 * when any of its allocations is not mapped with its contents in place. */
static void ms__plan_end(ms__plan_t *p, int asleep) {
  pthread_mutex_lock(&ms__g.lock);
  for (size_t i = 0; i < p->ntags; i++) {
    ms__tag_t *t = p->tags[i];
    int sleeping = asleep;
    for (ms__alloc_t *a = t->head; a != NULL && !sleeping; a = a->next)
      sleeping = a->state != MS__MAPPED;
    t->asleep = sleeping;
    t->busy = 0;
    ms__tag_restat(t);
  }
  pthread_cond_broadcast(&ms__g.changed);
  pthread_mutex_unlock(&ms__g.lock);
  ms__plan_free(p);
}

/* Forgets the allocation's backup without freeing it: for a moved backup
 * whose pages went back into the allocation (the backup range is gone). */
static void ms__backup_forget(ms__alloc_t *a) {
  a->backup = NULL;
  a->backup_bytes = 0;
  a->backup_valid = 0;
  a->backup_moved = 0;
}

static void ms__backup_drop(ms__alloc_t *a) {
  a->be->backup_free(a->device, a->backup, a->backup_bytes);
  ms__backup_forget(a);
}

/* Brings the contents of a mapped-but-stale allocation back: from its
 * backup, as zeros, or (neither policy) leaves them undefined. */
static int ms__restore_contents(ms__alloc_t *a, ms__syncset_t *sync) {
  int rc = 0;
  if ((a->flags & MEMSLEEP_BACKUP) && a->backup_valid) {
    rc = ms__op_copy_in(a->be, a->device, a->backup, a->va, a->size);
    ms__syncset_add(sync, a->be, a->device);
  } else if ((a->flags & MEMSLEEP_ZERO) && !a->be->map_zeroes) {
    rc = ms__op_zero(a->be, a->device, a->va, a->reserved);
    ms__syncset_add(sync, a->be, a->device);
  }
  return rc;
}

/* Undoes what a failed release did, newest first. Returns how many
 * allocations could not be put back (they stay released, backups intact). */
static size_t ms__release_rollback(ms__plan_t *p) {
  ms__syncset_t sync = {.n = 0};
  size_t stuck = 0;
  for (size_t k = p->nallocs; k-- > 0;) {
    ms__alloc_t *a = p->allocs[k];
    if (a->did & MS__DID_MOVE_OUT) {
      if (ms__op_move_in(a->be, a->device, a->backup, a->va, a->reserved) == 0) {
        ms__backup_forget(a);
        a->state = MS__MAPPED;
      }
    } else if (a->did & MS__DID_UNMAP) {
      if (ms__op_map(a->be, a->device, a->va, a->reserved) == 0) {
        a->state = MS__STALE;
        if (ms__restore_contents(a, &sync) == 0)
          a->did |= MS__DID_MAP;
      }
    }
  }
  int synced = ms__syncset_sync(&sync) == 0;
  for (size_t k = 0; k < p->nallocs; k++) {
    ms__alloc_t *a = p->allocs[k];
    if (a->state == MS__STALE && (a->did & MS__DID_MAP) && synced)
      a->state = MS__MAPPED;
    if (a->state != MS__MAPPED) {
      stuck++;
      continue;
    }
    /* Contents are in place again: a backup made by this call goes. */
    if (a->did & MS__DID_NEW_BACKUP)
      ms__backup_drop(a);
    else if (a->did & MS__DID_COPY_OUT)
      a->backup_valid = 0;
  }
  return stuck;
}

/* memsleep_keep_backups(): -1 until first asked, then 0 or 1. Read and
 * written under ms__g.lock. */
static int ms__keep = -1;

static int ms__keep_now(void) {
  if (ms__keep < 0) {
    const char *env = getenv("MEMSLEEP_KEEP_BACKUPS");
    ms__keep = !(env != NULL && strcmp(env, "0") == 0);
  }
  return ms__keep;
}

/* A kept backup taken off its allocation, to be freed unlocked. */
typedef struct ms__kept {
  const ms__backend_t *be;
  int device;
  void *buf;
  size_t bytes;
} ms__kept_t;

/* Counts (out == NULL) or takes (out != NULL, up to cap) the backups kept
 * for reuse by the awake allocations (lock held). */
static size_t ms__kept_collect(ms__kept_t *out, size_t cap) {
  size_t n = 0;
  for (size_t i = 0; i < ms__g.ntags; i++) {
    ms__tag_t *t = ms__g.tags[i];
    if (t->asleep)
      continue;
    for (ms__alloc_t *a = t->head; a != NULL; a = a->next) {
      if (a->backup == NULL || a->backup_valid || a->backup_moved)
        continue;
      if (out != NULL) {
        if (n == cap)
          break;
        out[n] = (ms__kept_t){a->be, a->device, a->backup, a->backup_bytes};
        ms__backup_forget(a);
      }
      n++;
    }
    if (out != NULL)
      ms__tag_restat(t);
  }
  return n;
}

int memsleep_keep_backups(int keep) {
  if (keep < -1 || keep > 1)
    return ms__fail(MEMSLEEP_EINVAL,
                    "memsleep_keep_backups(%d): pass 1 (keep), 0 (free) or -1 (ask)", keep);
  /* No transition runs while we take the backups of awake tags. */
  pthread_mutex_lock(&ms__g.transition);
  pthread_mutex_lock(&ms__g.lock);
  int before = ms__keep_now();
  if (keep >= 0)
    ms__keep = keep;
  size_t n = keep == 0 ? ms__kept_collect(NULL, 0) : 0;
  ms__kept_t *kept = n > 0 ? calloc(n, sizeof *kept) : NULL;
  if (kept != NULL)
    n = ms__kept_collect(kept, n);
  else
    n = 0; /* no memory for the list: each goes at its tag's next resume */
  pthread_mutex_unlock(&ms__g.lock);
  for (size_t k = 0; k < n; k++)
    kept[k].be->backup_free(kept[k].device, kept[k].buf, kept[k].bytes);
  pthread_mutex_unlock(&ms__g.transition);
  free(kept);
  return before;
}

int memsleep_release(const char *const *tags, size_t ntags) {
  return memsleep_release_flags(tags, ntags, 0);
}

/* Tells each backend that prepares backups ahead which new buffers the
 * copy loop below will ask it for, in order; *out lists those told. */
static void ms__backups_prepare(const ms__plan_t *p, ms__syncset_t *out) {
  size_t *sizes = malloc((p->nallocs ? p->nallocs : 1) * sizeof *sizes);
  if (sizes == NULL)
    return; /* the backend pins each buffer when asked: slower, not wrong */
  for (size_t k = 0; k < p->nallocs; k++) {
    const ms__alloc_t *a = p->allocs[k];
    if (!(a->flags & MEMSLEEP_BACKUP))
      break;
    if (a->be->backup_prepare != NULL)
      ms__syncset_add(out, a->be, a->device);
  }
  for (size_t i = 0; i < out->n; i++) {
    size_t n = 0;
    for (size_t k = 0; k < p->nallocs; k++) {
      const ms__alloc_t *a = p->allocs[k];
      if (!(a->flags & MEMSLEEP_BACKUP))
        break;
      if (a->be == out->be[i] && a->device == out->dev[i] && a->backup == NULL)
        sizes[n++] = a->size;
    }
    out->be[i]->backup_prepare(out->dev[i], sizes, n);
  }
  free(sizes);
}

/* Frees the physical memory of allocations [from, to) of a release that
 * are still mapped and, with copied_only, whose backup copy is queued. */
static int ms__release_unmap(ms__plan_t *p, size_t from, size_t to, int copied_only) {
  int rc = 0;
  for (size_t k = from; rc == 0 && k < to; k++) {
    ms__alloc_t *a = p->allocs[k];
    if (a->state != MS__MAPPED || (copied_only && !(a->did & MS__DID_COPY_OUT)))
      continue;
    rc = ms__op_unmap(a->be, a->device, a->va, a->reserved);
    if (rc == 0) {
      a->state = MS__RELEASED;
      a->did |= MS__DID_UNMAP;
    }
  }
  return rc;
}

/* Early unmaps: while later backups are still being copied, a release
 * unmaps backed-up allocations whose copies are complete. Copies are fenced
 * in batches of about MS__FENCE_BYTES; fencing batch j+1 waits for batch j
 * and unmaps it. Only when every allocation of the release is on one
 * backend and device that offers fences (and MEMSLEEP_OVERLAP is not 0).
 * A failure later is undone like any other: those allocations are mapped
 * again and restored from their complete backups. */
#define MS__FENCE_BYTES ((size_t)1 << 30)

typedef struct ms__fencer {
  const ms__backend_t *be;
  int dev;
  int on;
  void *prev;       /* fence of the batch waiting to be unmapped */
  size_t prev_from; /* its allocations: [prev_from, prev_to) */
  size_t prev_to;
  size_t from; /* first allocation of the batch being filled */
  size_t bytes;
  size_t batch; /* bytes per batch (MEMSLEEP_OVERLAP_BYTES, default MS__FENCE_BYTES) */
} ms__fencer_t;

static void ms__fencer_init(ms__fencer_t *f, const ms__plan_t *p, unsigned flags) {
  memset(f, 0, sizeof *f);
  const char *env = getenv("MEMSLEEP_OVERLAP");
  if ((flags & MEMSLEEP_RELEASE_NO_BACKUP) || p->nallocs == 0 ||
      (env != NULL && strcmp(env, "0") == 0))
    return;
  f->batch = (size_t)MS__FENCE_BYTES;
  const char *bytes = getenv("MEMSLEEP_OVERLAP_BYTES"); /* batch size, for tests and tuning */
  if (bytes != NULL && *bytes != '\0') {
    char *end = NULL;
    unsigned long long v = strtoull(bytes, &end, 10);
    if (end != NULL && *end == '\0' && v > 0)
      f->batch = (size_t)v;
  }
  f->be = p->allocs[0]->be;
  f->dev = p->allocs[0]->device;
  f->on = f->be->fence != NULL && f->be->fence_wait != NULL;
  for (size_t k = 1; f->on && k < p->nallocs; k++)
    f->on = p->allocs[k]->be == f->be && p->allocs[k]->device == f->dev;
}

/* Called once allocation k's copy is queued. */
static int ms__fencer_step(ms__fencer_t *f, ms__plan_t *p, size_t k, size_t bytes) {
  if (!f->on)
    return 0;
  f->bytes += bytes;
  if (f->bytes < f->batch)
    return 0;
  void *token = NULL;
  int rc = f->be->fence(f->dev, &token);
  if (rc != 0)
    return rc;
  if (f->prev != NULL) {
    void *wait = f->prev;
    f->prev = NULL;
    rc = f->be->fence_wait(f->dev, wait);
    if (rc == 0)
      rc = ms__release_unmap(p, f->prev_from, f->prev_to, 1);
  }
  if (rc != 0) {
    f->be->fence_wait(f->dev, token);
    return rc;
  }
  f->prev = token;
  f->prev_from = f->from;
  f->prev_to = k + 1;
  f->from = k + 1;
  f->bytes = 0;
  return 0;
}

static void ms__fencer_end(ms__fencer_t *f) {
  if (f->prev != NULL)
    f->be->fence_wait(f->dev, f->prev);
  f->prev = NULL;
}

int memsleep_release_flags(const char *const *tags, size_t ntags, unsigned flags) {
  if (flags & ~MEMSLEEP_RELEASE_NO_BACKUP)
    return ms__fail(MEMSLEEP_EINVAL,
                    "memsleep_release_flags: unknown flag bits 0x%x (known: "
                    "MEMSLEEP_RELEASE_NO_BACKUP 0x1)",
                    flags & ~MEMSLEEP_RELEASE_NO_BACKUP);
  pthread_mutex_lock(&ms__g.transition);
  ms__plan_t p;
  int rc = ms__plan_begin("memsleep_release", tags, ntags, 0, &p);
  if (rc != 0) {
    pthread_mutex_unlock(&ms__g.transition);
    return rc;
  }

  /* 1. Work the user queued on the devices may still write (or read) this
   *    memory: let it finish before copying out or unmapping anything.
   *    Backends that can are told meanwhile which new backup buffers the
   *    copies will need. */
  ms__syncset_t sync = {.n = 0};
  ms__syncset_t prepared = {.n = 0};
  if (!(flags & MEMSLEEP_RELEASE_NO_BACKUP))
    ms__backups_prepare(&p, &prepared);
  for (size_t k = 0; k < p.nallocs; k++)
    ms__syncset_add(&sync, p.allocs[k]->be, p.allocs[k]->device);
  for (size_t i = 0; rc == 0 && i < sync.n; i++)
    rc = sync.be[i]->sync(sync.dev[i]);
  if (rc != 0)
    ms__fail_append(" (memsleep_release: waiting for the work queued on the device)");
  sync.n = 0;

  /* 2. Save every backup: move pages where the backend can, copy otherwise
   *    (unmapping the ones already saved while the rest copy, see above).
   *    With MEMSLEEP_RELEASE_NO_BACKUP there is nothing to save. */
  ms__fencer_t fencer;
  ms__fencer_init(&fencer, &p, flags);
  for (size_t k = 0; rc == 0 && !(flags & MEMSLEEP_RELEASE_NO_BACKUP) && k < p.nallocs; k++) {
    ms__alloc_t *a = p.allocs[k];
    if (!(a->flags & MEMSLEEP_BACKUP))
      break; /* backed-up allocations come first */
    if (a->be->move_out != NULL && a->backup == NULL) {
      void *h = NULL;
      rc = ms__op_move_out(a->be, a->device, a->va, a->reserved, &h);
      if (rc == 0) {
        a->backup = h;
        a->backup_bytes = a->reserved;
        a->backup_valid = 1;
        a->backup_moved = 1;
        a->state = MS__RELEASED;
        a->did |= MS__DID_MOVE_OUT;
        continue;
      }
      if (rc != MEMSLEEP_EUNAVAIL)
        break;
      rc = 0; /* this backend cannot move these pages: copy them */
    }
    if (a->backup == NULL) {
      rc = ms__op_backup_alloc(a->be, a->device, a->size, &a->backup);
      if (rc != 0)
        break;
      a->backup_bytes = a->size;
      a->did |= MS__DID_NEW_BACKUP;
    }
    rc = ms__op_copy_out(a->be, a->device, a->va, a->backup, a->size);
    ms__syncset_add(&sync, a->be, a->device);
    if (rc == 0) {
      a->backup_valid = 1;
      a->did |= MS__DID_COPY_OUT;
      rc = ms__fencer_step(&fencer, &p, k, a->size);
    }
  }
  ms__fencer_end(&fencer);
  int rc_sync = ms__syncset_sync(&sync);
  if (rc == 0)
    rc = rc_sync;
  for (size_t i = 0; i < prepared.n; i++)
    prepared.be[i]->backup_prepare(prepared.dev[i], NULL, 0);

  /* 3. Free the rest: backed-up allocations first, then the others - only
   *    now, so that a failure before here loses no contents at all. */
  if (rc == 0)
    rc = ms__release_unmap(&p, 0, p.nallocs, 0);

  if (rc != 0) {
    size_t stuck = ms__release_rollback(&p);
    if (stuck == 0)
      ms__fail_append("; release undone, every tag is awake as before");
    else
      ms__fail_append("; undoing it failed too: %zu allocations stay released with their "
                      "backups, their tags asleep; resume them to retry",
                      stuck);
  }
  ms__plan_end(&p, rc == 0);
  pthread_mutex_unlock(&ms__g.transition);
  return rc;
}

/* Undoes what a failed resume did. Allocations it cannot take back stay
 * mapped-but-stale (their backups intact); the tag stays asleep anyway and
 * the next resume restores them. */
static void ms__resume_rollback(ms__plan_t *p) {
  for (size_t k = p->nallocs; k-- > 0;) {
    ms__alloc_t *a = p->allocs[k];
    if (a->did & MS__DID_MOVE_IN) {
      void *h = NULL;
      if (ms__op_move_out(a->be, a->device, a->va, a->reserved, &h) == 0) {
        a->backup = h;
        a->backup_bytes = a->reserved;
        a->backup_valid = 1;
        a->backup_moved = 1;
        a->state = MS__RELEASED;
      } else {
        /* The pages stay where move_in put them: contents in place, and the
         * old backup range no longer exists - forget it, or a later drop
         * would unmap whatever the kernel placed there since. */
        ms__backup_forget(a);
      }
    } else if (a->did & MS__DID_MAP) {
      if (ms__op_unmap(a->be, a->device, a->va, a->reserved) == 0)
        a->state = MS__RELEASED;
      else
        a->state = MS__STALE;
    }
  }
}

int memsleep_resume(const char *const *tags, size_t ntags) {
  pthread_mutex_lock(&ms__g.transition);
  ms__plan_t p;
  int rc = ms__plan_begin("memsleep_resume", tags, ntags, 1, &p);
  if (rc != 0) {
    pthread_mutex_unlock(&ms__g.transition);
    return rc;
  }

  /* Physical memory back, and each allocation's contents queued behind
   * its mapping at once, so the copies run while later allocations are
   * being mapped. If the device turns out to be full part-way, the copies
   * made so far were wasted, nothing else: the backups stay intact. */
  ms__syncset_t sync = {.n = 0};
  for (size_t k = 0; rc == 0 && k < p.nallocs; k++) {
    ms__alloc_t *a = p.allocs[k];
    if (a->state == MS__RELEASED && a->backup_moved) {
      rc = ms__op_move_in(a->be, a->device, a->backup, a->va, a->reserved);
      if (rc == 0) {
        a->did |= MS__DID_MOVE_IN;
        a->state = MS__MAPPED;
      }
    } else if (a->state == MS__RELEASED) {
      rc = ms__op_map(a->be, a->device, a->va, a->reserved);
      if (rc == 0) {
        a->did |= MS__DID_MAP;
        a->state = MS__STALE;
      }
    }
    if (rc == 0 && a->state == MS__STALE) /* also one left stale by an earlier failure */
      rc = ms__restore_contents(a, &sync);
  }
  /* Then wait for the copies (before any rollback unmaps their targets). */
  int rc_sync = ms__syncset_sync(&sync);
  if (rc == 0)
    rc = rc_sync;

  if (rc == MEMSLEEP_ENOMEM) {
    size_t need = 0;
    for (size_t k = 0; k < p.nallocs; k++)
      if (p.allocs[k]->state == MS__RELEASED || (p.allocs[k]->did & MS__DID_MAP))
        need += p.allocs[k]->reserved;
    ms__fail_append("; this resume needs %zu bytes (%.2f GiB) of device memory in all", need,
                    (double)need / (1024.0 * 1024.0 * 1024.0));
  }
  if (rc != 0) {
    ms__resume_rollback(&p);
    ms__fail_append("; resume undone, the tags stay asleep with their backups");
  } else {
    pthread_mutex_lock(&ms__g.lock);
    int keep = ms__keep_now();
    pthread_mutex_unlock(&ms__g.lock);
    for (size_t k = 0; k < p.nallocs; k++) {
      ms__alloc_t *a = p.allocs[k];
      if (a->did & MS__DID_MOVE_IN)
        ms__backup_forget(a); /* its pages are the allocation's again */
      a->state = MS__MAPPED;
      if (a->backup != NULL) {
        if (a->be->keep_backups && keep)
          a->backup_valid = 0; /* kept for the next release to reuse */
        else
          ms__backup_drop(a);
      }
    }
  }
  ms__plan_end(&p, rc != 0);
  pthread_mutex_unlock(&ms__g.transition);
  return rc;
}
