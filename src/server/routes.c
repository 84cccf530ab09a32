/*
 * routes.c - the route table: which handler answers which method and path.
 * The sleep/wake control plane's rows (routes_control.c) follow the
 * generation and information endpoints; /sleep and /wake_up are the
 * vLLM-style aliases of release and resume.
 */
#include "server/routes.h"

const ms__route_t ms__routes[] = {
    {"POST", "/generate", ms__route_generate},
    {"POST", "/v1/completions", ms__route_completions},
    {"GET", "/health", ms__route_health},
    {"GET", "/health_generate", ms__route_health_generate},
    {"GET", "/get_server_info", ms__route_server_info},
    {"GET", "/metrics", ms__route_metrics},
    {"POST", "/flush_cache", ms__route_flush_cache},
    {"POST", "/release_memory_occupation", ms__route_release_memory},
    {"POST", "/resume_memory_occupation", ms__route_resume_memory},
    {"GET", "/is_sleeping", ms__route_is_sleeping},
    {"POST", "/pause_generation", ms__route_pause_generation},
    {"POST", "/continue_generation", ms__route_continue_generation},
    {"POST", "/update_weights_from_disk", ms__route_update_weights},
    {"POST", "/sleep", ms__route_sleep},
    {"POST", "/wake_up", ms__route_wake_up},
    {NULL, NULL, NULL},
};
