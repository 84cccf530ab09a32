/*
 * test_access.c - the access rules shared by memsleep-serve and
 * memsleep-lb (common/auth.c, common/path_guard.c, common/exposure.c),
 * without a network.
 *
 * Which key opens which endpoint, in every combination of keys set; that a
 * key must be sent whole and exactly ("Bearer KEY"), never a prefix or an
 * extension of it; that memsleep-serve's route table judges every endpoint
 * as docs/security.md lists it; that a model path is allowed only inside
 * an allowed root, whatever "..", symlinks or missing directories it goes
 * through; and which listening addresses count as loopback.
 */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/auth.h"
#include "common/exposure.h"
#include "common/path_guard.h"
#include "server/http.h"

#define API   "api-key-0123456789"
#define ADMIN "admin-key-0123456789"

static void test_bearer_takes_one_token_after_the_scheme(void **state) {
  (void)state;
  const char *t;
  size_t n;
  assert_int_equal(ms__auth_bearer("Bearer abc", &t, &n), 0);
  assert_int_equal(n, 3);
  assert_memory_equal(t, "abc", 3);
  assert_int_equal(ms__auth_bearer("bearer   abc  ", &t, &n), 0);
  assert_int_equal(n, 3);
  const char *bad[] = {"",          "Bearer",    "Bearer ",    "Bearer  \t ",
                       "Bearerabc", "Basic abc", "Bearer a b", "abc"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    assert_int_equal(ms__auth_bearer(bad[i], &t, &n), -1);
  assert_int_equal(ms__auth_bearer(NULL, &t, &n), -1);
}

static void test_equal_needs_the_whole_key_exactly(void **state) {
  (void)state;
  const char *key = "s3cret-key";
  size_t kl = strlen(key);
  assert_true(ms__auth_equal("s3cret-key", 10, key, kl));
  assert_false(ms__auth_equal("s3cret-ke", 9, key, kl));
  assert_false(ms__auth_equal("s3cret-keyX", 11, key, kl));
  assert_false(ms__auth_equal("S3cret-key", 10, key, kl));
  assert_false(ms__auth_equal("", 0, key, kl));
  assert_false(ms__auth_equal("s3cret-kez", 10, key, kl));
}

/* What ms__auth_check says for header h at level need with keys k. */
static ms__auth_result_t check(const char *api, const char *admin, ms__access_t need,
                               const char *h) {
  ms__auth_keys_t k = {api, admin};
  return ms__auth_check(&k, need, h);
}

static void test_which_key_opens_which_level(void **state) {
  (void)state;
  const char *bapi = "Bearer " API, *badmin = "Bearer " ADMIN;
  /* No keys: everything open. */
  assert_int_equal(check(NULL, NULL, MS__ACCESS_ADMIN, NULL), MS__AUTH_OK);
  /* Both keys: the API key opens the API level only; admin opens both. */
  assert_int_equal(check(API, ADMIN, MS__ACCESS_OPEN, NULL), MS__AUTH_OK);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_API, NULL), MS__AUTH_MISSING);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_API, bapi), MS__AUTH_OK);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_API, badmin), MS__AUTH_OK);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_ADMIN, bapi), MS__AUTH_WRONG);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_ADMIN, badmin), MS__AUTH_OK);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_ADMIN, "Token " ADMIN), MS__AUTH_MALFORMED);
  assert_int_equal(check(API, ADMIN, MS__ACCESS_ADMIN, "Bearer " ADMIN "x"), MS__AUTH_WRONG);
  /* The API key alone protects the admin level too. */
  assert_int_equal(check(API, NULL, MS__ACCESS_ADMIN, NULL), MS__AUTH_MISSING);
  assert_int_equal(check(API, NULL, MS__ACCESS_ADMIN, bapi), MS__AUTH_OK);
  /* The admin key alone leaves the API level open. */
  assert_int_equal(check(NULL, ADMIN, MS__ACCESS_API, NULL), MS__AUTH_OK);
  assert_int_equal(check(NULL, ADMIN, MS__ACCESS_ADMIN, bapi), MS__AUTH_WRONG);
  assert_int_equal(check(NULL, ADMIN, MS__ACCESS_ADMIN, badmin), MS__AUTH_OK);
}

