/*
 * routes.c - the route table: which handler answers which method and path.
 * The sleep/wake control plane's rows (routes_control.c) follow the
 * generation and information endpoints; /sleep and /wake_up are the
 * vLLM-style aliases of release and resume.
 *
 * The last column is the key a route needs (docs/security.md): only
 * /health is open; what reads or generates needs the API key; what changes
 * the server's state (memory, pause, weights, the prefix cache) needs the
 * admin key.
 */
#include "server/routes.h"

const ms__route_t ms__routes[] = {
    {"POST", "/generate", ms__route_generate, MS__ACCESS_API},
    {"POST", "/v1/completions", ms__route_completions, MS__ACCESS_API},
    {"GET", "/health", ms__route_health, MS__ACCESS_OPEN},
    {"GET", "/health_generate", ms__route_health_generate, MS__ACCESS_API},
    {"GET", "/get_server_info", ms__route_server_info, MS__ACCESS_API},
    {"GET", "/metrics", ms__route_metrics, MS__ACCESS_API},
    {"POST", "/flush_cache", ms__route_flush_cache, MS__ACCESS_ADMIN},
    {"POST", "/release_memory_occupation", ms__route_release_memory, MS__ACCESS_ADMIN},
    {"POST", "/resume_memory_occupation", ms__route_resume_memory, MS__ACCESS_ADMIN},
    {"GET", "/is_sleeping", ms__route_is_sleeping, MS__ACCESS_API},
    {"POST", "/pause_generation", ms__route_pause_generation, MS__ACCESS_ADMIN},
    {"POST", "/continue_generation", ms__route_continue_generation, MS__ACCESS_ADMIN},
    {"POST", "/update_weights_from_disk", ms__route_update_weights, MS__ACCESS_ADMIN},
    {"POST", "/sleep", ms__route_sleep, MS__ACCESS_ADMIN},
    {"POST", "/wake_up", ms__route_wake_up, MS__ACCESS_ADMIN},
    {NULL, NULL, NULL, MS__ACCESS_OPEN},
};
