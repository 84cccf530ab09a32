"""Finds and loads libmemsleep (and locates libmemsleep_preload.so) for the
memsleep package, and declares the C functions' signatures for ctypes.

One process must hold ONE instance of the memory core: the interposer
(libmemsleep_preload.so, DT_NEEDED on libmemsleep.so.0) and this package
have to see the same registry of allocations and the same thread-local
regions. So the search looks at what is already mapped first:

  1. libmemsleep_preload.so already in the process (LD_PRELOAD): load that
     very file and reach the memsleep_* functions through it (its
     dependency, the core it uses);
  2. a libmemsleep.so* already in the process: load that file again;
  3. $MEMSLEEP_LIB_DIR (a directory holding libmemsleep.so.0 or
     libmemsleep.so, and libmemsleep_preload.so for torch);
  4. memsleep/_lib/ inside the installed package (filled at install time,
     see setup.py);
  5. the system loader (libmemsleep.so.0 on the default search path).

Loading is lazy: importing memsleep never fails for want of the library;
the first call that needs it raises LibraryNotFoundError (a MemsleepError
and an ImportError) naming everything that was searched.
"""
import ctypes
import os
import threading

CORE_SONAME = "libmemsleep.so.0"
CORE_NAMES = (CORE_SONAME, "libmemsleep.so")
PRELOAD_NAME = "libmemsleep_preload.so"
TAG_MAX = 63
PACKAGE_LIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_lib")

EINVAL, ENOMEM, ESTATE, ENOTFOUND, EBACKEND, EUNAVAIL = -1, -2, -3, -4, -5, -6
ERROR_NAMES = {
    EINVAL: "EINVAL",
    ENOMEM: "ENOMEM",
    ESTATE: "ESTATE",
    ENOTFOUND: "ENOTFOUND",
    EBACKEND: "EBACKEND",
    EUNAVAIL: "EUNAVAIL",
}


class MemsleepError(Exception):
    """A libmemsleep call failed. `code` is the negative MEMSLEEP_E* value,
    `name` its symbol ("ESTATE", ...), `message` the library's detail (what
    failed and the value that made it fail)."""

    def __init__(self, code, message):
        super().__init__(code, message)
        self.code = code
        self.name = ERROR_NAMES.get(code, "E?")
        self.message = message

    def __str__(self):
        return "%s (memsleep %s, %d)" % (self.message, self.name, self.code)


class LibraryNotFoundError(MemsleepError, ImportError):
    """libmemsleep could not be found or loaded (code EUNAVAIL)."""

    def __init__(self, message):
        super().__init__(EUNAVAIL, message)


class Stats(ctypes.Structure):
    _fields_ = [
        ("allocations", ctypes.c_size_t),
        ("reserved_bytes", ctypes.c_size_t),
        ("resident_bytes", ctypes.c_size_t),
        ("backup_bytes", ctypes.c_size_t),
    ]


_TAGS = ctypes.POINTER(ctypes.c_char_p)

# name: (restype, argtypes, required)
_SIGNATURES = {
    "memsleep_alloc": (ctypes.c_int, [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                                      ctypes.c_int, ctypes.c_char_p, ctypes.c_uint], True),
    "memsleep_free": (ctypes.c_int, [ctypes.c_void_p], True),
    "memsleep_release": (ctypes.c_int, [_TAGS, ctypes.c_size_t], True),
    "memsleep_release_flags": (ctypes.c_int, [_TAGS, ctypes.c_size_t, ctypes.c_uint], True),
    "memsleep_resume": (ctypes.c_int, [_TAGS, ctypes.c_size_t], True),
    "memsleep_is_asleep": (ctypes.c_int, [ctypes.c_char_p], True),
    "memsleep_stats": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(Stats)], True),
    "memsleep_measure": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(Stats)], True),
    "memsleep_region_push": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_uint], True),
    "memsleep_region_pop": (ctypes.c_int, [], True),
    "memsleep_region_current": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint)],
                                True),
    "memsleep_tags": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t], True),
    "memsleep_strerror": (ctypes.c_char_p, [ctypes.c_int], True),
    "memsleep_last_error": (ctypes.c_char_p, [], True),
    # Newer than the first release: looked up, and reported as EUNAVAIL
    # when called on a library that lacks them.
    "memsleep_owns": (ctypes.c_int, [ctypes.c_void_p], False),
    "memsleep_keep_backups": (ctypes.c_int, [ctypes.c_int], False),
}


