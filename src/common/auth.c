/*
 * auth.c - Bearer parsing, constant-time key comparison and the access
 * rules (see auth.h).
 */
#include "common/auth.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

ms__access_t ms__auth_effective(const ms__auth_keys_t *k, ms__access_t need) {
  if (need == MS__ACCESS_ADMIN)
    return k->admin ? MS__ACCESS_ADMIN : k->api ? MS__ACCESS_API : MS__ACCESS_OPEN;
  if (need == MS__ACCESS_API)
    return k->api ? MS__ACCESS_API : MS__ACCESS_OPEN;
  return MS__ACCESS_OPEN;
}

int ms__auth_bearer(const char *header, const char **token, size_t *len) {
  if (!header || strncasecmp(header, "Bearer", 6) != 0 || (header[6] != ' ' && header[6] != '\t'))
    return -1;
  const char *t = header + 6;
  while (*t == ' ' || *t == '\t')
    t++;
  size_t n = strlen(t);
  while (n > 0 && (t[n - 1] == ' ' || t[n - 1] == '\t'))
    n--;
  if (n == 0)
    return -1;
  for (size_t i = 0; i < n; i++)
    if (t[i] == ' ' || t[i] == '\t')
      return -1;
  *token = t;
  *len = n;
  return 0;
}

int ms__auth_equal(const char *given, size_t given_len, const char *key, size_t key_len) {
  /* Every byte of the key is looked at, whatever the given token holds;
   * the accumulator is volatile so that the loop cannot end early. */
  volatile unsigned char diff = (unsigned char)(given_len != key_len);
  for (size_t i = 0; i < key_len; i++) {
    unsigned char g = i < given_len ? (unsigned char)given[i] : 0;
    diff |= (unsigned char)(g ^ (unsigned char)key[i]);
  }
  return diff == 0;
}

ms__auth_result_t ms__auth_check(const ms__auth_keys_t *k, ms__access_t need,
                                 const char *authorization) {
  ms__access_t eff = ms__auth_effective(k, need);
  if (eff == MS__ACCESS_OPEN)
    return MS__AUTH_OK;
  if (!authorization)
    return MS__AUTH_MISSING;
  const char *tok;
  size_t n;
  if (ms__auth_bearer(authorization, &tok, &n) != 0)
    return MS__AUTH_MALFORMED;
  /* Both comparisons always run: which key matched does not show in the
   * time either. */
  int admin = k->admin && ms__auth_equal(tok, n, k->admin, strlen(k->admin));
  int api = k->api && ms__auth_equal(tok, n, k->api, strlen(k->api));
  if (eff == MS__ACCESS_ADMIN)
    return admin ? MS__AUTH_OK : MS__AUTH_WRONG;
  return admin || api ? MS__AUTH_OK : MS__AUTH_WRONG;
}

void ms__auth_message(ms__auth_result_t r, ms__access_t eff, const ms__auth_names_t *names,
                      char *out, size_t outlen) {
  char which[256];
  if (eff == MS__ACCESS_ADMIN)
    snprintf(which, sizeof which,
             "this endpoint changes the server's state and needs the admin key of %s "
             "(--admin-api-key or %s)",
             names->prog, names->admin_env);
  else
    snprintf(which, sizeof which,
             "this endpoint needs the API key of %s (--api-key or %s; its admin key is "
             "accepted too)",
             names->prog, names->api_env);
  switch (r) {
  case MS__AUTH_MISSING:
    snprintf(out, outlen, "no key sent: %s; send the header \"Authorization: Bearer KEY\"", which);
    return;
  case MS__AUTH_MALFORMED:
    snprintf(out, outlen,
             "the Authorization header is not \"Bearer KEY\": %s; send the header "
             "\"Authorization: Bearer KEY\"",
             which);
    return;
  case MS__AUTH_WRONG:
    snprintf(out, outlen, "wrong key: the key sent is not accepted here; %s", which);
    return;
  case MS__AUTH_OK:
    break;
  }
  snprintf(out, outlen, "authorized");
}
