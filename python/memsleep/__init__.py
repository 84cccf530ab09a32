"""memsleep - put memory to sleep and wake it again, from Python.

A thin ctypes layer over libmemsleep (include/memsleep/memsleep.h): tagged
allocations whose physical memory can be released while their addresses
stay reserved, and mapped back on resume (with their contents, for those
allocated with a backup). Host memory works everywhere; CUDA memory where
libmemsleep has its CUDA backend and a GPU. `memsleep.torch` puts PyTorch
tensors in memsleep memory; `memsleep.compat.torch_memory_saver` offers the
torch_memory_saver API on top of it. docs/python.md is the guide.

    import memsleep
    with memsleep.region("weights", backup=True):
        buf = memsleep.alloc(1 << 20)          # tag and policy of the region
    buf.write(b"hello")
    memsleep.release("weights")                # physical memory goes
    memsleep.resume("weights")                 # same address, same bytes
    assert buf.read(0, 5) == b"hello"

Every failure raises MemsleepError with the library's code and message.
"""
import collections
import contextlib
import ctypes
import os

from . import _lib
from ._lib import (EBACKEND, EINVAL, ENOMEM, ENOTFOUND, ESTATE, EUNAVAIL, LibraryNotFoundError,
                   MemsleepError)

__version__ = "0.1.0"
__all__ = [
    "HOST", "BACKUP", "ZERO", "RELEASE_NO_BACKUP", "TAG_MAX", "EINVAL", "ENOMEM", "ESTATE",
    "ENOTFOUND", "EBACKEND", "EUNAVAIL", "MemsleepError", "LibraryNotFoundError", "Stats",
    "Region", "Allocation", "region", "current_region", "alloc", "free", "release", "resume",
    "is_asleep", "stats", "measure", "tags", "owns", "keep_backups", "core_library_path",
    "preload_library_path", "subprocess_env", "configure_subprocess",
]

HOST = -1
BACKUP = 0x1
ZERO = 0x2
RELEASE_NO_BACKUP = 0x1
TAG_MAX = _lib.TAG_MAX

Stats = collections.namedtuple("Stats",
                               "allocations reserved_bytes resident_bytes backup_bytes")
Stats.__doc__ = ("Figures of a tag (or of all tags): live allocations, virtual bytes held, "
                 "physical bytes mapped now, host bytes holding backups now.")

Region = collections.namedtuple("Region", "tag backup zero")
Region.__doc__ = "The innermost region of the calling thread."


def _flags(backup, zero):
    return (BACKUP if backup else 0) | (ZERO if zero else 0)


def _tags_of(tags):
    # release("a", "b") and release(["a", "b"]) both name two tags.
    if len(tags) == 1 and isinstance(tags[0], (list, tuple, set, frozenset)):
        return tuple(tags[0])
    return tags


@contextlib.contextmanager
def region(tag, backup=False, zero=False):
    """Opens a region on the calling thread: allocations that name no tag
    (memsleep.alloc without tag=, and every cudaMalloc through the
    interposer) go to `tag` with the region's policy. backup=True: contents
    survive release/resume; zero=True (without backup): they read as zeros
    after resume. Regions nest and are per thread. For PyTorch tensors use
    memsleep.torch.region, which also routes the caching allocator."""
    lib = _lib.get()
    lib.call("memsleep_region_push", _lib.encode_tag(tag), _flags(backup, zero))
    try:
        yield
    finally:
        lib.call("memsleep_region_pop")


def current_region():
    """The calling thread's innermost region as Region(tag, backup, zero),
    or None when no region is open."""
    buf = ctypes.create_string_buffer(TAG_MAX + 1)
    flags = ctypes.c_uint(0)
    if _lib.get().call("memsleep_region_current", buf, ctypes.byref(flags)) == 0:
        return None
    return Region(buf.value.decode("utf-8"), bool(flags.value & BACKUP),
                  bool(flags.value & ZERO))