class Library:
    """The loaded core: `fn` maps names to ctypes functions; `path` is the
    file loaded (the preload library when the core was reached through
    it); `core_path` the libmemsleep file; `preload_path` the interposer
    beside it, or None when there is none; `how` says where it was found;
    `preloaded` whether the interposer was in the process already."""

    def __init__(self, cdll, path, core_path, preload_path, how, preloaded=False):
        self.cdll = cdll
        self.preloaded = preloaded
        self.path = path
        self.core_path = core_path
        self.preload_path = preload_path
        self.how = how
        self.fn = {}
        for name, (restype, argtypes, required) in _SIGNATURES.items():
            try:
                f = getattr(cdll, name)
            except AttributeError:
                if required:
                    raise LibraryNotFoundError(
                        "%s does not export %s: it is not a libmemsleep this package can use"
                        % (path, name))
                continue
            f.restype = restype
            f.argtypes = argtypes
            self.fn[name] = f

    def call(self, name, *args):
        """Calls name(*args); raises MemsleepError on a negative result and
        returns the result otherwise."""
        f = self.fn.get(name)
        if f is None:
            raise MemsleepError(EUNAVAIL, "%s: not exported by %s (the library is older than this "
                                "package)" % (name, self.core_path))
        rc = f(*args)
        if rc < 0:
            raise self.error(rc)
        return rc

    def error(self, rc):
        detail = self.fn["memsleep_last_error"]()
        text = detail.decode("utf-8", "replace") if detail else ""
        if not text:
            s = self.fn["memsleep_strerror"](rc)
            text = s.decode("utf-8", "replace") if s else "error %d" % rc
        return MemsleepError(rc, text)


def mapped_libraries():
    """Paths of the shared objects mapped into this process (from
    /proc/self/maps), in order of first appearance."""
    seen = []
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    p = parts[5].strip()
                    if p.startswith("/") and not p.endswith("(deleted)") and p not in seen:
                        seen.append(p)
    except OSError:
        pass
    return seen


def _is_core(path):
    return os.path.basename(path).startswith("libmemsleep.so")


def _is_preload(path):
    return os.path.basename(path).startswith(PRELOAD_NAME)


def _core_in(directory):
    for name in CORE_NAMES:
        p = os.path.join(directory, name)
        if os.path.exists(p):
            return p
    return None


def _preload_beside(core_path):
    p = os.path.join(os.path.dirname(core_path), PRELOAD_NAME)
    return p if os.path.exists(p) else None


def _open(path):
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        raise LibraryNotFoundError("cannot load %s: %s" % (path, e))


def find_and_load():
    """Runs the search described at the top of this file and returns a
    Library, or raises LibraryNotFoundError."""
    mapped = mapped_libraries()
    preloaded = [p for p in mapped if _is_preload(p)]
    if preloaded:
        pre = preloaded[0]
        core = next((p for p in mapped if _is_core(p)), None)
        return Library(_open(pre), pre, core or pre, pre, "already in the process (LD_PRELOAD)",
                       preloaded=True)
    cores = [p for p in mapped if _is_core(p)]
    if cores:
        return Library(_open(cores[0]), cores[0], cores[0], _preload_beside(cores[0]),
                       "already in the process")

    searched = []
    env_dir = os.environ.get("MEMSLEEP_LIB_DIR")
    if env_dir:
        core = _core_in(env_dir)
        if core is None:
            raise LibraryNotFoundError(
                "MEMSLEEP_LIB_DIR=%s holds no %s: point it at the directory of the built "
                "library (for a CMake build, <build>/lib)" % (env_dir, " or ".join(CORE_NAMES)))
        return Library(_open(core), core, core, _preload_beside(core), "MEMSLEEP_LIB_DIR")
    searched.append("MEMSLEEP_LIB_DIR (not set)")

    core = _core_in(PACKAGE_LIB_DIR)
    if core is not None:
        return Library(_open(core), core, core, _preload_beside(core), "the package's _lib/")
    searched.append("%s (no %s)" % (PACKAGE_LIB_DIR, CORE_SONAME))

    try:
        cdll = ctypes.CDLL(CORE_SONAME)
    except OSError as e:
        searched.append("the system loader (%s)" % e)
        raise LibraryNotFoundError(
            "libmemsleep not found; searched: %s. Build it (cmake) and set MEMSLEEP_LIB_DIR to "
            "the directory holding %s, or install the package with MEMSLEEP_BUNDLE_LIB_DIR set "
            "(see docs/python.md)" % ("; ".join(searched), CORE_SONAME))
    path = next((p for p in mapped_libraries() if _is_core(p)), CORE_SONAME)
    return Library(cdll, path, path, _preload_beside(path) if path.startswith("/") else None,
                   "the system loader")


_lock = threading.Lock()
_library = None


def get():
    """The process's Library, loaded on first use."""
    global _library
    if _library is None:
        with _lock:
            if _library is None:
                _library = find_and_load()
    return _library


def encode_tag(tag):
    if not isinstance(tag, str):
        raise TypeError("memsleep: a tag is a str, not %s (%r)" % (type(tag).__name__, tag))
    return tag.encode("utf-8")


def tag_array(tags):
    """(array, count) for the C calls that take a list of tags; count 0
    (and a NULL array) means "every tag"."""
    if not tags:
        return None, 0
    return (ctypes.c_char_p * len(tags))(*[encode_tag(t) for t in tags]), len(tags)
