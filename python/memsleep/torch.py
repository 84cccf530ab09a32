"""memsleep.torch - PyTorch tensors in memsleep memory.

    import memsleep.torch as mt
    with mt.region("weights", backup=True):
        model = model.to("cuda")               # weights land in memsleep memory
    with mt.region("kv_cache"):
        kv = torch.empty(..., device="cuda")
    mt.release()                                # every tag: the GPU memory goes
    mt.resume()                                 # same addresses; weights restored

Two hook modes route the caching allocator's memory to memsleep:

  "torch"   (default when the interposer is not preloaded) each region's
            tensors come from a torch MemPool whose allocator is
            libmemsleep_preload.so's memsleep_torch_malloc/free, through
            torch.cuda.memory.CUDAPluggableAllocator. No LD_PRELOAD needed.
  "preload" (default when libmemsleep_preload.so is in LD_PRELOAD) each
            region's tensors come from a torch MemPool with the default
            allocator; its cudaMalloc calls, made inside the C region, are
            taken by the interposer.

Either way there is one MemPool per (tag, policy, device), so the caching
allocator never hands a block of one tag to a tensor of another, or a block
of memsleep memory to a tensor made outside any region. Regions nest and
are per thread; the innermost one decides (torch itself would route to the
outermost pool, so the outer pools are paused while an inner region is
open). Needs torch >= 2.5 (MemPool); tested with 2.8.

Tensors allocated in a region keep working after release + resume: their
addresses never change. Touching them while their tag is asleep is an
illegal-address error on the GPU.
"""
import contextlib
import os
import threading
import weakref

import memsleep
from memsleep import MemsleepError, _lib

try:
    import torch
except ImportError as e:  # pragma: no cover - depends on the machine
    raise ImportError("memsleep.torch needs PyTorch (pip install torch); the rest of memsleep "
                      "works without it: %s" % e) from e

HOOK_MODES = ("torch", "preload")
MALLOC_FN = "memsleep_torch_malloc"
FREE_FN = "memsleep_torch_free"

_lock = threading.Lock()
_hook_mode = None     # fixed at the first region or capture
_allocator = None     # the CUDAPluggableAllocator (torch mode)
_pools = {}           # (tag, flags, device) -> MemPool
_devices = set()      # devices that have memsleep pools: synchronized before a release
_graph_pools_strong = []  # pools of graph objects that cannot be weakly referenced
_tls = threading.local()

# torch's caching allocator asserts that no pool routing is active anywhere
# (use_mem_pool, graph capture) when it empties a cache, and destroying a
# MemPool empties its cache. So every routing start/stop holds _routes_lock
# and is counted; pools that are no longer needed wait in _retired until no
# routing is active, and empty_cache() waits for the same.
_routes_lock = threading.RLock()  # a finalizer may retire a pool inside
_active_routes = 0
_retired = []


def _mempool_api():
    mp = getattr(torch.cuda, "MemPool", None) or getattr(torch.cuda.memory, "MemPool", None)
    use = getattr(torch.cuda, "use_mem_pool", None) or getattr(torch.cuda.memory, "use_mem_pool",
                                                               None)
    if mp is None or use is None:
        raise MemsleepError(memsleep.EUNAVAIL, "memsleep.torch needs torch.cuda.MemPool and "
                            "torch.cuda.use_mem_pool (torch >= 2.5); this is torch %s"
                            % torch.__version__)
    return mp, use


def check_allocator_config():
    """Raises MemsleepError when the caching allocator is configured in a
    way memsleep cannot work with: expandable segments (torch maps its own
    physical memory, bypassing cudaMalloc and the pool allocator) or the
    cudaMallocAsync backend (no MemPool support)."""
    for var in ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"):
        conf = os.environ.get(var, "")
        for item in conf.split(","):
            key, _, value = item.partition(":")
            key, value = key.strip(), value.strip()
            if key == "expandable_segments" and value.lower() == "true":
                raise MemsleepError(memsleep.EUNAVAIL, (
                    "%s=%s: memsleep.torch does not work with expandable_segments:True (the "
                    "caching allocator then maps physical memory itself, so neither the "
                    "interposer nor a MemPool allocator sees it); remove it or set "
                    "expandable_segments:False before torch starts") % (var, conf))
            if key == "backend" and value == "cudaMallocAsync":
                raise MemsleepError(memsleep.EUNAVAIL, (
                    "%s=%s: memsleep.torch needs the native caching allocator (MemPool), not "
                    "backend:cudaMallocAsync") % (var, conf))


def preloaded():
    """True when libmemsleep_preload.so was in this process (LD_PRELOAD)
    before memsleep loaded its core."""
    return _lib.get().preloaded


