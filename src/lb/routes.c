/*
 * routes.c - memsleep-lb's route table and the judgement of a request's
 * head (see routes.h).
 */
#include "lb/routes.h"

#include <stdio.h>
#include <string.h>

const ms__lb_route_t ms__lb_routes[] = {
    {"GET", "/health", MS__LB_HEALTH, MS__ACCESS_OPEN},
    {"POST", "/generate", MS__LB_PROXY, MS__ACCESS_API},
    {"POST", "/v1/completions", MS__LB_PROXY, MS__ACCESS_API},
    {"POST", "/release_memory_occupation", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/resume_memory_occupation", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/flush_cache", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/update_weights_from_disk", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/pause_generation", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/continue_generation", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/sleep", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"POST", "/wake_up", MS__LB_FANOUT, MS__ACCESS_ADMIN},
    {"GET", "/is_sleeping", MS__LB_IS_SLEEPING, MS__ACCESS_API},
    {"GET", "/get_server_info", MS__LB_INFO, MS__ACCESS_API},
    {NULL, NULL, MS__LB_HEALTH, MS__ACCESS_OPEN},
};

void ms__lb_judge(const ms__auth_keys_t *keys, const char *method, const char *path,
                  const char *authorization, ms__lb_verdict_t *v) {
  static const ms__auth_names_t names = MS__LB_AUTH_NAMES;
  memset(v, 0, sizeof *v);
  const ms__lb_route_t *known = NULL;
  for (const ms__lb_route_t *r = ms__lb_routes; r->path; r++) {
    if (strcmp(r->path, path) != 0)
      continue;
    known = r;
    if (strcmp(r->method, method) == 0) {
      v->route = r;
      break;
    }
    snprintf(v->allow, sizeof v->allow, "%s", r->method);
  }
  if (!known) {
    v->status = 404;
    snprintf(v->msg, sizeof v->msg,
             "no endpoint %.64s %.256s on memsleep-lb; it forwards /generate, /v1/completions "
             "and the control endpoints (docs/lb.md)",
             method, path);
    return;
  }
  ms__auth_result_t a = ms__auth_check(keys, known->access, authorization);
  if (a != MS__AUTH_OK) {
    v->route = NULL;
    v->status = 401;
    ms__auth_message(a, ms__auth_effective(keys, known->access), &names, v->msg, sizeof v->msg);
    return;
  }
  if (!v->route) {
    v->status = 405;
    snprintf(v->msg, sizeof v->msg, "%.64s is not allowed on %s; use %s", method, known->path,
             v->allow);
  }
}
