"""The torch_memory_saver API on top of memsleep, so that an engine written
for torch_memory_saver switches by changing one import:

    from memsleep.compat.torch_memory_saver import torch_memory_saver

    with torch_memory_saver.region(tag="weights", enable_cpu_backup=True):
        model = model.cuda()
    torch_memory_saver.pause()            # every tag
    torch_memory_saver.resume()

Same calls and arguments: region(tag=, enable_cpu_backup=), pause(tag=None),
resume(tag=None), cuda_graph(cuda_graph, pool=, stream=, capture_error_mode=,
tag=, enable_cpu_backup=), disable(), hook_mode, enabled, retain_cpu_backup,
memory_margin_bytes, get_cpu_backup, configure_subprocess(). Differences
(docs/python.md lists them too):

- pause/resume of a tag that is already paused/awake raises MemsleepError
  (ESTATE) instead of ending the process; a tag never used is a no-op, as
  in torch_memory_saver.
- hook_mode defaults to "preload" when libmemsleep_preload.so is in
  LD_PRELOAD and to "torch" otherwise (torch_memory_saver: always
  "preload"); the getter returns the mode instead of raising.
- memory_margin_bytes is accepted and ignored: a resume that finds too
  little free memory fails whole (ENOMEM) and can be retried.
- get_cpu_backup() is not available: memsleep keeps backups inside the
  library. It raises NotImplementedError.
- register_hook_mode() and custom hook modes are not offered.

Importing this module does not need PyTorch; region, cuda_graph and disable
do (pause and resume work on any memsleep tag without it).
"""
import contextlib
import warnings

import memsleep
from memsleep import MemsleepError, _lib

_TAG_DEFAULT = "default"
_HOOK_MODES = ("preload", "torch")


def _torch_layer():
    try:
        import memsleep.torch as mt
    except ImportError as e:
        raise ImportError("memsleep.compat.torch_memory_saver: this call needs PyTorch (%s)" % e) \
            from e
    return mt


def _torch_layer_if_available():
    try:
        return _torch_layer()
    except ImportError:
        return None


def _known(tag):
    try:
        memsleep.is_asleep(tag)
        return True
    except MemsleepError as e:
        if e.code == memsleep.ENOTFOUND:
            return False
        raise


class TorchMemorySaver:
    """torch_memory_saver's facade. Every instance drives the same
    process-wide memsleep state, as torch_memory_saver's do."""

    def __init__(self):
        self._hook_mode = None
        self._initialized = False
        self._memory_margin_bytes = 0

    def _init(self):
        mt = _torch_layer()
        if not self._initialized:
            if self._hook_mode is not None:
                mt.set_hook_mode(self._hook_mode)
            self._initialized = True
        return mt

    @contextlib.contextmanager
    def region(self, tag=_TAG_DEFAULT, enable_cpu_backup=False):
        """Tensors allocated inside go to memsleep memory under tag; with
        enable_cpu_backup their contents survive pause/resume."""
        mt = self._init()
        with mt.region(tag, backup=enable_cpu_backup):
            yield

    @contextlib.contextmanager
    def cuda_graph(self, cuda_graph, pool=None, stream=None, capture_error_mode="global",
                   tag=_TAG_DEFAULT, enable_cpu_backup=False):
        """torch.cuda.graph(...) whose memory pauses with tag."""
        mt = self._init()
        with mt.cuda_graph(cuda_graph, tag=tag, backup=enable_cpu_backup, pool=pool,
                           stream=stream, capture_error_mode=capture_error_mode):
            yield

    @contextlib.contextmanager
    def disable(self):
        """Inside a region: allocate ordinary (never paused) memory."""
        mt = self._init()
        with mt.disable():
            yield

    def pause(self, tag=None):
        """Releases tag's memory (None: every tag that is awake)."""
        if tag is not None and not _known(tag):
            return
        mt = _torch_layer_if_available()
        if mt is not None:
            mt.release(*([] if tag is None else [tag]))
        else:
            memsleep.release(*([] if tag is None else [tag]))

    def resume(self, tag=None):
        """Maps tag's memory back (None: every tag that is paused)."""
        if tag is not None and not _known(tag):
            return
        memsleep.resume(*([] if tag is None else [tag]))

    @property
    def enabled(self):
        try:
            _lib.get()
            return True
        except MemsleepError:
            return False

    @property
    def hook_mode(self):
        if self._initialized:
            return _torch_layer().hook_mode()
        return self._hook_mode

    @hook_mode.setter
    def hook_mode(self, mode):
        if mode not in _HOOK_MODES:
            raise MemsleepError(memsleep.EINVAL, "hook_mode %r: expected one of %s"
                                % (mode, ", ".join(_HOOK_MODES)))
        if self._initialized:
            raise MemsleepError(memsleep.ESTATE, "hook_mode must be set before the first region")
        self._hook_mode = mode

    @property
    def memory_margin_bytes(self):
        return self._memory_margin_bytes

    @memory_margin_bytes.setter
    def memory_margin_bytes(self, value):
        warnings.warn("memsleep: memory_margin_bytes is ignored (a resume without room fails "
                      "whole with ENOMEM and can be retried)", stacklevel=2)
        self._memory_margin_bytes = int(value)

    @property
    def retain_cpu_backup(self):
        return memsleep.keep_backups()

    @retain_cpu_backup.setter
    def retain_cpu_backup(self, value):
        memsleep.keep_backups(bool(value))

    def get_cpu_backup(self, x):
        raise NotImplementedError("memsleep keeps CPU backups inside libmemsleep and does not "
                                  "expose them; copy the tensor to the CPU before pause() instead")


torch_memory_saver = TorchMemorySaver()


def configure_subprocess():
    """Context manager: processes started inside it run with the cudaMalloc
    interposer preloaded (needed for hook_mode "preload" there)."""
    return memsleep.configure_subprocess()
