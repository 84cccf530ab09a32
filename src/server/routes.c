/*
 * routes.c - the route table: which handler answers which method and path.
 * The sleep/wake control plane (release/resume_memory_occupation,
 * is_sleeping, pause/continue_generation, update_weights_from_disk) will
 * add its rows here.
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
    {NULL, NULL, NULL},
};
