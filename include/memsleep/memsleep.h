/*
 * memsleep.h - public API of libmemsleep, the memory core.
 *
 * An allocation is a block whose virtual address stays fixed for its whole
 * life. It carries a tag (a short name such as "weights" or "kv_cache"), a
 * device (a CUDA ordinal, or MEMSLEEP_HOST) and a policy. Releasing a set of
 * tags frees the physical memory behind their allocations (after copying out
 * those allocated with MEMSLEEP_BACKUP) while keeping the addresses reserved;
 * resuming maps fresh memory at the same addresses and restores the backups.
 *
 * Every function returns 0 or a negative MEMSLEEP_E* code; none exits or
 * aborts the process. memsleep_strerror() turns a code into text and
 * memsleep_last_error() gives the detail of the calling thread's last
 * failure. Everything is thread-safe.
 */
#ifndef MEMSLEEP_MEMSLEEP_H
#define MEMSLEEP_MEMSLEEP_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define MEMSLEEP_API __attribute__((visibility("default")))
#else
#define MEMSLEEP_API
#endif

#define MEMSLEEP_VERSION_MAJOR 0
#define MEMSLEEP_VERSION_MINOR 1
#define MEMSLEEP_VERSION_PATCH 0

enum {
  MEMSLEEP_OK = 0,
  MEMSLEEP_EINVAL = -1,    /* bad argument: NULL, zero/absurd size, bad tag, flags */
  MEMSLEEP_ENOMEM = -2,    /* no room (address space, physical or host memory) */
  MEMSLEEP_ESTATE = -3,    /* wrong state: tag already asleep/awake, ... */
  MEMSLEEP_ENOTFOUND = -4, /* unknown tag or pointer */
  MEMSLEEP_EBACKEND = -5,  /* the backend (mmap, CUDA driver) failed */
  MEMSLEEP_EUNAVAIL = -6   /* backend not available here (no driver, no GPU) */
};

#define MEMSLEEP_HOST   (-1) /* device value for host memory */
#define MEMSLEEP_BACKUP 0x1u /* keep contents across release/resume */
#define MEMSLEEP_ZERO   0x2u /* no backup: read as zeros after resume */

#define MEMSLEEP_TAG_MAX 63 /* longest tag name, in characters */

typedef struct memsleep_stats_t {
  size_t allocations;    /* live allocations */
  size_t reserved_bytes; /* virtual bytes held (granularity-rounded) */
  size_t resident_bytes; /* physical bytes mapped now */
  size_t backup_bytes;   /* host bytes holding backups now */
} memsleep_stats_t;

/*
 * Allocates size bytes on device (MEMSLEEP_HOST or a CUDA ordinal) under tag.
 * flags: 0, MEMSLEEP_BACKUP or MEMSLEEP_ZERO. On success *ptr holds an address
 * that stays valid until memsleep_free(). Memory is mapped (awake) on return.
 * Allocating into a tag that is asleep is MEMSLEEP_ESTATE.
 */
MEMSLEEP_API int memsleep_alloc(void **ptr, size_t size, int device, const char *tag,
                                unsigned flags);

/* Frees an allocation made by memsleep_alloc(), whether awake or asleep. */
MEMSLEEP_API int memsleep_free(void *ptr);

/*
 * Releases the physical memory of every allocation of the given tags
 * (ntags == 0: every awake tag). All-or-nothing: on failure every tag keeps
 * its old state and no backup is lost; the call can be retried.
 */
MEMSLEEP_API int memsleep_release(const char *const *tags, size_t ntags);

/*
 * memsleep_release() with flags. MEMSLEEP_RELEASE_NO_BACKUP: keep no backup
 * this time - the contents of MEMSLEEP_BACKUP allocations are discarded too
 * and are undefined after resume (for weights that will be reloaded anyway,
 * e.g. an RL loop pushing new weights). Unknown flags are MEMSLEEP_EINVAL.
 */
#define MEMSLEEP_RELEASE_NO_BACKUP 0x1u
MEMSLEEP_API int memsleep_release_flags(const char *const *tags, size_t ntags, unsigned flags);

/* Maps memory back for the given tags (ntags == 0: every asleep tag). */
MEMSLEEP_API int memsleep_resume(const char *const *tags, size_t ntags);

/* 1 if tag is asleep, 0 if awake, MEMSLEEP_ENOTFOUND if never used. */
MEMSLEEP_API int memsleep_is_asleep(const char *tag);

/* Fills *out with the figures of tag (NULL: the sum over all tags). */
MEMSLEEP_API int memsleep_stats(const char *tag, memsleep_stats_t *out);

/*
 * Like memsleep_stats(), but resident_bytes is measured from the backend
 * (which pages really have physical memory behind them now) rather than
 * taken from memsleep's bookkeeping. Costs a walk over every allocation of
 * the tag: meant for checks and reports, not for hot paths.
 */
MEMSLEEP_API int memsleep_measure(const char *tag, memsleep_stats_t *out);

/*
 * Regions: a thread-local, nestable stack of (tag, flags). The innermost
 * region says where allocations that name no tag go (the cudaMalloc
 * interposer uses it). Depth is limited to MEMSLEEP_REGION_DEPTH_MAX.
 */
#define MEMSLEEP_REGION_DEPTH_MAX 64
MEMSLEEP_API int memsleep_region_push(const char *tag, unsigned flags);
MEMSLEEP_API int memsleep_region_pop(void);

/*
 * The calling thread's innermost region: copies its tag into tag_out (which
 * must hold MEMSLEEP_TAG_MAX + 1 bytes) and its flags into *flags (may be
 * NULL). Returns 1 if a region is open, 0 if none (tag_out is then "").
 */
MEMSLEEP_API int memsleep_region_current(char *tag_out, unsigned *flags);

/* Tags known to the library, in the order they were first used: copies at
 * most cap names (each MEMSLEEP_TAG_MAX + 1 bytes) and returns how many
 * tags exist. */
MEMSLEEP_API int memsleep_tags(char (*names)[MEMSLEEP_TAG_MAX + 1], size_t cap);

/* 1 if ptr is an address memsleep_alloc() returned and that is not yet
 * freed, 0 otherwise (NULL included). Does not touch the last error. */
MEMSLEEP_API int memsleep_owns(const void *ptr);

/*
 * Whether host backups of device memory are kept after a resume so that the
 * next release reuses them (pinned host memory is slow to allocate: keeping
 * it makes every release after the first run at copy speed). keep = 1 keeps
 * them (the default; the environment variable MEMSLEEP_KEEP_BACKUPS=0 makes
 * 0 the default), 0 frees them at every resume and frees the ones kept now,
 * -1 only asks. Returns the setting in force before the call.
 */
MEMSLEEP_API int memsleep_keep_backups(int keep);

MEMSLEEP_API const char *memsleep_strerror(int err);
MEMSLEEP_API const char *memsleep_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* MEMSLEEP_MEMSLEEP_H */
