/*
 * kvcache.c - the paged KV cache's block pool and prefix cache.
 *
 * The pool is two allocations (keys, values) of memsleep tag "kv_cache"
 * with MEMSLEEP_ZERO, float32 on the host or bfloat16 on a CUDA device;
 * the bookkeeping is heap memory (see kvcache.h). The prefix cache is an
 * open-addressing hash table with linear probing and backward-shift
 * deletion (no tombstones), keyed by the chained hash of a
 * block's prefix; an entry also keeps the hash of the block before it and
 * the block's own tokens, so a hash collision cannot hand out a wrong
 * block.
 */
#include <stdlib.h>
#include <string.h>

#include "core/error.h"
#include "engine/device.h"
#include "engine/kvcache.h"
#include "memsleep/memsleep.h"

struct ms__kv_entry {
  uint64_t hash;     /* chained hash of every token up to the end of the block */
  uint64_t parent;   /* hash of the block before (0 for the first) */
  uint64_t last_use; /* kv->clock when last matched or inserted */
  int32_t block;     /* the block, or -1: empty slot */
};

void ms__kv_destroy(ms__kv_cache_t *kv) {
  if (!kv)
    return;
  if (kv->layout.k)
    memsleep_free(kv->layout.k);
  if (kv->layout.v)
    memsleep_free(kv->layout.v);
  free(kv->free_list);
  free(kv->refcount);
  free(kv->entry_of);
  free(kv->tokens);
  free(kv->entries);
  memset(kv, 0, sizeof *kv);
}

int ms__kv_create(ms__kv_cache_t *kv, int num_layers, int kv_dim, int block_tokens,
                  size_t num_blocks, int device) {
  memset(kv, 0, sizeof *kv);
  if (num_layers < 1 || kv_dim < 1 || block_tokens < 1 || num_blocks < 1 || num_blocks > INT32_MAX)
    return ms__fail(MEMSLEEP_EINVAL,
                    "kv cache: bad shape (layers %d, kv_dim %d, block_tokens %d, blocks %zu)",
                    num_layers, kv_dim, block_tokens, num_blocks);
  if (device != MEMSLEEP_HOST) {
    int rc = ms__device_check(device);
    if (rc != 0)
      return rc;
  }
  /* float32 for the CPU backend, bfloat16 for the CUDA backend. */
  int elem_bytes = device == MEMSLEEP_HOST ? 4 : 2;
  size_t per_block = (size_t)block_tokens * (size_t)kv_dim * (size_t)elem_bytes;
  if (num_blocks > SIZE_MAX / 4 / per_block / (size_t)num_layers)
    return ms__fail(MEMSLEEP_EINVAL, "kv cache: %zu blocks of %zu bytes overflow", num_blocks,
                    per_block);
  kv->layout.num_blocks = num_blocks;
  kv->layout.block_tokens = block_tokens;
  kv->layout.kv_dim = kv_dim;
  kv->layout.num_layers = num_layers;
  kv->layout.elem_bytes = elem_bytes;
  kv->layout.device = device;
  kv->pool_bytes = per_block * num_blocks * (size_t)num_layers;
  int rc = memsleep_alloc(&kv->layout.k, kv->pool_bytes, device, "kv_cache", MEMSLEEP_ZERO);
  if (rc == 0)
    rc = memsleep_alloc(&kv->layout.v, kv->pool_bytes, device, "kv_cache", MEMSLEEP_ZERO);
  if (rc != 0) {
    ms__kv_destroy(kv);
    return rc;
  }
  kv->cap = 16;
  while (kv->cap < 2 * num_blocks)
    kv->cap *= 2;
  kv->free_list = malloc(sizeof(uint32_t) * num_blocks);
  kv->refcount = calloc(num_blocks, sizeof(uint32_t));
  kv->entry_of = malloc(sizeof(int32_t) * num_blocks);
  kv->tokens = malloc(sizeof(int) * (size_t)block_tokens * num_blocks);
  kv->entries = malloc(sizeof(ms__kv_entry_t) * kv->cap);
  if (!kv->free_list || !kv->refcount || !kv->entry_of || !kv->tokens || !kv->entries) {
    ms__kv_destroy(kv);
    return ms__fail(MEMSLEEP_ENOMEM, "kv cache: tables for %zu blocks", num_blocks);
  }
  /* Free list as a stack handing out low ids first. */
  for (size_t i = 0; i < num_blocks; i++) {
    kv->free_list[i] = (uint32_t)(num_blocks - 1 - i);
    kv->entry_of[i] = -1;
  }
  kv->n_free = num_blocks;
  for (size_t i = 0; i < kv->cap; i++)
    kv->entries[i].block = -1;
  return 0;
}

