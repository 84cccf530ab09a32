/*
 * routes.h - the handlers of memsleep-serve's endpoints, one per endpoint.
 * The table that maps method and path to them is in routes.c.
 */
#ifndef MEMSLEEP_SERVER_ROUTES_H
#define MEMSLEEP_SERVER_ROUTES_H

#include "server/http.h"

/* routes_generate.c */
enum MHD_Result ms__route_generate(ms__http_req_t *req);
enum MHD_Result ms__route_completions(ms__http_req_t *req);
enum MHD_Result ms__route_health_generate(ms__http_req_t *req);

/* routes_info.c */
enum MHD_Result ms__route_health(ms__http_req_t *req);
enum MHD_Result ms__route_server_info(ms__http_req_t *req);
enum MHD_Result ms__route_metrics(ms__http_req_t *req);
enum MHD_Result ms__route_flush_cache(ms__http_req_t *req);

/* routes_control.c: the sleep/wake control plane (docs/control-plane.md) */
enum MHD_Result ms__route_release_memory(ms__http_req_t *req);
enum MHD_Result ms__route_resume_memory(ms__http_req_t *req);
enum MHD_Result ms__route_is_sleeping(ms__http_req_t *req);
enum MHD_Result ms__route_pause_generation(ms__http_req_t *req);
enum MHD_Result ms__route_continue_generation(ms__http_req_t *req);
enum MHD_Result ms__route_update_weights(ms__http_req_t *req);
enum MHD_Result ms__route_sleep(ms__http_req_t *req);
enum MHD_Result ms__route_wake_up(ms__http_req_t *req);

#endif /* MEMSLEEP_SERVER_ROUTES_H */