class Allocation:
    """A block from memsleep.alloc: `ptr` (int address, fixed for its whole
    life), `size`, `tag`, `device`, `backup`, `zero`. Free it with free()
    or by using it as a context manager; it is not freed by the garbage
    collector, since raw pointers to it may live elsewhere."""

    def __init__(self, ptr, size, tag, device, flags):
        self.ptr = ptr
        self.size = size
        self.tag = tag
        self.device = device
        self.backup = bool(flags & BACKUP)
        self.zero = bool(flags & ZERO)
        self._freed = False

    def __repr__(self):
        return "memsleep.Allocation(ptr=0x%x, size=%d, tag=%r, device=%d%s%s%s)" % (
            self.ptr, self.size, self.tag, self.device, ", backup" if self.backup else "",
            ", zero" if self.zero else "", ", freed" if self._freed else "")

    def free(self):
        if not self._freed:
            _lib.get().call("memsleep_free", ctypes.c_void_p(self.ptr))
            self._freed = True

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.free()

    def _host_bytes(self, offset, length, verb):
        if self._freed:
            raise MemsleepError(EINVAL, "%s: allocation 0x%x was freed" % (verb, self.ptr))
        if self.device != HOST:
            raise MemsleepError(EINVAL, "%s: allocation 0x%x is on device %d; only host memory "
                                "can be read from Python" % (verb, self.ptr, self.device))
        if is_asleep(self.tag):
            # Touching released host memory is a SIGSEGV: refuse instead.
            raise MemsleepError(ESTATE, "%s: tag \"%s\" is asleep; resume it first"
                                % (verb, self.tag))
        if length is None:
            length = self.size - offset
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MemsleepError(EINVAL, "%s: bytes [%d, %d) are outside the %d-byte allocation"
                                % (verb, offset, offset + length, self.size))
        return (ctypes.c_char * length).from_address(self.ptr + offset)

    def read(self, offset=0, length=None):
        """Copies bytes of a host allocation out (awake tags only)."""
        return bytes(self._host_bytes(offset, length, "read"))

    def write(self, data, offset=0):
        """Copies data into a host allocation at offset (awake tags only)."""
        data = bytes(data)
        ctypes.memmove(self._host_bytes(offset, len(data), "write"), data, len(data))

    def view(self):
        """A writable memoryview of a host allocation. It is only valid
        while the tag is awake: touching it after a release crashes the
        process (SIGSEGV), as for any released memsleep memory."""
        return memoryview(self._host_bytes(0, None, "view")).cast("B")


def alloc(size, tag=None, device=HOST, backup=None, zero=None):
    """Allocates size bytes on device (HOST or a CUDA ordinal) and returns
    an Allocation. tag=None takes the tag and policy of the calling
    thread's innermost region; backup/zero, when given, set the policy."""
    if tag is None:
        r = current_region()
        if r is None:
            raise MemsleepError(EINVAL, "alloc(%d bytes): no tag given and no region is open on "
                                "this thread" % size)
        tag = r.tag
        backup = r.backup if backup is None else backup
        zero = r.zero if zero is None else zero
    flags = _flags(backup, zero)
    ptr = ctypes.c_void_p()
    _lib.get().call("memsleep_alloc", ctypes.byref(ptr), size, device, _lib.encode_tag(tag), flags)
    return Allocation(ptr.value, size, tag, device, flags)


def free(allocation):
    """Frees an Allocation, or an address memsleep returned (an int)."""
    if isinstance(allocation, Allocation):
        allocation.free()
    else:
        _lib.get().call("memsleep_free", ctypes.c_void_p(allocation))


def release(*tags, discard_backup=False):
    """Releases the physical memory of the given tags (none: every awake
    tag). Backed-up contents are saved first, unless discard_backup=True
    (contents of every allocation are then undefined after resume: for
    weights that will be reloaded anyway). All-or-nothing."""
    arr, n = _lib.tag_array(_tags_of(tags))
    _lib.get().call("memsleep_release_flags", arr, n, RELEASE_NO_BACKUP if discard_backup else 0)