size_t ms__kv_available(const ms__kv_cache_t *kv) {
  return kv->n_free + kv->n_evictable;
}

/* Removes the entry in slot i, shifting later entries of its probe run
 * back so lookups never meet a hole; the block loses the cache's hold. */
static void entry_remove(ms__kv_cache_t *kv, size_t i) {
  size_t mask = kv->cap - 1;
  uint32_t b = (uint32_t)kv->entries[i].block;
  kv->entry_of[b] = -1;
  kv->n_cached--;
  if (kv->refcount[b] == 1)
    kv->n_evictable--;
  if (--kv->refcount[b] == 0)
    kv->free_list[kv->n_free++] = b;
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (kv->entries[j].block < 0)
      break;
    size_t k = kv->entries[j].hash & mask;
    /* Entry j may move to i only if its home k is not in (i, j]. */
    int stays = i <= j ? (i < k && k <= j) : (i < k || k <= j);
    if (stays)
      continue;
    kv->entries[i] = kv->entries[j];
    kv->entry_of[kv->entries[i].block] = (int32_t)i;
    i = j;
  }
  kv->entries[i].block = -1;
}

/* Evicts the least recently used block held by the prefix cache alone. */
static void evict_one(ms__kv_cache_t *kv) {
  size_t best = SIZE_MAX;
  for (size_t i = 0; i < kv->cap; i++) {
    const ms__kv_entry_t *en = &kv->entries[i];
    if (en->block >= 0 && kv->refcount[en->block] == 1 &&
        (best == SIZE_MAX || en->last_use < kv->entries[best].last_use))
      best = i;
  }
  if (best != SIZE_MAX)
    entry_remove(kv, best);
}

int ms__kv_alloc(ms__kv_cache_t *kv, size_t n, uint32_t *out) {
  if (n > ms__kv_available(kv))
    return ms__fail(MEMSLEEP_ENOMEM, "kv cache: %zu blocks wanted, %zu available of %zu", n,
                    ms__kv_available(kv), kv->layout.num_blocks);
  while (kv->n_free < n)
    evict_one(kv);
  for (size_t i = 0; i < n; i++) {
    uint32_t b = kv->free_list[--kv->n_free];
    kv->refcount[b] = 1;
    out[i] = b;
  }
  return 0;
}

void ms__kv_release(ms__kv_cache_t *kv, const uint32_t *blocks, size_t n) {
  for (size_t i = 0; i < n; i++) {
    uint32_t b = blocks[i];
    if (kv->refcount[b] == 0)
      continue; /* not held: a caller bug, but never corrupt the free list */
    kv->refcount[b]--;
    if (kv->refcount[b] == 0)
      kv->free_list[kv->n_free++] = b;
    else if (kv->refcount[b] == 1 && kv->entry_of[b] >= 0)
      kv->n_evictable++;
  }
}