def set_hook_mode(mode):
    """Chooses "torch" or "preload" (see the module's doc). Only before the
    first region or capture; "preload" needs the interposer preloaded."""
    global _hook_mode
    if mode not in HOOK_MODES:
        raise MemsleepError(memsleep.EINVAL, "hook mode %r: expected one of %s"
                            % (mode, ", ".join(HOOK_MODES)))
    with _lock:
        if _hook_mode is not None and _hook_mode != mode:
            raise MemsleepError(memsleep.ESTATE, "hook mode is already %r (fixed at the first "
                                "region); set it before any region" % _hook_mode)
        if mode == "preload" and not preloaded():
            raise MemsleepError(memsleep.EUNAVAIL, (
                "hook mode 'preload' needs %s in LD_PRELOAD of this process (found: %s); start "
                "the process with memsleep.subprocess_env(), or use hook mode 'torch'")
                % (_lib.PRELOAD_NAME, _lib.get().path))
        _hook_mode = mode


def hook_mode():
    """The hook mode in force (choosing the default on first call)."""
    global _hook_mode
    with _lock:
        if _hook_mode is None:
            _hook_mode = "preload" if preloaded() else "torch"
        return _hook_mode


def _pluggable_allocator():
    global _allocator
    with _lock:
        if _allocator is None:
            path = memsleep.preload_library_path()
            try:
                _allocator = torch.cuda.memory.CUDAPluggableAllocator(path, MALLOC_FN, FREE_FN)
            except (AttributeError, RuntimeError, OSError) as e:
                raise MemsleepError(memsleep.EUNAVAIL, "CUDAPluggableAllocator(%s, %s, %s): %s"
                                    % (path, MALLOC_FN, FREE_FN, e)) from e
        return _allocator


def _new_pool(device):
    """A fresh MemPool on device whose memory comes from memsleep."""
    MemPool, _ = _mempool_api()
    with torch.cuda.device(device):
        if hook_mode() == "torch":
            return MemPool(allocator=_pluggable_allocator().allocator())
        return MemPool()


def _device_index(device):
    if device is None:
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    d = torch.device(device)
    if d.type != "cuda":
        raise MemsleepError(memsleep.EINVAL, "device %r: memsleep.torch regions are for CUDA "
                            "devices (host memory: memsleep.alloc)" % (device,))
    return torch.cuda.current_device() if d.index is None else d.index


def mem_pool(tag, backup=False, zero=False, device=None):
    """The MemPool of (tag, policy, device), made on first use."""
    dev = _device_index(device)
    key = (tag, memsleep._flags(backup, zero), dev)
    with _lock:
        p = _pools.get(key)
    if p is None:
        p = _new_pool(dev)
        with _lock:
            p = _pools.setdefault(key, p)
            _devices.add(dev)
    return p


# Routing: a per-thread stack of frames; only the top frame's pool is
# active (torch.cuda.use_mem_pool entered). Opening a frame pauses the
# routing of the one below, closing it resumes it.
class _Frame:
    def __init__(self, mem_pool, device):
        self.pool = mem_pool
        self.device = device
        self.cm = None

    def start(self):
        global _active_routes
        if self.pool is not None:
            _, use_mem_pool = _mempool_api()
            with _routes_lock:
                cm = use_mem_pool(self.pool, device=self.device)
                cm.__enter__()
                self.cm = cm
                _active_routes += 1

    def stop(self):
        global _active_routes
        if self.cm is not None:
            with _routes_lock:
                cm, self.cm = self.cm, None
                try:
                    cm.__exit__(None, None, None)
                finally:
                    _active_routes -= 1
                    if _active_routes == 0:
                        _retired.clear()


def _retire(mem_pool):
    """Lets mem_pool be destroyed at the next moment no pool routing is
    active (the end of the last route, or empty_cache)."""
    with _routes_lock:
        _retired.append(mem_pool)


@contextlib.contextmanager
def _route(mem_pool, device):
    stack = getattr(_tls, "stack", None)
    if stack is None:
        stack = _tls.stack = []
    frame = _Frame(mem_pool, device)
    if stack:
        stack[-1].stop()
    try:
        frame.start()
    except BaseException:
        if stack:
            stack[-1].start()
        raise
    stack.append(frame)
    try:
        yield
    finally:
        stack.pop()
        try:
            frame.stop()
        finally:
            if stack:
                stack[-1].start()


def _refuse_if_asleep(tag, verb):
    try:
        asleep = memsleep.is_asleep(tag)
    except MemsleepError as e:
        if e.code != memsleep.ENOTFOUND:
            raise
        asleep = False
    if asleep:
        raise MemsleepError(memsleep.ESTATE, "%s(%r): the tag is asleep; resume it before "
                            "allocating into it" % (verb, tag))


