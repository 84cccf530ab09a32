/*
 * tags.c - tag names and the table of tags (see state.h).
 *
 * A tag comes into being the first time something is allocated under it and
 * stays known for the life of the process, so that its asleep/awake state
 * survives freeing its last allocation.
 */
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "state.h"

int ms__tag_check(const char *tag) {
  if (tag == NULL)
    return ms__fail(MEMSLEEP_EINVAL, "tag is NULL");
  size_t n = 0;
  for (const char *p = tag; *p; p++, n++) {
    char c = *p;
    int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
             c == '_' || c == '.' || c == '-';
    if (!ok)
      return ms__fail(MEMSLEEP_EINVAL,
                      "tag \"%.80s\": character 0x%02x at position %zu is not one of "
                      "[A-Za-z0-9_.-]",
                      tag, (unsigned)(unsigned char)c, n);
    if (n >= MEMSLEEP_TAG_MAX)
      return ms__fail(MEMSLEEP_EINVAL, "tag \"%.80s...\" is longer than %d characters", tag,
                      MEMSLEEP_TAG_MAX);
  }
  if (n == 0)
    return ms__fail(MEMSLEEP_EINVAL, "tag is empty");
  return 0;
}

ms__tag_t *ms__tag_find(const char *name) {
  for (size_t i = 0; i < ms__g.ntags; i++)
    if (strcmp(ms__g.tags[i]->name, name) == 0)
      return ms__g.tags[i];
  return NULL;
}

int ms__tag_get(const char *name, ms__tag_t **out) {
  ms__tag_t *t = ms__tag_find(name);
  if (t != NULL) {
    *out = t;
    return 0;
  }
  if (ms__g.ntags >= MS__TAGS_MAX)
    return ms__fail(MEMSLEEP_ENOMEM,
                    "tag \"%s\": the process already uses %d tags, the most allowed", name,
                    MS__TAGS_MAX);
  if (ms__g.ntags == ms__g.tags_capacity) {
    size_t capacity = ms__g.tags_capacity ? ms__g.tags_capacity * 2 : 16;
    ms__tag_t **tags = realloc(ms__g.tags, capacity * sizeof *tags);
    if (tags == NULL)
      return ms__fail(MEMSLEEP_ENOMEM, "tag \"%s\": out of host memory for the tag table", name);
    ms__g.tags = tags;
    ms__g.tags_capacity = capacity;
  }
  t = calloc(1, sizeof *t);
  if (t == NULL)
    return ms__fail(MEMSLEEP_ENOMEM, "tag \"%s\": out of host memory for the tag record", name);
  strcpy(t->name, name); /* length checked by ms__tag_check */
  ms__g.tags[ms__g.ntags++] = t;
  *out = t;
  return 0;
}

void ms__tag_drop_if_unused(ms__tag_t *t) {
  if (t->head != NULL || t->pending != 0 || t->asleep || t->busy)
    return;
  for (size_t i = 0; i < ms__g.ntags; i++) {
    if (ms__g.tags[i] == t) {
      memmove(&ms__g.tags[i], &ms__g.tags[i + 1], (ms__g.ntags - i - 1) * sizeof *ms__g.tags);
      ms__g.ntags--;
      free(t);
      return;
    }
  }
}

/* O(allocations of the tag): for transitions, not for every alloc/free. */
void ms__tag_restat(ms__tag_t *t) {
  memsleep_stats_t s = {0, 0, 0, 0};
  for (ms__alloc_t *a = t->head; a != NULL; a = a->next) {
    s.allocations += a->nblocks;
    s.reserved_bytes += a->reserved;
    if (a->state != MS__RELEASED)
      s.resident_bytes += a->reserved;
    s.backup_bytes += a->backup_bytes;
  }
  t->stats = s;
}
