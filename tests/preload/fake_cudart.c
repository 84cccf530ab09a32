/*
 * fake_cudart.c - a stand-in for libcudart, for testing the interposer on
 * machines without a GPU.
 *
 * cudaMalloc/cudaFree hand out host memory and count their calls (the test
 * reads the counts to know whether a call reached "the real" runtime);
 * cudaGetDevice answers MEMSLEEP_HOST (-1), so that allocations the
 * interposer routes to memsleep land in host memory and the whole path -
 * region, release, resume, cudaFree through memsleep - runs anywhere.
 */
#include <stdlib.h>

long fake_cudart_mallocs;
long fake_cudart_frees;

int cudaMalloc(void **ptr, size_t size) {
  *ptr = malloc(size ? size : 1);
  fake_cudart_mallocs++;
  return *ptr ? 0 : 2;
}

int cudaFree(void *ptr) {
  free(ptr);
  fake_cudart_frees++;
  return 0;
}

int cudaGetDevice(int *device) {
  *device = -1;
  return 0;
}
