#!/usr/bin/env python3
"""torch_compat_sleep.py - the scenario of torch_model_sleep.py written
against memsleep.compat.torch_memory_saver, as an engine that used
torch_memory_saver would after changing its import.

The model's weights are made in torch_memory_saver.region(tag="weights",
enable_cpu_backup=True), its StaticCache's KV tensors in region(tag=
"kv_cache"); torch_memory_saver.pause() / resume() put them to sleep and
wake them; mem_get_info must recover the bytes and the tokens must be the
same after every cycle. Then: pause("weights") leaves kv_cache awake;
memory allocated under disable() inside a region is ordinary memory that
stays usable while everything is paused; and a graph captured with
torch_memory_saver.cuda_graph(...) replays to the same output after a
pause/resume.

  torch_compat_sleep.py [--lib-dir DIR] [--hook-mode torch|preload] [--skip-graph]

Exit 0 pass, 1 fail, 77 skip; the last line is a one-line summary.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_model_sleep  # noqa: E402  (the shared scenario)


class CompatApi:
    """The scenario's calls, through the torch_memory_saver facade."""

    def __init__(self, hook_mode):
        from memsleep.compat.torch_memory_saver import torch_memory_saver
        self.tms = torch_memory_saver
        self.tms.hook_mode = hook_mode

    def region(self, tag, backup):
        return self.tms.region(tag=tag, enable_cpu_backup=backup)

    def release(self):
        self.tms.pause()

    def resume(self):
        self.tms.resume()

    def cuda_graph(self, graph, tag):
        return self.tms.cuda_graph(cuda_graph=graph, tag=tag)


def compat_checks(torch, memsleep, api, check):
    tms = api.tms
    tms.pause("weights")
    check(memsleep.is_asleep("weights") and not memsleep.is_asleep("kv_cache"),
          "pause('weights') releases the weights only")
    tms.resume("weights")
    check(not memsleep.is_asleep("weights"), "resume('weights') wakes them")

    tms.pause("a_tag_never_used")  # torch_memory_saver: a no-op
    check(True, "pause of a tag never used is a no-op")

    # Nested regions: the inner tag gets the inner tensor, the outer the
    # outer ones (torch alone would route all three to the outer pool).
    mib32 = 32 << 20
    with tms.region(tag="nest_outer", enable_cpu_backup=True):
        first = torch.empty(mib32, dtype=torch.uint8, device="cuda")
        with tms.region(tag="nest_inner"):
            inner = torch.empty(mib32, dtype=torch.uint8, device="cuda")
        second = torch.empty(mib32, dtype=torch.uint8, device="cuda")
    outer_s, inner_s = memsleep.stats("nest_outer"), memsleep.stats("nest_inner")
    check(inner_s.reserved_bytes >= mib32 and outer_s.reserved_bytes >= 2 * mib32,
          "nested regions: the inner tensor in the inner tag, both outer ones in the outer tag "
          "(%s, %s)" % (outer_s, inner_s))
    del first, inner, second

    with tms.region(tag="around_disable"):
        anchor = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")  # a 2 MiB segment
        reserved = memsleep.stats("around_disable").reserved_bytes
        with tms.disable():
            plain = torch.full((16 << 20,), 7.0, device="cuda")  # 64 MiB
    check(memsleep.stats("around_disable").reserved_bytes == reserved,
          "disable() inside a region allocates outside memsleep")
    tms.pause()
    plain.add_(1.0)  # would fault if it had been released
    check(float(plain.sum()) == 8.0 * plain.numel(), "memory from disable() stays usable "
          "while everything is paused")
    tms.resume()
    del plain, anchor
    return "compat extras ok"


if __name__ == "__main__":
    sys.exit(torch_model_sleep.run("torch_compat_sleep", CompatApi, extra=compat_checks))