@contextlib.contextmanager
def region(tag, backup=False, zero=False, device=None):
    """Tensors allocated on this thread inside the block, on device (default:
    the current CUDA device), go to memsleep memory under tag with the given
    policy (backup=True: contents survive release/resume; zero=True: read
    as zeros after resume). Nestable; the innermost region decides."""
    check_allocator_config()
    _refuse_if_asleep(tag, "region")
    dev = _device_index(device)
    with memsleep.region(tag, backup=backup, zero=zero):  # checks tag and policy first
        with _route(mem_pool(tag, backup, zero, dev), dev):
            yield


@contextlib.contextmanager
def cuda_graph(graph, tag="cuda_graph", backup=False, zero=False, pool=None, stream=None,
               capture_error_mode="global", device=None):
    """torch.cuda.graph(graph, ...) whose memory (the graph's private pool:
    intermediate and output tensors) is memsleep memory under tag, so that
    a release frees it and a resume maps it back at the same addresses the
    graph was captured with. pool: share the pool of another graph captured
    this way (other_graph.pool()); in hook mode "torch" a pool not made by
    memsleep would not be sleepable."""
    check_allocator_config()
    _refuse_if_asleep(tag, "cuda_graph")
    dev = _device_index(device)
    own_pool = None
    if pool is None and hook_mode() == "torch":
        own_pool = _new_pool(dev)
        with _lock:
            _devices.add(dev)
        pool = own_pool.id
    with _route(None, dev):
        with torch.cuda.device(dev):
            with torch.cuda.graph(graph, pool=pool, stream=stream,
                                  capture_error_mode=capture_error_mode):
                with memsleep.region(tag, backup=backup, zero=zero):
                    yield
    if own_pool is not None:
        # The pool must live as long as the graph: its segments hold the
        # graph's tensors. Then it is retired, not destroyed on the spot.
        try:
            weakref.finalize(graph, _retire, own_pool)
        except TypeError:
            _graph_pools_strong.append((graph, own_pool))


@contextlib.contextmanager
def disable():
    """Inside a region, allocate normally for a while: the thread's regions
    are set aside (C regions and pool routing) and tensors come from a
    fresh MemPool of ordinary memory, so they are never released. Regions
    come back on exit."""
    MemPool, _ = _mempool_api()
    lib = _lib.get()
    saved = []
    while True:
        r = memsleep.current_region()
        if r is None:
            break
        saved.append(r)
        lib.call("memsleep_region_pop")
    plain = None
    try:
        with torch.cuda.device(torch.cuda.current_device()):
            plain = MemPool()
        with _route(plain, torch.cuda.current_device()):
            yield
    finally:
        for r in reversed(saved):
            lib.call("memsleep_region_push", _lib.encode_tag(r.tag), memsleep._flags(r.backup,
                                                                                       r.zero))
        if plain is not None:
            # Destroyed once no routing is active: the enclosing region's
            # is active again now.
            _retire(plain)


def synchronize():
    """Waits for the work queued on every device that has memsleep pools
    (and the current one), so nothing still reads memory about to go."""
    if not torch.cuda.is_initialized():
        return
    with _lock:
        devices = set(_devices)
    devices.add(torch.cuda.current_device())
    for d in sorted(devices):
        torch.cuda.synchronize(d)


def empty_cache():
    """Hands the caching allocator's idle blocks back to the driver. Torch
    cannot do that while a pool routing is active (a region open on any
    thread): then nothing is done and False is returned."""
    if not torch.cuda.is_initialized():
        return True
    with _routes_lock:
        if _active_routes > 0:
            return False
        _retired.clear()
        torch.cuda.empty_cache()
        return True


def release(*tags, discard_backup=False):
    """Synchronizes, releases the tags (none: every awake tag; see
    memsleep.release) and empties torch's cache, so the idle memory of the
    ordinary pool goes back to the driver too (not while a region is open
    on some thread: see empty_cache)."""
    synchronize()
    memsleep.release(*tags, discard_backup=discard_backup)
    empty_cache()


def resume(*tags):
    """Maps the tags back (none: every asleep tag); tensors work again."""
    memsleep.resume(*tags)


def configure_subprocess(default_region=None):
    """Context manager: children started inside it run with the interposer
    preloaded (memsleep.configure_subprocess)."""
    return memsleep.configure_subprocess(default_region=default_region)


def subprocess_env(env=None, default_region=None):
    """Environment for a child process with the interposer preloaded."""
    return memsleep.subprocess_env(env, default_region=default_region)
