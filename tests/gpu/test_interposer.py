#!/usr/bin/env python3
"""test_interposer.py - PyTorch with libmemsleep_preload.so: tensors put to sleep and woken.

Runs PyTorch with the cudaMalloc interposer preloaded (the script runs itself
again with LD_PRELOAD set when it is not) and drives memsleep through ctypes
on the same library, which reaches the same core instance:

  1. Tensors made inside a memsleep region, through one torch.cuda.MemPool
     per tag (so the caching allocator takes fresh cudaMalloc segments for
     each tag and never mixes them): weights (MEMSLEEP_BACKUP) and a KV cache
     (MEMSLEEP_ZERO). memsleep owns them, and not a tensor made outside the
     region. Releasing both tags raises torch.cuda.mem_get_info()'s free
     figure by the bytes memsleep measured resident in them (within 2 MiB),
     a plain tensor can use that memory meanwhile, and after the resume the
     weights equal their CPU copies and the KV cache reads zeros; twice.
  2. MEMSLEEP_DEFAULT_REGION=tag:backup puts a whole process in a region.
  3. memsleep_torch_malloc/memsleep_torch_free as the CUDAPluggableAllocator
     of a torch MemPool used inside a region: the pool's tensors are memsleep
     memory and survive a cycle; a tensor made outside is not.

Parts 2 and 3 run in child processes (each needs a fresh process).

    tests/gpu/test_interposer.py --lib BUILD/lib/libmemsleep_preload.so

Exits 0 when every check passes, 1 with the failing check, 77 (skipped) when
there is no torch, no CUDA device, or a torch without torch.cuda.MemPool.
PYTORCH_CUDA_ALLOC_CONF is cleared: expandable segments would bypass cudaMalloc.
"""
import argparse
import ctypes
import gc
import os
import subprocess
import sys

MIB = 1 << 20
SKIP = 77
SLACK = 2 * MIB
MEMSLEEP_BACKUP = 0x1
MEMSLEEP_ZERO = 0x2
REEXEC_MARK = "MEMSLEEP_INTERPOSER_TEST_CHILD"


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


class Stats(ctypes.Structure):
    _fields_ = [("allocations", ctypes.c_size_t), ("reserved_bytes", ctypes.c_size_t),
                ("resident_bytes", ctypes.c_size_t), ("backup_bytes", ctypes.c_size_t)]


class Memsleep:
    """The memsleep API of the preloaded library, through ctypes."""

    def __init__(self, path):
        lib = ctypes.CDLL(path)
        for name, args in [("memsleep_region_push", [ctypes.c_char_p, ctypes.c_uint]),
                           ("memsleep_region_pop", []),
                           ("memsleep_release", [ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]),
                           ("memsleep_resume", [ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]),
                           ("memsleep_is_asleep", [ctypes.c_char_p]),
                           ("memsleep_owns", [ctypes.c_void_p]),
                           ("memsleep_stats", [ctypes.c_char_p, ctypes.POINTER(Stats)]),
                           ("memsleep_measure", [ctypes.c_char_p, ctypes.POINTER(Stats)])]:
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = ctypes.c_int
        lib.memsleep_last_error.argtypes = []
        lib.memsleep_last_error.restype = ctypes.c_char_p
        lib.memsleep_strerror.argtypes = [ctypes.c_int]
        lib.memsleep_strerror.restype = ctypes.c_char_p
        self.lib = lib

    def _ok(self, rc, what):
        if rc != 0:
            err = self.lib.memsleep_last_error() or b""
            raise Failure("%s returned %d (%s): %s" % (
                what, rc, self.lib.memsleep_strerror(rc).decode(), err.decode(errors="replace")))

    def push(self, tag, flags):
        self._ok(self.lib.memsleep_region_push(tag.encode(), flags),
                 "memsleep_region_push(%s)" % tag)

    def pop(self):
        self._ok(self.lib.memsleep_region_pop(), "memsleep_region_pop()")

    def _tags(self, tags):
        arr = (ctypes.c_char_p * len(tags))(*[t.encode() for t in tags])
        return arr, len(tags)

    def release(self, tags):
        self._ok(self.lib.memsleep_release(*self._tags(tags)), "memsleep_release(%s)" % tags)

    def resume(self, tags):
        self._ok(self.lib.memsleep_resume(*self._tags(tags)), "memsleep_resume(%s)" % tags)

    def asleep(self, tag):
        return self.lib.memsleep_is_asleep(tag.encode())

    def owns(self, ptr):
        return self.lib.memsleep_owns(ctypes.c_void_p(ptr))

    def stats(self, tag, measured=False):
        s = Stats()
        fn = self.lib.memsleep_measure if measured else self.lib.memsleep_stats
        self._ok(fn(tag.encode() if tag else None, ctypes.byref(s)), "memsleep_stats(%s)" % tag)
        return s


