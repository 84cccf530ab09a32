/*
 * device.h - where the engine's memory lives: the host or a CUDA device.
 *
 * The loader, the KV cache and the engine place their memory with these:
 * a device is MEMSLEEP_HOST (float32, the CPU backend) or a CUDA ordinal
 * (bfloat16, the CUDA backend), written "cpu" or "cuda:N" on command lines
 * and in /get_server_info. In a build without the CUDA engine
 * (MEMSLEEP_CUDA_ENGINE off, no CUDA toolkit) every CUDA ordinal is
 * refused with MEMSLEEP_EUNAVAIL and a message that says so; with it, the
 * CUDA runtime is touched only when a CUDA ordinal is asked for, so the CPU
 * engine runs on machines without a driver.
 *
 * Errors: 0 or a negative MEMSLEEP_E* code, the message in
 * memsleep_last_error().
 */
#ifndef MEMSLEEP_ENGINE_DEVICE_H
#define MEMSLEEP_ENGINE_DEVICE_H

#include <stddef.h>

/* Parses "cpu" (MEMSLEEP_HOST) or "cuda:N" (0 <= N < 1024) into *device.
 * Anything else: MEMSLEEP_EINVAL. */
int ms__device_parse(const char *text, int *device);

/* Writes "cpu" or "cuda:N" into buf (cap bytes); returns buf. */
const char *ms__device_name(int device, char *buf, size_t cap);

/* 0 when the engine can place memory and compute on device. For a CUDA
 * ordinal: MEMSLEEP_EUNAVAIL when this build has no CUDA engine, the
 * machine no CUDA driver (or one older than the runtime) or no CUDA
 * device; MEMSLEEP_EINVAL for an ordinal the machine does not have. Also
 * makes device current on the calling thread. */
int ms__device_check(int device);

/* Copies bytes from host memory src to dst on device (synchronously). */
int ms__device_upload(int device, void *dst, const void *src, size_t bytes);

/* Writes bytes zero bytes at dst on device (host memory: memset). */
int ms__device_zero(int device, void *dst, size_t bytes);

#endif /* MEMSLEEP_ENGINE_DEVICE_H */
