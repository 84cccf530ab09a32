#!/usr/bin/env python3
"""torch_model_sleep.py - a Hugging Face transformers model put to sleep and
woken through memsleep.torch, on a GPU.

Builds a small Llama (random weights from a LlamaConfig, float32) inside
memsleep.torch.region("weights", backup=True) and the KV cache of a
StaticCache inside region("kv_cache") (no backup), generates greedily,
releases every tag, checks that torch.cuda.mem_get_info() got the bytes back
and that the tags report nothing resident, resumes, checks the bytes are
taken again, and generates the same tokens from the same addresses; twice.
Then a CUDA graph captured with memsleep.torch.cuda_graph (tag "cuda_graph")
is released with the rest, resumed and replayed to the same output.

  torch_model_sleep.py [--lib-dir DIR] [--hook-mode torch|preload] [--skip-graph]

--lib-dir: the build's library directory (default: $MEMSLEEP_LIB_DIR, else
build-gpu/lib). --hook-mode preload re-runs the program with
libmemsleep_preload.so in LD_PRELOAD. Exit 0 pass, 1 fail, 77 skip (no
torch, transformers or GPU); the last line is a one-line summary.
tests/gpu/torch_compat_sleep.py runs the same scenario through
memsleep.compat.torch_memory_saver.
"""
import argparse
import os
import sys
import traceback

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MIB = 1 << 20
PROMPT = [1, 17, 300, 42, 509, 7, 255, 256, 100, 3, 64, 128]
NEW_TOKENS = 32
CYCLES = 2
SHARE = 0.9  # of the resident bytes that must show in mem_get_info


def parse_args(prog):
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--lib-dir", default=os.environ.get("MEMSLEEP_LIB_DIR") or
                   os.path.join(ROOT, "build-gpu", "lib"))
    p.add_argument("--hook-mode", choices=("torch", "preload"), default="torch")
    p.add_argument("--skip-graph", action="store_true")
    return p.parse_args()


class Checks:
    """Collects the checks' verdicts; each prints as it runs."""

    def __init__(self):
        self.failures = []

    def __call__(self, ok, what):
        print(("ok    " if ok else "FAIL  ") + what, flush=True)
        if not ok:
            self.failures.append(what)
        return ok


def setup(args, prog):
    """Imports what the test needs; returns (torch, transformers, memsleep)
    or exits 77 when torch, transformers or a GPU is missing."""
    os.environ["MEMSLEEP_LIB_DIR"] = os.path.abspath(args.lib_dir)
    sys.path.insert(0, os.path.join(ROOT, "python"))
    try:
        import torch
        import transformers
    except ImportError as e:
        print("%s: SKIP (%s)" % (prog, e))
        sys.exit(77)
    if not torch.cuda.is_available():
        print("%s: SKIP (torch sees no CUDA device)" % prog)
        sys.exit(77)
    import memsleep
    if args.hook_mode == "preload" and not memsleep._lib.get().preloaded:
        if os.environ.get("MEMSLEEP_TEST_REEXEC"):
            print("%s: FAIL (re-ran with LD_PRELOAD=%s but the interposer is not in the process)"
                  % (prog, os.environ.get("LD_PRELOAD")))
            sys.exit(1)
        env = memsleep.subprocess_env()
        env["MEMSLEEP_TEST_REEXEC"] = "1"
        print("re-running with LD_PRELOAD=%s" % env["LD_PRELOAD"], flush=True)
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable] + sys.argv, env)
    print("torch %s, transformers %s, %s, libmemsleep %s (%s)" % (
        torch.__version__, transformers.__version__, torch.cuda.get_device_name(),
        memsleep.core_library_path(), memsleep._lib.get().how), flush=True)
    return torch, transformers, memsleep


