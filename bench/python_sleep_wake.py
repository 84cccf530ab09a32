#!/usr/bin/env python3
"""Sleep/wake of an inference engine's GPU memory through the Python API
(memsleep.torch), next to a raw pinned copy of the same bytes done with
torch in the same run.

Scenario (the CUDA backend's table): 16 GiB of weights in 256 tensors made
in memsleep.torch.region("weights", backup=True) and 40 GiB of KV cache in
80 tensors made in region("kv_cache") (no backup). Each cycle times
memsleep.torch.release() (synchronize, save the 16 GiB of weights to pinned
host memory, unmap all 56 GiB, empty torch's cache) and
memsleep.torch.resume() (map 56 GiB, copy the weights back), as a Python
caller sees them. The first cycle also pays for allocating the pinned
backups; later ones reuse them (memsleep_keep_backups).

Baseline, same process: the weights copied tensor by tensor into a
16 GiB torch.empty(..., pin_memory=True) buffer with copy_(non_blocking=
True) and back, then one synchronize; best of --baseline-reps. GB/s count
the 16 GiB of backed-up bytes; "ratio" is memsleep's GB/s over the pinned
copy's in the same direction (1.00 = as fast as the raw copy, which moves
the same bytes but maps and unmaps nothing). After the last resume every
weight tensor is checked against its fill value.

  bench/python_sleep_wake.py [--lib-dir DIR] [--hook-mode torch|preload]
      [--weights-gib 16] [--weight-tensors 256] [--kv-gib 40] [--kv-tensors 80]
      [--cycles 3] [--baseline-reps 3]
"""
import argparse
import os
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
GIB = 1 << 30


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--lib-dir", default=os.environ.get("MEMSLEEP_LIB_DIR") or
                   os.path.join(ROOT, "build-gpu", "lib"))
    p.add_argument("--hook-mode", choices=("torch", "preload"), default="torch")
    p.add_argument("--weights-gib", type=float, default=16)
    p.add_argument("--weight-tensors", type=int, default=256)
    p.add_argument("--kv-gib", type=float, default=40)
    p.add_argument("--kv-tensors", type=int, default=80)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--baseline-reps", type=int, default=3)
    return p.parse_args()


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def main():
    args = parse_args()
    os.environ["MEMSLEEP_LIB_DIR"] = os.path.abspath(args.lib_dir)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    try:
        import torch
    except ImportError as e:
        print("python_sleep_wake: needs torch (%s)" % e)
        return 77
    if not torch.cuda.is_available():
        print("python_sleep_wake: torch sees no CUDA device")
        return 77
    import memsleep
    if args.hook_mode == "preload" and not memsleep._lib.get().preloaded:
        env = memsleep.subprocess_env()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    import memsleep.torch as mt
    mt.set_hook_mode(args.hook_mode)

    w_each = int(args.weights_gib * GIB) // args.weight_tensors // (2 << 20) * (2 << 20)
    kv_each = int(args.kv_gib * GIB) // args.kv_tensors // (2 << 20) * (2 << 20)
    w_bytes, kv_bytes = w_each * args.weight_tensors, kv_each * args.kv_tensors
    print("%s, torch %s, hook mode %s, libmemsleep %s" % (
        torch.cuda.get_device_name(), torch.__version__, mt.hook_mode(),
        memsleep.core_library_path()))
    print("weights: %d x %d MiB with backup (%.1f GiB); kv_cache: %d x %d MiB without (%.1f GiB)"
          % (args.weight_tensors, w_each >> 20, w_bytes / GIB, args.kv_tensors, kv_each >> 20,
             kv_bytes / GIB))

    t = time.perf_counter()
    with mt.region("weights", backup=True):
        weights = [torch.empty(w_each, dtype=torch.uint8, device="cuda")
                   for _ in range(args.weight_tensors)]
    with mt.region("kv_cache"):
        kv = [torch.empty(kv_each, dtype=torch.uint8, device="cuda") for _ in range(args.kv_tensors)]
    for i, x in enumerate(weights):
        x.fill_(i % 251)
    for x in kv:
        x.fill_(7)
    torch.cuda.synchronize()
    print("allocated and filled in %.1f s; memsleep: weights %s, kv_cache %s" % (
        time.perf_counter() - t, memsleep.stats("weights"), memsleep.stats("kv_cache")))

    # Baseline: the same bytes through a pinned buffer, tensor by tensor.
    t = time.perf_counter()
    host = torch.empty(w_bytes, dtype=torch.uint8, pin_memory=True)
    pin_alloc_s = time.perf_counter() - t
    d2h, h2d = [], []
    for _ in range(args.baseline_reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        for i, x in enumerate(weights):
            host[i * w_each:(i + 1) * w_each].copy_(x, non_blocking=True)
        torch.cuda.synchronize()
        d2h.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i, x in enumerate(weights):
            x.copy_(host[i * w_each:(i + 1) * w_each], non_blocking=True)
        torch.cuda.synchronize()
        h2d.append(time.perf_counter() - t)
    base_d2h, base_h2d = min(d2h), min(h2d)
    del host

    rows = []
    freed_ok = True
    for c in range(1, args.cycles + 1):
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        t = time.perf_counter()
        mt.release()
        rel = time.perf_counter() - t
        freed = torch.cuda.mem_get_info()[0] - free_before
        freed_ok = freed_ok and freed >= 0.95 * (w_bytes + kv_bytes)
        t = time.perf_counter()
        mt.resume()
        torch.cuda.synchronize()
        res = time.perf_counter() - t
        rows.append((c, rel, res, freed))

    bad = [i for i, x in enumerate(weights) if not bool((x == (i % 251)).all())]

    print()
    print("pinned host buffer: %.1f GiB allocated in %.2f s (torch, pin_memory=True)"
          % (w_bytes / GIB, pin_alloc_s))
    print("%-22s %10s %9s %8s" % ("", "time", "GB/s", "ratio"))
    print("%-22s %8.1f ms %9.2f %8s" % ("pinned copy D2H", base_d2h * 1e3, gbps(w_bytes, base_d2h),
                                        "1.00"))
    print("%-22s %8.1f ms %9.2f %8s" % ("pinned copy H2D", base_h2d * 1e3, gbps(w_bytes, base_h2d),
                                        "1.00"))
    for c, rel, res, freed in rows:
        print("%-22s %8.1f ms %9.2f %8.2f   (GPU memory freed: %.1f GiB)" % (
            "release, cycle %d" % c, rel * 1e3, gbps(w_bytes, rel),
            gbps(w_bytes, rel) / gbps(w_bytes, base_d2h), freed / GIB))
        print("%-22s %8.1f ms %9.2f %8.2f" % (
            "resume, cycle %d" % c, res * 1e3, gbps(w_bytes, res),
            gbps(w_bytes, res) / gbps(w_bytes, base_h2d)))
    print("contents after the last resume: %s" % (
        "all %d weight tensors intact" % len(weights) if not bad else
        "%d tensors CHANGED (first: %d)" % (len(bad), bad[0])))
    if not freed_ok:
        print("a release gave back less than 95%% of the %.1f GiB" % ((w_bytes + kv_bytes) / GIB))
    last = rows[-1]
    print("ratio to the pinned copy, last cycle: release %.2f, resume %.2f" % (
        gbps(w_bytes, last[1]) / gbps(w_bytes, base_d2h),
        gbps(w_bytes, last[2]) / gbps(w_bytes, base_h2d)))
    return 0 if not bad and freed_ok else 1


if __name__ == "__main__":
    sys.exit(main())