static void test_refusal_messages_say_what_to_send_and_never_the_key(void **state) {
  (void)state;
  ms__auth_names_t names = {"memsleep-serve", "MEMSLEEP_API_KEY", "MEMSLEEP_ADMIN_API_KEY"};
  char msg[512];
  ms__auth_message(MS__AUTH_MISSING, MS__ACCESS_ADMIN, &names, msg, sizeof msg);
  assert_non_null(strstr(msg, "Authorization: Bearer KEY"));
  assert_non_null(strstr(msg, "MEMSLEEP_ADMIN_API_KEY"));
  ms__auth_message(MS__AUTH_WRONG, MS__ACCESS_API, &names, msg, sizeof msg);
  assert_non_null(strstr(msg, "wrong key"));
  assert_non_null(strstr(msg, "MEMSLEEP_API_KEY"));
}

/* memsleep-serve's table: the status each endpoint gets with header h. */
static unsigned judge(const char *method, const char *path, const char *h) {
  ms__server_options_t o;
  memset(&o, 0, sizeof o);
  o.keys.api = API;
  o.keys.admin = ADMIN;
  ms__http_verdict_t v;
  ms__http_judge(&o, method, path, h, &v);
  return v.status;
}

static void test_serve_routes_need_the_documented_keys(void **state) {
  (void)state;
  const char *open[] = {"/health"};
  const char *api[] = {"/generate",        "/v1/completions", "/health_generate",
                       "/get_server_info", "/metrics",        "/is_sleeping"};
  const char *admin[] = {"/flush_cache",
                         "/release_memory_occupation",
                         "/resume_memory_occupation",
                         "/pause_generation",
                         "/continue_generation",
                         "/update_weights_from_disk",
                         "/sleep",
                         "/wake_up"};
  for (const ms__route_t *r = ms__routes; r->path; r++) {
    int is_open = 0, is_api = 0, is_admin = 0;
    for (size_t i = 0; i < sizeof open / sizeof open[0]; i++)
      is_open |= strcmp(r->path, open[i]) == 0;
    for (size_t i = 0; i < sizeof api / sizeof api[0]; i++)
      is_api |= strcmp(r->path, api[i]) == 0;
    for (size_t i = 0; i < sizeof admin / sizeof admin[0]; i++)
      is_admin |= strcmp(r->path, admin[i]) == 0;
    assert_int_equal(is_open + is_api + is_admin, 1); /* every route is listed once */
    assert_int_equal(judge(r->method, r->path, NULL), is_open ? 0 : 401);
    assert_int_equal(judge(r->method, r->path, "Bearer " API), is_admin ? 401 : 0);
    assert_int_equal(judge(r->method, r->path, "Bearer " ADMIN), 0);
  }
  /* Unknown paths are 404 with or without a key; the wrong method is 405
   * only for a caller with the key. */
  assert_int_equal(judge("GET", "/nope", NULL), 404);
  assert_int_equal(judge("GET", "/generate", NULL), 401);
  assert_int_equal(judge("GET", "/generate", "Bearer " API), 405);
}

/* A tree in a fresh directory: allowed/{model,escape -> ../outside}. */
static char tree[PATH_MAX];

static int make_tree(void **state) {
  (void)state;
  const char *tmp = getenv("TMPDIR");
  snprintf(tree, sizeof tree, "%s/memsleep-access-XXXXXX", tmp ? tmp : "/tmp");
  if (!mkdtemp(tree))
    return -1;
  char p[PATH_MAX + 64];
  snprintf(p, sizeof p, "%s/allowed", tree);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/allowed/model", tree);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/outside", tree);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/allowed-not", tree);
  mkdir(p, 0700);
  snprintf(p, sizeof p, "%s/allowed/escape", tree);
  return symlink("../outside", p);
}