def build_model(torch, transformers, api):
    """A small random Llama in region weights (backup) and a StaticCache
    whose KV tensors are allocated in region kv_cache."""
    cfg = transformers.LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=4096,
        tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with api.region("weights", backup=True):
        model = model.to(device="cuda", dtype=torch.float32)
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    max_len = 4096
    with api.region("kv_cache", backup=False):
        try:
            cache = transformers.StaticCache(config=cfg, max_cache_len=max_len)
        except TypeError:  # transformers 4.x: allocated in the constructor
            cache = transformers.StaticCache(config=cfg, max_batch_size=1, max_cache_len=max_len,
                                             device="cuda", dtype=torch.float32)
        if hasattr(cache, "early_initialization"):
            # transformers >= 4.56 allocates the layers lazily, at the first
            # update: allocate them now, inside the region.
            cache.early_initialization(batch_size=1, num_heads=cfg.num_key_value_heads,
                                       head_dim=head_dim, dtype=torch.float32, device="cuda")
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * max_len * head_dim * 4
    return model, cache, weight_bytes, kv_bytes


def generate(torch, transformers, model, cache):
    cache.reset()
    ids = torch.tensor([PROMPT], device="cuda")
    kwargs = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False,
                  past_key_values=cache, attention_mask=torch.ones_like(ids), pad_token_id=0)
    if hasattr(transformers.GenerationConfig(), "disable_compile"):
        kwargs["disable_compile"] = True  # no torch.compile for the static cache
    with torch.no_grad():
        out = model.generate(ids, **kwargs)
    return out[0, len(PROMPT):].tolist()


def snapshot(torch, model):
    """(address, host copy) of every parameter."""
    with torch.no_grad():
        return [(p.data_ptr(), p.detach().cpu().clone()) for p in model.parameters()]


def same_weights(torch, model, saved):
    now = snapshot(torch, model)
    return len(now) == len(saved) and all(
        pa == sa and torch.equal(pt, st) for (pa, pt), (sa, st) in zip(now, saved))


def free_bytes(torch):
    torch.cuda.synchronize()
    return torch.cuda.mem_get_info()[0]


def resident(memsleep, tags):
    return sum(memsleep.stats(t).resident_bytes for t in tags)


def sleep_wake_cycles(torch, transformers, memsleep, api, check):
    """The model scenario; returns a short description for the summary."""
    model, cache, weight_bytes, kv_bytes = build_model(torch, transformers, api)
    tags = ["weights", "kv_cache"]
    w, kv = memsleep.stats("weights"), memsleep.stats("kv_cache")
    print("weights: %d bytes in %d parameters -> %s" % (weight_bytes, len(list(model.parameters())),
                                                         w))
    print("kv_cache: %d bytes -> %s" % (kv_bytes, kv))
    check(w.reserved_bytes >= weight_bytes,
          "the weights are memsleep memory (%d reserved >= %d)" % (w.reserved_bytes, weight_bytes))
    check(kv.reserved_bytes >= kv_bytes,
          "the KV cache is memsleep memory (%d reserved >= %d)" % (kv.reserved_bytes, kv_bytes))

    tokens = generate(torch, transformers, model, cache)
    print("tokens: %s" % tokens)
    saved = snapshot(torch, model)
    freed_text = ""
    for cycle in range(1, CYCLES + 1):
        torch.cuda.empty_cache()
        before = free_bytes(torch)
        held = resident(memsleep, tags)
        api.release()
        after_release = free_bytes(torch)
        freed = after_release - before
        check(freed >= SHARE * held, "cycle %d: release gave back %.1f MiB of the %.1f MiB "
              "resident (mem_get_info)" % (cycle, freed / MIB, held / MIB))
        for t in tags:
            s = memsleep.stats(t)
            check(memsleep.is_asleep(t) and s.resident_bytes == 0,
                  "cycle %d: %s asleep, nothing resident (%s)" % (cycle, t, s))
        check(memsleep.stats("weights").backup_bytes >= weight_bytes,
              "cycle %d: the weights' backup holds %d bytes" % (
                  cycle, memsleep.stats("weights").backup_bytes))
        api.resume()
        retaken = after_release - free_bytes(torch)
        check(retaken >= SHARE * held, "cycle %d: resume took %.1f MiB back" % (cycle,
                                                                               retaken / MIB))
        check(resident(memsleep, tags) == held, "cycle %d: everything resident again" % cycle)
        check(same_weights(torch, model, saved),
              "cycle %d: every weight at the same address with the same contents" % cycle)
        again = generate(torch, transformers, model, cache)
        if not check(again == tokens, "cycle %d: the same %d tokens" % (cycle, len(tokens))):
            print("  before: %s\n  after:  %s" % (tokens, again))
        freed_text = "freed %.0f MiB" % (freed / MIB)
    return "weights %.0f MiB + kv %.0f MiB, %s, tokens identical over %d cycles" % (
        weight_bytes / MIB, kv_bytes / MIB, freed_text, CYCLES)