def in_region(ms, tag, flags, pool, make):
    """Runs make() inside memsleep region (tag, flags) with pool as torch's pool."""
    import torch
    ms.push(tag, flags)
    try:
        with torch.cuda.use_mem_pool(pool):
            return make()
    finally:
        ms.pop()


def segment_base(ptr):
    """The base of the caching allocator's segment holding ptr (what
    cudaMalloc returned), or None."""
    import torch
    for seg in torch.cuda.memory_snapshot():
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg["address"]
    return None


def owned(ms, t):
    """1 if memsleep owns the segment of tensor t."""
    base = segment_base(t.data_ptr())
    return 0 if base is None else ms.owns(base)


def part_mempool(ms):
    import torch
    dev = torch.device("cuda", 0)
    torch.cuda.set_device(dev)
    # Warm up outside any region: the context, cuBLAS and the default pool.
    x = torch.randn(512, 512, device=dev)
    (x @ x).sum().item()
    torch.cuda.synchronize()

    weights_tag, kv_tag = "torch_weights", "torch_kv"
    pool_w, pool_kv = torch.cuda.MemPool(), torch.cuda.MemPool()
    gen = torch.Generator(device=dev)
    gen.manual_seed(1234)
    # Small (< 1 MiB, 2 MiB segments), medium (20 MiB segments) and large
    # tensors, in the pool of the tag.
    specs = [((1000,), torch.float32), ((1024, 1024), torch.float16),
             ((3, 1000, 1000), torch.float32), ((64, MIB), torch.uint8),
             ((24, 1024, 1024), torch.bfloat16)]

    def make_weights():
        out = []
        for shape, dtype in specs:
            if dtype == torch.uint8:
                out.append(torch.randint(0, 256, shape, device=dev, dtype=dtype, generator=gen))
            else:
                out.append(torch.randn(shape, device=dev, dtype=dtype, generator=gen))
        return out

    weights = in_region(ms, weights_tag, MEMSLEEP_BACKUP, pool_w, make_weights)
    kv = in_region(ms, kv_tag, MEMSLEEP_ZERO, pool_kv,
                   lambda: [torch.full((96, MIB // 4), 7.0, device=dev)])
    outside = torch.randn(4 * MIB, device=dev)
    torch.cuda.synchronize()
    # A tensor may sit inside a segment the caching allocator got earlier
    # (a 20 MiB segment holds several medium tensors): what cudaMalloc
    # returned, and memsleep owns, is the segment's base.
    for i, t in enumerate(weights + kv):
        base = segment_base(t.data_ptr())
        check(base is not None and ms.owns(base) == 1,
              "memsleep does not own the segment of tensor %d (%s, %d bytes) made inside a region"
              % (i, tuple(t.shape), t.numel() * t.element_size()))
    base = segment_base(outside.data_ptr())
    check(base is not None and ms.owns(base) == 0,
          "memsleep owns the segment of a tensor made outside any region")
    copies = [t.cpu() for t in weights]
    tensor_bytes = sum(t.numel() * t.element_size() for t in weights + kv)

    tags = [weights_tag, kv_tag]
    for cycle in (1, 2):
        resident = sum(ms.stats(t, measured=True).resident_bytes for t in tags)
        torch.cuda.synchronize()
        free_before = torch.cuda.mem_get_info()[0]
        ms.release(tags)
        free_after = torch.cuda.mem_get_info()[0]
        rise = free_after - free_before
        print("cycle %d: tensors %.1f MiB, memsleep resident %.1f MiB, free %.1f -> %.1f MiB "
              "(rose %.1f MiB)" % (cycle, tensor_bytes / MIB, resident / MIB, free_before / MIB,
                                   free_after / MIB, rise / MIB), flush=True)
        check(all(ms.asleep(t) == 1 for t in tags), "a tag is not asleep after the release")
        check(abs(rise - resident) <= SLACK,
              "free memory rose by %d bytes, memsleep had %d resident in the tags"
              % (rise, resident))
        check(rise + SLACK >= tensor_bytes,
              "free memory rose by %d bytes, less than the %d bytes of tensors"
              % (rise, tensor_bytes))
        # Someone else (a trainer) uses the freed memory meanwhile.
        other = torch.empty(max(rise // 2, MIB), dtype=torch.uint8, device=dev)
        other.fill_(3)
        check(int(other[-1].item()) == 3, "a plain tensor in the freed memory reads wrong")
        del other
        torch.cuda.synchronize()
        torch.cuda.empty_cache()

        ms.resume(tags)
        check(all(ms.asleep(t) == 0 for t in tags), "a tag is asleep after the resume")
        for i, (t, c) in enumerate(zip(weights, copies)):
            check(torch.equal(t.cpu(), c), "weight tensor %d differs after resume (cycle %d)"
                  % (i, cycle))
        check(int(torch.count_nonzero(kv[0]).item()) == 0,
              "KV tensor (MEMSLEEP_ZERO) is not all zeros after resume (cycle %d)" % cycle)
        # Use them: new contents for the next cycle.
        for t in weights:
            t.add_(1)
        kv[0].fill_(5.0)
        copies = [t.cpu() for t in weights]
    torch.cuda.synchronize()

    del weights, kv, outside, copies
    gc.collect()
    del pool_w, pool_kv
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    for t in tags:
        s = ms.stats(t)
        print("after freeing the tensors and pools: %s has %d allocations, %.1f MiB reserved"
              % (t, s.allocations, s.reserved_bytes / MIB))


def part_default_region(ms):
    """Child: MEMSLEEP_DEFAULT_REGION=torch_default:backup is set."""
    import torch
    dev = torch.device("cuda", 0)
    t = torch.arange(16 * MIB, device=dev, dtype=torch.float32).mul_(3)
    torch.cuda.synchronize()
    check(owned(ms, t) == 1, "with MEMSLEEP_DEFAULT_REGION memsleep does not own a tensor")
    s = ms.stats("torch_default")
    check(s.allocations >= 1, "tag torch_default has no allocations")
    ref = t.cpu()
    ms.release(["torch_default"])
    check(ms.asleep("torch_default") == 1, "torch_default not asleep after release")
    ms.resume(["torch_default"])
    check(torch.equal(t.cpu(), ref), "tensor differs after release/resume (default region, backup)")
    print("default region: %d allocations, %.1f MiB, intact after a cycle"
          % (s.allocations, s.reserved_bytes / MIB))


def part_pluggable(ms, lib):
    """Child: memsleep_torch_malloc/free as the allocator of a torch MemPool."""
    import torch
    try:
        alloc = torch.cuda.memory.CUDAPluggableAllocator(lib, "memsleep_torch_malloc",
                                                         "memsleep_torch_free")
        pool = torch.cuda.MemPool(alloc.allocator())
    except (AttributeError, TypeError) as e:
        print("pluggable: SKIP: torch %s cannot make a MemPool of a pluggable allocator (%s)"
              % (torch.__version__, e))
        return SKIP
    dev = torch.device("cuda", 0)
    t = in_region(ms, "torch_plug", MEMSLEEP_BACKUP, pool,
                  lambda: torch.randn(4 * MIB, device=dev))
    u = torch.randn(MIB, device=dev)
    torch.cuda.synchronize()
    check(owned(ms, t) == 1, "pluggable allocator: memsleep does not own a region's tensor")
    check(owned(ms, u) == 0, "pluggable allocator: memsleep owns a tensor made outside")
    s = ms.stats("torch_plug")
    check(s.allocations >= 1, "pluggable allocator: tag torch_plug has no allocations")
    ref = t.cpu()
    ms.release(["torch_plug"])
    check(ms.asleep("torch_plug") == 1, "torch_plug not asleep after release")
    ms.resume(["torch_plug"])
    check(torch.equal(t.cpu(), ref), "pluggable allocator: tensor differs after release/resume")
    print("pluggable allocator: %d allocations, %.1f MiB in torch_plug, intact after a cycle"
          % (s.allocations, s.reserved_bytes / MIB))
    return 0


def preloaded(lib):
    real = os.path.realpath(lib)
    with open("/proc/self/maps") as f:
        return any(line.rstrip().endswith(real) for line in f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", required=True, help="libmemsleep_preload.so")
    ap.add_argument("--part", choices=["all", "default-region", "pluggable"], default="all",
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    lib = os.path.realpath(args.lib)
    if not os.path.exists(lib):
        print("test_interposer: FAIL: %s does not exist (build the memsleep_preload target)" % lib)
        return 1
    if not preloaded(lib):
        if os.environ.get(REEXEC_MARK):
            print("test_interposer: FAIL: started with LD_PRELOAD=%s but the library is not "
                  "loaded (see the loader's message above)" % os.environ.get("LD_PRELOAD"))
            return 1
        env = dict(os.environ)
        env["LD_PRELOAD"] = ":".join([lib] + [p for p in env.get("LD_PRELOAD", "").split(":") if p])
        env[REEXEC_MARK] = "1"
        if env.pop("PYTORCH_CUDA_ALLOC_CONF", None):
            print("note: PYTORCH_CUDA_ALLOC_CONF cleared for this test")
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)

    try:
        import torch
    except ImportError:
        print("test_interposer: SKIP: no torch")
        return SKIP
    if not torch.cuda.is_available():
        print("test_interposer: SKIP: torch sees no CUDA device")
        return SKIP
    if not (hasattr(torch.cuda, "MemPool") and hasattr(torch.cuda, "use_mem_pool")):
        print("test_interposer: SKIP: torch %s has no torch.cuda.MemPool/use_mem_pool" %
              torch.__version__)
        return SKIP
    ms = Memsleep(lib)
    try:
        if args.part == "default-region":
            part_default_region(ms)
            return 0
        if args.part == "pluggable":
            return part_pluggable(ms, lib)
        print("torch %s, CUDA %s, %s; LD_PRELOAD=%s" % (
            torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0),
            os.environ.get("LD_PRELOAD")), flush=True)
        print("-- tensors in regions, one MemPool per tag", flush=True)
        part_mempool(ms)
    except Failure as e:
        print("%s: FAIL: %s" % ("test_interposer" if args.part == "all" else args.part, e),
              flush=True)
        return 1

    failed = 0
    for part, extra in [("default-region", {"MEMSLEEP_DEFAULT_REGION": "torch_default:backup"}),
                        ("pluggable", {})]:
        print("-- %s (child process)" % part, flush=True)
        env = dict(os.environ, **extra)
        try:
            rc = subprocess.run([sys.executable, os.path.abspath(__file__), "--lib", lib,
                                 "--part", part], env=env, timeout=300).returncode
        except subprocess.TimeoutExpired:
            print("   %s: timed out after 300 s" % part)
            rc = 1
        if rc == SKIP:
            print("   %s: skipped" % part)
        elif rc != 0:
            print("   %s: FAILED (exit %d)" % (part, rc))
            failed = 1
        else:
            print("   %s: ok" % part)
    if failed:
        print("test_interposer: FAIL (see the parts above)")
        return 1
    print("test_interposer: PASS")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
