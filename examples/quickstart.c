/*
 * quickstart.c - the README's example: put a buffer to sleep and wake it.
 *
 * Allocates host memory under two tags, one with a backup ("weights") and
 * one without ("kv_cache"), releases both, and shows that the weights came
 * back byte for byte at the same address.
 */
#include <stdio.h>
#include <string.h>

#include "memsleep/memsleep.h"

int main(void) {
  void *weights, *kv;
  int rc = memsleep_alloc(&weights, 1 << 20, MEMSLEEP_HOST, "weights", MEMSLEEP_BACKUP);
  if (rc == 0)
    rc = memsleep_alloc(&kv, 8 << 20, MEMSLEEP_HOST, "kv_cache", MEMSLEEP_ZERO);
  if (rc != 0) {
    fprintf(stderr, "alloc: %s: %s\n", memsleep_strerror(rc), memsleep_last_error());
    return 1;
  }
  strcpy(weights, "the weights survive a sleep");

  rc = memsleep_release(NULL, 0); /* every awake tag */
  if (rc != 0) {
    fprintf(stderr, "release: %s\n", memsleep_last_error());
    return 1;
  }
  memsleep_stats_t s;
  memsleep_stats(NULL, &s);
  printf("asleep: resident %zu bytes, backup %zu bytes\n", s.resident_bytes, s.backup_bytes);

  rc = memsleep_resume(NULL, 0); /* every asleep tag */
  if (rc != 0) {
    fprintf(stderr, "resume: %s\n", memsleep_last_error());
    return 1;
  }
  memsleep_stats(NULL, &s);
  printf("awake:  resident %zu bytes; weights say \"%s\"; kv_cache[0] = %d\n", s.resident_bytes,
         (char *)weights, ((char *)kv)[0]);
  memsleep_free(weights);
  memsleep_free(kv);
  return 0;
}