def graph_cycle(torch, memsleep, api, check):
    """A CUDA graph whose memory is memsleep's: released, resumed, replayed."""
    with api.region("graph_inputs", backup=True):
        torch.manual_seed(1)
        a = torch.randn(1024, 1024, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch asks
        (a @ a).relu().sum(dim=0)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with api.cuda_graph(g, "cuda_graph"):
        out = (a @ a).relu().sum(dim=0)
    g.replay()
    torch.cuda.synchronize()
    ref = out.clone()
    s = memsleep.stats("cuda_graph")
    check(s.reserved_bytes > 0, "the graph's memory is memsleep memory (%s)" % (s,))
    api.release()
    check(memsleep.stats("cuda_graph").resident_bytes == 0, "the graph's memory was released")
    api.resume()
    out.zero_()
    g.replay()
    torch.cuda.synchronize()
    check(torch.equal(out, ref), "the graph replays to the same output after resume")
    return "graph ok"


class MemsleepTorchApi:
    """The scenario's calls, through memsleep.torch."""

    def __init__(self, hook_mode):
        import memsleep.torch as mt
        self.mt = mt
        mt.set_hook_mode(hook_mode)

    def region(self, tag, backup):
        return self.mt.region(tag, backup=backup)

    def release(self):
        self.mt.release()

    def resume(self):
        self.mt.resume()

    def cuda_graph(self, graph, tag):
        return self.mt.cuda_graph(graph, tag=tag)


def run(prog, make_api, extra=None):
    """Runs the scenario with the API make_api(hook_mode) returns; extra(
    torch, memsleep, api, check) adds checks of its own. Returns the exit
    code after printing the summary line."""
    args = parse_args(prog)
    torch, transformers, memsleep = setup(args, prog)
    check = Checks()
    parts = []
    try:
        api = make_api(args.hook_mode)
        parts.append(sleep_wake_cycles(torch, transformers, memsleep, api, check))
        if extra is not None:
            parts.append(extra(torch, memsleep, api, check))
        if not args.skip_graph:
            parts.append(graph_cycle(torch, memsleep, api, check))
    except Exception as e:  # report, with the state, rather than a bare traceback
        traceback.print_exc()
        check(False, "%s: %s" % (type(e).__name__, e))
    if check.failures:
        try:
            for t in memsleep.tags():
                print("  tag %-14s asleep=%s %s" % (t, memsleep.is_asleep(t), memsleep.stats(t)))
            print("  mem_get_info: free %d of %d bytes" % torch.cuda.mem_get_info())
        except Exception as e:
            print("  (state unavailable: %s)" % e)
        print("%s: FAIL hook=%s (%d checks failed; first: %s)" % (
            prog, args.hook_mode, len(check.failures), check.failures[0]))
        return 1
    print("%s: PASS hook=%s %s" % (prog, args.hook_mode, "; ".join(parts)))
    return 0


if __name__ == "__main__":
    sys.exit(run("torch_model_sleep", MemsleepTorchApi))
