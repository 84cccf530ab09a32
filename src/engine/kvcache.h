/*
 * kvcache.h - the paged KV cache: a pool of fixed-size blocks and the
 * prefix cache over them.
 *
 * The keys and values themselves are two large allocations of memsleep tag
 * "kv_cache" (MEMSLEEP_ZERO), laid out as ms__kv_layout_t says, so the
 * whole pool can be put to sleep. Everything that indexes it - the free
 * list, per-block reference counts, the prefix-cache hash table - is
 * ordinary heap memory and stays valid while the pool sleeps; after a wake
 * ms__kv_zero() repairs the pool before it is used again. On a CUDA device
 * the pool is bfloat16 and only the compute backend touches its bytes.
 *
 * A block is held by every sequence whose block table names it and by the
 * prefix cache when it is cached; it returns to the free list when the last
 * holder lets go. The prefix cache keys a full block of prompt tokens by a
 * hash of every token up to and including that block, so a block is reused
 * only by a prompt that starts with exactly the same tokens. Blocks held by
 * the prefix cache alone are evicted (oldest first) when the free list runs
 * dry. Not thread-safe: the engine calls it under its own lock.
 */
#ifndef MEMSLEEP_ENGINE_KVCACHE_H
#define MEMSLEEP_ENGINE_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "engine/compute.h"

typedef struct ms__kv_entry ms__kv_entry_t;

typedef struct ms__kv_cache {
  ms__kv_layout_t layout;  /* pool memory and shape (for the compute backend) */
  size_t pool_bytes;       /* bytes of each of layout.k and layout.v */
  uint32_t *free_list;     /* [num_blocks] stack of free block ids (heap) */
  size_t n_free;           /* entries on free_list */
  uint32_t *refcount;      /* [num_blocks] holders of each block (heap) */
  int32_t *entry_of;       /* [num_blocks] prefix-cache entry of each block, or -1 (heap) */
  int *tokens;             /* [num_blocks][block_tokens] tokens of each cached block (heap) */
  ms__kv_entry_t *entries; /* [cap] prefix-cache hash table, open addressing (heap) */
  size_t cap;              /* slots in entries (a power of two) */
  size_t n_cached;         /* blocks held by the prefix cache */
  size_t n_evictable;      /* cached blocks held by the prefix cache alone */
  uint64_t clock;          /* use counter, for oldest-first eviction */
} ms__kv_cache_t;

/* Allocates a pool of num_blocks blocks of block_tokens tokens for a model
 * of num_layers layers and kv_dim (num_kv_heads * head_dim) elements per
 * token, in memsleep tag "kv_cache" on device: float32 on MEMSLEEP_HOST,
 * bfloat16 on a CUDA ordinal. On failure nothing stays. */
int ms__kv_create(ms__kv_cache_t *kv, int num_layers, int kv_dim, int block_tokens,
                  size_t num_blocks, int device);

/* Frees the pool and the tables. Safe on a zeroed or failed cache. */
void ms__kv_destroy(ms__kv_cache_t *kv);

/* Blocks that ms__kv_alloc could hand out now (free, or evictable from the
 * prefix cache). */
size_t ms__kv_available(const ms__kv_cache_t *kv);

/* Takes n blocks (evicting cached-only blocks if needed) into out, each
 * held once. All or nothing: MEMSLEEP_ENOMEM if fewer are available. */
int ms__kv_alloc(ms__kv_cache_t *kv, size_t n, uint32_t *out);

/* Lets go of n blocks (one hold each); a block nobody holds is free. */
void ms__kv_release(ms__kv_cache_t *kv, const uint32_t *blocks, size_t n);

/* Hash of the tokens of one block chained onto the hash of the blocks
 * before it (prev: 0 for the first block). */
uint64_t ms__kv_hash(uint64_t prev, const int *tokens, size_t n);

/* Finds the longest run of cached blocks that starts the prompt tokens[0 ..
 * n) - at most max_blocks full blocks - takes one hold of each into out and
 * returns how many. */
size_t ms__kv_prefix_match(ms__kv_cache_t *kv, const int *tokens, size_t n, size_t max_blocks,
                           uint32_t *out);

/* Offers the first n_full full blocks of a sequence whose prompt is tokens
 * (its KV written) to the prefix cache; blocks whose prefix is cached
 * already are skipped. The cache takes its own hold of those it keeps. */
void ms__kv_prefix_insert(ms__kv_cache_t *kv, const int *tokens, const uint32_t *blocks,
                          size_t n_full);

/* Drops every block the prefix cache holds (those no sequence holds become
 * free). */
void ms__kv_prefix_reset(ms__kv_cache_t *kv);

/* Zeroes the whole pool (after a wake: the pool's contents are undefined or
 * stale; nothing may read them before this), on its device. The pool must
 * be awake. Returns 0, or the device's error. */
int ms__kv_zero(ms__kv_cache_t *kv);

#endif /* MEMSLEEP_ENGINE_KVCACHE_H */
