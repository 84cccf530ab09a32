/*
 * worker_auth.c - the key memsleep-lb presents to a worker (see lb.h).
 *
 * The balancer's own keys and the workers' keys are kept apart: a client
 * never learns a worker key, and a worker never sees the client's key when
 * the balancer has worker keys to send instead.
 */
#include <stdio.h>

#include "lb/lb.h"

const char *ms__lb_worker_auth(const ms__lb_t *lb, ms__access_t need, const char *client_auth,
                               char *out, size_t outlen) {
  const ms__auth_keys_t *k = &lb->opt.worker_keys;
  const char *key =
      need == MS__ACCESS_ADMIN ? (k->admin ? k->admin : k->api) : (k->api ? k->api : k->admin);
  if (key) {
    snprintf(out, outlen, "Bearer %s", key);
    return out;
  }
  if (!client_auth)
    return NULL;
  snprintf(out, outlen, "%s", client_auth);
  return out;
}