def resume(*tags):
    """Maps memory back for the given tags (none: every asleep tag), at the
    same addresses, restoring the backups. All-or-nothing."""
    arr, n = _lib.tag_array(_tags_of(tags))
    _lib.get().call("memsleep_resume", arr, n)


def is_asleep(tag):
    """True if tag is asleep, False if awake; MemsleepError (ENOTFOUND) if
    the tag was never used."""
    return _lib.get().call("memsleep_is_asleep", _lib.encode_tag(tag)) == 1


def _stats(fn, tag):
    out = _lib.Stats()
    _lib.get().call(fn, None if tag is None else _lib.encode_tag(tag), ctypes.byref(out))
    return Stats(out.allocations, out.reserved_bytes, out.resident_bytes, out.backup_bytes)


def stats(tag=None):
    """Stats of tag (None: the sum over all tags), from the bookkeeping."""
    return _stats("memsleep_stats", tag)


def measure(tag=None):
    """Like stats(), but resident_bytes measured from the backend (costs a
    walk over the tag's allocations: for checks and reports)."""
    return _stats("memsleep_measure", tag)


def tags():
    """Every tag the library knows, in the order they were first used."""
    lib = _lib.get()
    cap = 64
    while True:
        buf = ctypes.create_string_buffer(cap * (TAG_MAX + 1))
        n = lib.call("memsleep_tags", buf, cap)
        if n <= cap:
            raw = buf.raw
            return [raw[i * (TAG_MAX + 1):(i + 1) * (TAG_MAX + 1)].split(b"\0", 1)[0]
                    .decode("utf-8") for i in range(n)]
        cap = n


def owns(ptr):
    """True if ptr is an address memsleep allocated and has not freed."""
    return _lib.get().call("memsleep_owns", ctypes.c_void_p(ptr)) == 1


def keep_backups(keep=None):
    """Whether host backups of device memory are kept after a resume for
    the next release to reuse (pinned memory is slow to allocate). keep:
    True/False sets it, None only asks. Returns the setting before."""
    return _lib.get().call("memsleep_keep_backups", -1 if keep is None else int(bool(keep))) == 1


def core_library_path():
    """Path of the libmemsleep this process uses (the interposer's path
    when the core was reached through it)."""
    return _lib.get().path


def preload_library_path():
    """Path of libmemsleep_preload.so (the cudaMalloc interposer) matching
    the loaded core; LibraryNotFoundError when there is none beside it."""
    lib = _lib.get()
    if lib.preload_path is None:
        raise LibraryNotFoundError("%s not found beside %s: build the CMake target "
                                   "memsleep_preload" % (_lib.PRELOAD_NAME, lib.core_path))
    return lib.preload_path


def subprocess_env(env=None, default_region=None):
    """A copy of env (default: os.environ) for a child process that should
    run with the cudaMalloc interposer: LD_PRELOAD starts with
    libmemsleep_preload.so and MEMSLEEP_LIB_DIR names its directory.
    default_region ("tag" or "tag:backup") puts the whole child in a
    region from its start (MEMSLEEP_DEFAULT_REGION)."""
    env = dict(os.environ if env is None else env)
    path = preload_library_path()
    parts = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p]
    if path not in parts:
        parts.insert(0, path)
    env["LD_PRELOAD"] = ":".join(parts)
    env["MEMSLEEP_LIB_DIR"] = os.path.dirname(path)
    if default_region is not None:
        env["MEMSLEEP_DEFAULT_REGION"] = default_region
    return env


@contextlib.contextmanager
def configure_subprocess(default_region=None):
    """Within the block, os.environ carries subprocess_env()'s variables,
    so that children started there (multiprocessing, subprocess) load the
    interposer; the old values come back after."""
    new = subprocess_env(default_region=default_region)
    keys = ("LD_PRELOAD", "MEMSLEEP_LIB_DIR", "MEMSLEEP_DEFAULT_REGION")
    old = {k: os.environ.get(k) for k in keys}
    try:
        for k in keys:
            if k in new:
                os.environ[k] = new[k]
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