static int remove_tree(void **state) {
  (void)state;
  const char *rel[] = {"allowed/escape", "allowed/model", "allowed", "outside", "allowed-not"};
  char p[PATH_MAX + 64];
  for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
    snprintf(p, sizeof p, "%s/%s", tree, rel[i]);
    remove(p);
  }
  return rmdir(tree);
}

static int verdict(const ms__path_roots_t *r, const char *rel) {
  char p[PATH_MAX + 64], *real = NULL;
  snprintf(p, sizeof p, "%s/%s", tree, rel);
  int v = ms__path_resolve_inside(r, p, &real);
  assert_true((v == MS__PATH_INSIDE) == (real != NULL));
  free(real);
  return v;
}

static void test_model_paths_stay_inside_the_roots(void **state) {
  (void)state;
  ms__path_roots_t r = {0};
  char err[512], root[PATH_MAX + 16];
  snprintf(root, sizeof root, "%s/allowed", tree);
  assert_int_equal(ms__path_roots_add(&r, root, err, sizeof err), 0);
  assert_int_equal(verdict(&r, "allowed"), MS__PATH_INSIDE);
  assert_int_equal(verdict(&r, "allowed/model"), MS__PATH_INSIDE);
  assert_int_equal(verdict(&r, "allowed/./model/"), MS__PATH_INSIDE);
  /* ".." after a symlink climbs from where the link leads, as the kernel
   * does when it opens the path. */
  assert_int_equal(verdict(&r, "allowed/escape/../allowed/model"), MS__PATH_INSIDE);
  assert_int_equal(verdict(&r, "allowed/escape/../outside"), MS__PATH_OUTSIDE);
  assert_int_equal(verdict(&r, "allowed/escape"), MS__PATH_OUTSIDE);
  assert_int_equal(verdict(&r, "allowed/../outside"), MS__PATH_OUTSIDE);
  assert_int_equal(verdict(&r, "allowed-not"), MS__PATH_OUTSIDE);
  assert_int_equal(verdict(&r, "outside/none"), MS__PATH_OUTSIDE);
  assert_int_equal(verdict(&r, "allowed/none"), MS__PATH_MISSING);
  assert_int_equal(verdict(&r, "allowed/none/deeper"), MS__PATH_MISSING);
  assert_int_equal(verdict(&r, "allowed/none/../../outside"), MS__PATH_OUTSIDE);
  char *real = NULL;
  assert_int_equal(ms__path_resolve_inside(&r, "/", &real), MS__PATH_OUTSIDE);
  assert_int_equal(ms__path_resolve_inside(&r, "", &real), MS__PATH_OUTSIDE);
  snprintf(root, sizeof root, "%s/allowed/none", tree);
  assert_int_equal(ms__path_roots_add(&r, root, err, sizeof err), -1);
  assert_non_null(strstr(err, "none"));
  ms__path_roots_free(&r);
}

static void test_loopback_addresses(void **state) {
  (void)state;
  assert_true(ms__host_is_loopback("127.0.0.1"));
  assert_true(ms__host_is_loopback("127.1.2.3"));
  assert_true(ms__host_is_loopback("::1"));
  assert_false(ms__host_is_loopback("0.0.0.0"));
  assert_false(ms__host_is_loopback("::"));
  assert_false(ms__host_is_loopback("10.0.0.1"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bearer_takes_one_token_after_the_scheme),
      cmocka_unit_test(test_equal_needs_the_whole_key_exactly),
      cmocka_unit_test(test_which_key_opens_which_level),
      cmocka_unit_test(test_refusal_messages_say_what_to_send_and_never_the_key),
      cmocka_unit_test(test_serve_routes_need_the_documented_keys),
      cmocka_unit_test_setup_teardown(test_model_paths_stay_inside_the_roots, make_tree,
                                      remove_tree),
      cmocka_unit_test(test_loopback_addresses),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
