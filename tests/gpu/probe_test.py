#!/usr/bin/env python3
"""probe_test.py - memsleep-probe against nvidia-smi, on a machine with an NVIDIA GPU.

A parent process and its child each allocate a known amount of GPU memory
with PyTorch. The probe's per-GPU figure for the parent's tree must match
what `nvidia-smi --query-compute-apps` reports for those two PIDs (within
2 MiB: nvidia-smi rounds to MiB), with and without the child; the gate must
pass and fail around it; and after both free their tensors the figure must
drop by what they freed, which a --wait-below started beforehand must see.
With --lib-dir (where libmemsleep.so is), a process that allocates GPU memory
through memsleep then releases it: the probe's figure must drop by what was
released (and match nvidia-smi), and rise again on resume.

Needs: an NVIDIA GPU, nvidia-smi, Python 3 with torch (CUDA), and the
processes' PIDs visible to NVML (run in the host PID namespace, or a
container started with --pid=host). Exits 77 (skipped) when there is no GPU
or no torch; 0 when every check passes; 1 with the failing check otherwise.

    tests/gpu/probe_test.py --probe BUILD/tools/memsleep-probe
    (or: cmake -DMEMSLEEP_GPU_TESTS=ON ... && ctest -L gpu)
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

MIB = 1 << 20
GIB = 1 << 30
SKIP = 77
TOLERANCE_MIB = 2


def worker(role, mib, device, child_mib):
    """A process of the tree: allocate, say ready, obey 'free' and 'exit' on stdin."""
    import torch

    dev = torch.device("cuda", device)
    block = torch.empty(mib * MIB, dtype=torch.uint8, device=dev)
    block.fill_(1)
    torch.cuda.synchronize(dev)
    child = None
    if role == "parent":
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", "child",
             "--mib", str(child_mib), "--device", str(device)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = child.stdout.readline().split()
        if line[:1] != ["ready"]:
            sys.exit("child did not start: %r" % line)
        print("ready", os.getpid(), child.pid, flush=True)
    else:
        print("ready", os.getpid(), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if child is not None:
            child.stdin.write(cmd + "\n")
            child.stdin.flush()
            if cmd == "free":
                child.stdout.readline()
        if cmd == "free":
            del block
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            print("freed", flush=True)
        elif cmd == "exit":
            break
    if child is not None:
        child.stdin.close()
        child.wait(timeout=60)


def memsleep_worker(lib_dir, mib, device):
    """A process holding mib MiB of memsleep GPU memory (tag "probe"); obeys
    'release', 'resume' and 'exit' on stdin, answering 'done' or the error."""
    import ctypes

    lib = ctypes.CDLL(os.path.join(lib_dir, "libmemsleep.so"))
    lib.memsleep_last_error.restype = ctypes.c_char_p
    ptr = ctypes.c_void_p()
    rc = lib.memsleep_alloc(ctypes.byref(ptr), ctypes.c_size_t(mib * MIB), device, b"probe", 1)
    if rc != 0:
        print("error", lib.memsleep_last_error().decode(), flush=True)
        return 1
    tags = (ctypes.c_char_p * 1)(b"probe")
    print("ready", os.getpid(), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd in ("release", "resume"):
            rc = getattr(lib, "memsleep_" + cmd)(tags, ctypes.c_size_t(1))
            print("done" if rc == 0 else "error " + lib.memsleep_last_error().decode(),
                  flush=True)
        elif cmd == "exit":
            break
    return 0


def check_memsleep_release(args):
    """The probe sees a memsleep release give the memory back, and a resume take it."""
    mib = args.memsleep_mib
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--role", "memsleep",
         "--mib", str(mib), "--device", str(args.device), "--lib-dir", args.lib_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            fail("the memsleep process did not start: %r" % line)
        pid = int(line[1])

        def step(cmd):
            proc.stdin.write(cmd + "\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().strip()
            if answer != "done":
                fail("memsleep %s: %s" % (cmd, answer))

        awake = assert_matches(args, pid, {pid}, "memsleep awake")
        step("release")
        asleep = assert_matches(args, pid, {pid}, "memsleep released")
        step("resume")
        again = assert_matches(args, pid, {pid}, "memsleep resumed")
        print("memsleep: %.1f MiB awake, %.1f MiB released, %.1f MiB resumed (%d MiB allocated)"
              % (awake / MIB, asleep / MIB, again / MIB, mib))
        if awake - asleep < mib * MIB - TOLERANCE_MIB * MIB:
            fail("a release of %d MiB dropped the figure by only %.1f MiB"
                 % (mib, (awake - asleep) / MIB))
        if abs(again - awake) > TOLERANCE_MIB * MIB:
            fail("after resume the figure is %.1f MiB, before release %.1f MiB"
                 % (again / MIB, awake / MIB))
    finally:
        if proc.poll() is None:
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            proc.stdin.close()
            proc.wait(timeout=60)


def fail(what):
    print("FAIL:", what, file=sys.stderr)
    sys.exit(1)


def probe(args, *extra, check=True):
    """Runs the probe; returns (exit status, parsed JSON or None, stderr)."""
    cmd = [args.probe] + [str(x) for x in extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = None
    if "--json" in cmd:
        try:
            out = json.loads(run.stdout)
        except ValueError:
            fail("%s printed no JSON: %r %r" % (" ".join(cmd), run.stdout, run.stderr))
    if check and run.returncode != 0:
        fail("%s exited %d: %s" % (" ".join(cmd), run.returncode, run.stderr))
    return run.returncode, out, run.stderr


def gpu_figures(args, pid, *flags):
    """{uuid: bytes} from the probe's JSON for pid's tree; fails if unknown."""
    _, out, _ = probe(args, "--pid", pid, "--gpu", "--json", *flags)
    gpu = out["gpu"]
    if not gpu["known"]:
        fail("GPU figure unknown (%s): %s -- are the processes in NVML's PID namespace?"
             % (gpu["reason"], gpu["detail"]))
    return {g["uuid"]: g["resident_bytes"] for g in gpu["gpus"]}, gpu["max_bytes"]


def smi_figures(pids):
    """{uuid: MiB} from nvidia-smi for the given PIDs."""
    text = subprocess.run(
        ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid,used_memory",
         "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    sums = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        if int(parts[1]) in pids:
            used = int(parts[2]) if parts[2].isdigit() else 0
            sums[parts[0]] = sums.get(parts[0], 0) + used
    return sums


def assert_matches(args, pid, pids, label):
    """The probe's per-GPU figures for pid's tree equal nvidia-smi's for pids."""
    flags = ["--no-children"] if len(pids) == 1 else []
    ours, top = gpu_figures(args, pid, *flags)
    smi = smi_figures(pids)
    again, _ = gpu_figures(args, pid, *flags)
    if not smi:
        fail("%s: nvidia-smi lists none of %s" % (label, sorted(pids)))
    for uuid in set(ours) | set(smi):
        a = ours.get(uuid, 0) / MIB
        b = smi.get(uuid, 0)
        c = again.get(uuid, 0) / MIB
        if abs(a - b) > TOLERANCE_MIB and abs(c - b) > TOLERANCE_MIB:
            fail("%s: GPU %s: probe %.1f MiB, nvidia-smi %d MiB" % (label, uuid, a, b))
        print("%s: GPU %s: probe %.1f MiB, nvidia-smi %d MiB" % (label, uuid, a, b))
    return top


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probe", help="the memsleep-probe binary")
    ap.add_argument("--role", choices=["parent", "child", "memsleep"], help=argparse.SUPPRESS)
    ap.add_argument("--lib-dir", help="directory of libmemsleep.so: also check a memsleep release")
    ap.add_argument("--memsleep-mib", type=int, default=1024,
                    help="what the memsleep process allocates")
    ap.add_argument("--mib", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--parent-mib", type=int, default=768, help="what the parent allocates")
    ap.add_argument("--child-mib", type=int, default=512, help="what the child allocates")
    ap.add_argument("--device", type=int, default=0, help="CUDA device both use")
    args = ap.parse_args()
    if args.role == "memsleep":
        return memsleep_worker(args.lib_dir, args.mib, args.device)
    if args.role:
        return worker(args.role, args.mib, args.device, args.child_mib)
    if not args.probe:
        ap.error("--probe is required")

    if shutil.which("nvidia-smi") is None:
        print("skipped: no nvidia-smi")
        return SKIP
    try:
        import torch
        if not torch.cuda.is_available():
            print("skipped: torch sees no CUDA device")
            return SKIP
    except ImportError:
        print("skipped: no torch")
        return SKIP

    tree = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--role", "parent",
         "--mib", str(args.parent_mib), "--child-mib", str(args.child_mib),
         "--device", str(args.device)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = tree.stdout.readline().split()
        if line[:1] != ["ready"]:
            fail("the process tree did not start: %r" % line)
        parent, child = int(line[1]), int(line[2])
        print("tree: parent %d, child %d" % (parent, child))

        top = assert_matches(args, parent, {parent, child}, "tree")
        assert_matches(args, parent, {parent}, "parent alone")
        if top < (args.parent_mib + args.child_mib) * MIB:
            fail("tree max %d bytes is less than the %d MiB allocated"
                 % (top, args.parent_mib + args.child_mib))

        # The gate around the figure: 0.1 GiB under fails, 0.1 GiB over passes.
        rc, _, _ = probe(args, "--pid", parent, "--max-residual-gib",
                         "%.4f" % (top / GIB - 0.1), check=False)
        if rc != 1:
            fail("gate under the figure exited %d, expected 1" % rc)
        probe(args, "--pid", parent, "--max-residual-gib", "%.4f" % (top / GIB + 0.1))

        # A waiter started before the release must see the figure fall.
        limit = (top - (args.parent_mib + args.child_mib) * MIB // 2) / GIB
        waiter = subprocess.Popen(
            [args.probe, "--pid", str(parent), "--wait-below", "%.4f" % limit,
             "--timeout", "120", "--interval", "0.2"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        tree.stdin.write("free\n")
        tree.stdin.flush()
        if tree.stdout.readline().strip() != "freed":
            fail("the tree did not free its memory")
        out, err = waiter.communicate(timeout=180)
        if waiter.returncode != 0:
            fail("--wait-below %.4f exited %d: %s%s" % (limit, waiter.returncode, out, err))
        if "waiting" not in err:
            fail("--wait-below printed no progress line: %r" % err)

        after = assert_matches(args, parent, {parent, child}, "tree after free")
        freed = (args.parent_mib + args.child_mib) * MIB
        if top - after < 0.9 * freed:
            fail("figure fell by %d bytes, expected about %d" % (top - after, freed))
        print("tree max: %.1f MiB before, %.1f MiB after freeing %d MiB"
              % (top / MIB, after / MIB, freed // MIB))
    finally:
        if tree.poll() is None:
            tree.stdin.write("exit\n")
            tree.stdin.flush()
            tree.stdin.close()
            tree.wait(timeout=60)
    if args.lib_dir:
        check_memsleep_release(args)
    print("probe_test: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