uint64_t ms__kv_hash(uint64_t prev, const int *tokens, size_t n) {
  /* FNV-1a over the previous hash and the tokens' bytes, then a final mix
   * (splitmix64's) so nearby prefixes spread over the table. */
  uint64_t h = 0xcbf29ce484222325ULL;
  for (int i = 0; i < 8; i++) {
    h ^= (prev >> (8 * i)) & 0xff;
    h *= 0x100000001b3ULL;
  }
  for (size_t t = 0; t < n; t++) {
    uint32_t v = (uint32_t)tokens[t];
    for (int i = 0; i < 4; i++) {
      h ^= (v >> (8 * i)) & 0xff;
      h *= 0x100000001b3ULL;
    }
  }
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h ? h : 1;
}

/* Slot of the entry for (hash, parent, tokens), or SIZE_MAX. */
static size_t entry_find(const ms__kv_cache_t *kv, uint64_t hash, uint64_t parent,
                         const int *tokens) {
  size_t mask = kv->cap - 1, bt = (size_t)kv->layout.block_tokens;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const ms__kv_entry_t *en = &kv->entries[i];
    if (en->block < 0)
      return SIZE_MAX;
    if (en->hash == hash && en->parent == parent &&
        memcmp(kv->tokens + (size_t)en->block * bt, tokens, sizeof(int) * bt) == 0)
      return i;
  }
}

size_t ms__kv_prefix_match(ms__kv_cache_t *kv, const int *tokens, size_t n, size_t max_blocks,
                           uint32_t *out) {
  size_t bt = (size_t)kv->layout.block_tokens, got = 0;
  uint64_t prev = 0;
  kv->clock++;
  while (got < max_blocks && (got + 1) * bt <= n) {
    const int *blk = tokens + got * bt;
    uint64_t h = ms__kv_hash(prev, blk, bt);
    size_t i = entry_find(kv, h, prev, blk);
    if (i == SIZE_MAX)
      break;
    uint32_t b = (uint32_t)kv->entries[i].block;
    if (kv->refcount[b] == 1)
      kv->n_evictable--;
    kv->refcount[b]++;
    kv->entries[i].last_use = kv->clock;
    out[got++] = b;
    prev = h;
  }
  return got;
}

void ms__kv_prefix_insert(ms__kv_cache_t *kv, const int *tokens, const uint32_t *blocks,
                          size_t n_full) {
  size_t bt = (size_t)kv->layout.block_tokens, mask = kv->cap - 1;
  uint64_t prev = 0;
  kv->clock++;
  for (size_t k = 0; k < n_full; k++) {
    const int *blk = tokens + k * bt;
    uint64_t h = ms__kv_hash(prev, blk, bt);
    uint32_t b = blocks[k];
    if (entry_find(kv, h, prev, blk) == SIZE_MAX && kv->entry_of[b] < 0) {
      size_t i = h & mask;
      while (kv->entries[i].block >= 0)
        i = (i + 1) & mask;
      kv->entries[i] =
          (ms__kv_entry_t){.hash = h, .parent = prev, .last_use = kv->clock, .block = (int32_t)b};
      kv->entry_of[b] = (int32_t)i;
      memcpy(kv->tokens + (size_t)b * bt, blk, sizeof(int) * bt);
      kv->refcount[b]++;
      kv->n_cached++;
    }
    prev = h;
  }
}

void ms__kv_prefix_reset(ms__kv_cache_t *kv) {
  for (size_t i = 0; i < kv->cap; i++) {
    ms__kv_entry_t *en = &kv->entries[i];
    if (en->block < 0)
      continue;
    uint32_t b = (uint32_t)en->block;
    kv->entry_of[b] = -1;
    if (--kv->refcount[b] == 0)
      kv->free_list[kv->n_free++] = b;
    en->block = -1;
  }
  kv->n_cached = 0;
  kv->n_evictable = 0;
}

int ms__kv_zero(ms__kv_cache_t *kv) {
  int rc = 0;
  if (kv->layout.k)
    rc = ms__device_zero(kv->layout.device, kv->layout.k, kv->pool_bytes);
  if (rc == 0 && kv->layout.v)
    rc = ms__device_zero(kv->layout.device, kv->layout.v, kv->pool_bytes);
  return rc;
}
