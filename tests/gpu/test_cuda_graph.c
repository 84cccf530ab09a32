/*
 * test_cuda_graph.c - a CUDA graph captured over memsleep memory still
 * replays correctly after a release/resume with backup.
 *
 * A captured graph keeps raw device addresses in its nodes, and an inference
 * engine instantiates its graphs once. memsleep keeps every address fixed
 * across a release, so the same instantiated graph must work after each
 * wake, reading what the memory holds now. The graph here is captured from a
 * stream: copy A into B, set C to a byte, copy C into D (A and B are carved
 * from a slab, C and D are mappings of their own; all four BACKUP). It is
 * replayed before any release, after a cycle (the backups brought back every
 * buffer, and the graph then overwrites B, C and D), and twice after a second
 * cycle with new input in A.
 *
 *   test_cuda_graph          (exit 0 pass, 1 fail, 77 no CUDA device)
 */
#include "gpu_test.h"

#define DEV  0
#define FILL 0x5a

int main(void) {
  int rc = gt_begin("test_cuda_graph", DEV);
  if (rc != 0)
    return rc;
  const char *tags[] = {"g-graph"};
  const size_t small = 4 * GT_MIB + 256, large = 48 * GT_MIB;
  void *a = NULL, *b = NULL, *c = NULL, *d = NULL;
  cudaStream_t s = NULL;
  cudaGraph_t graph = NULL;
  cudaGraphExec_t exec = NULL;
  int capturing = 0;

  GT_OK(memsleep_alloc(&a, small, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_OK(memsleep_alloc(&b, small, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_OK(memsleep_alloc(&c, large, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_OK(memsleep_alloc(&d, large, DEV, tags[0], MEMSLEEP_BACKUP));
  GT_CUDA(gt_dev_write(a, 0, small, 1));
  GT_CUDA(gt_dev_write(b, 0, small, 2));
  GT_CUDA(gt_dev_write(c, 0, large, 3));
  GT_CUDA(gt_dev_write(d, 0, large, 4));
  GT_CUDA(cudaDeviceSynchronize());

  GT_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  GT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  capturing = 1;
  GT_CUDA(cudaMemcpyAsync(b, a, small, cudaMemcpyDeviceToDevice, s));
  GT_CUDA(cudaMemsetAsync(c, FILL, large, s));
  GT_CUDA(cudaMemcpyAsync(d, c, large, cudaMemcpyDeviceToDevice, s));
  capturing = 0;
  GT_CUDA(cudaStreamEndCapture(s, &graph));
  size_t nodes = 0;
  GT_CUDA(cudaGraphGetNodes(graph, NULL, &nodes));
  GT_CHECK(nodes == 3, "captured graph has %zu nodes, want 3", nodes);
  GT_CUDA(cudaGraphInstantiate(&exec, graph, 0));
  printf("graph: 3 nodes over 2 x %zu and 2 x %zu bytes of memsleep memory\n", small, large);

  /* 1. Replay before any release. */
  GT_CUDA(cudaGraphLaunch(exec, s));
  GT_CUDA(cudaStreamSynchronize(s));
  GT_CHECK_CONTENTS(b, 0, small, 1, "B after the first replay (a copy of A)");
  GT_CHECK_CONTENTS(c, 0, large, GT_BYTE(FILL), "C after the first replay");
  GT_CHECK_CONTENTS(d, 0, large, GT_BYTE(FILL), "D after the first replay (a copy of C)");
  GT_CHECK_CONTENTS(a, 0, small, 1, "A after the first replay (only read)");

  /* 2. New contents everywhere, a cycle with backup, then replay. */
  GT_CUDA(gt_dev_write(a, 0, small, 11));
  GT_CUDA(gt_dev_write(b, 0, small, 12));
  GT_CUDA(gt_dev_write(c, 0, large, 13));
  GT_CUDA(gt_dev_write(d, 0, large, 14));
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  GT_CHECK(memsleep_is_asleep(tags[0]) == 1, "tag not asleep after release");
  GT_OK(memsleep_resume(tags, 1));
  GT_CHECK_CONTENTS(a, 0, small, 11, "A after release/resume");
  GT_CHECK_CONTENTS(b, 0, small, 12, "B after release/resume");
  GT_CHECK_CONTENTS(c, 0, large, 13, "C after release/resume");
  GT_CHECK_CONTENTS(d, 0, large, 14, "D after release/resume");
  GT_CUDA(cudaGraphLaunch(exec, s));
  GT_CUDA(cudaStreamSynchronize(s));
  GT_CHECK_CONTENTS(b, 0, small, 11, "B after replaying the graph after a wake");
  GT_CHECK_CONTENTS(c, 0, large, GT_BYTE(FILL), "C after replaying the graph after a wake");
  GT_CHECK_CONTENTS(d, 0, large, GT_BYTE(FILL), "D after replaying the graph after a wake");

  /* 3. Another cycle with new input; replay twice right after the wake. */
  GT_CUDA(gt_dev_write(a, 0, small, 21));
  GT_CUDA(cudaMemset(c, 0, large));
  GT_CUDA(cudaDeviceSynchronize());
  GT_OK(memsleep_release(tags, 1));
  GT_OK(memsleep_resume(tags, 1));
  GT_CUDA(cudaGraphLaunch(exec, s));
  GT_CUDA(cudaGraphLaunch(exec, s));
  GT_CUDA(cudaStreamSynchronize(s));
  GT_CHECK_CONTENTS(a, 0, small, 21, "A after the second cycle");
  GT_CHECK_CONTENTS(b, 0, small, 21, "B after two replays after the second cycle");
  GT_CHECK_CONTENTS(d, 0, large, GT_BYTE(FILL), "D after two replays after the second cycle");
out:
  if (capturing) {
    cudaGraph_t g = NULL;
    cudaStreamEndCapture(s, &g);
    if (g != NULL)
      cudaGraphDestroy(g);
  }
  if (exec != NULL)
    cudaGraphExecDestroy(exec);
  if (graph != NULL)
    cudaGraphDestroy(graph);
  if (s != NULL)
    cudaStreamDestroy(s);
  gt_free_all(&a, 1);
  gt_free_all(&b, 1);
  gt_free_all(&c, 1);
  gt_free_all(&d, 1);
  return gt_end();
}
