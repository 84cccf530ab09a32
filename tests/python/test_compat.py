#!/usr/bin/env python3
"""memsleep.compat.torch_memory_saver on the host backend: the calls and
arguments an engine written for torch_memory_saver makes, pause/resume
semantics (all tags, one tag, a tag never used), its errors, and the clear
ImportError of the torch-only calls when torch is absent.

  MEMSLEEP_LIB_DIR=<dir of libmemsleep.so.0> test_compat.py [unittest args]
"""
import importlib.util
import inspect
import os
import sys
import unittest
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import memsleep  # noqa: E402
from memsleep.compat import torch_memory_saver as tms_module  # noqa: E402
from memsleep.compat.torch_memory_saver import TorchMemorySaver, torch_memory_saver  # noqa: E402

HAVE_TORCH = importlib.util.find_spec("torch") is not None


class Signatures(unittest.TestCase):
    """An engine calls these with keywords: names and defaults must match
    torch_memory_saver's."""

    def params(self, fn):
        return [(p.name, p.default) for p in inspect.signature(fn).parameters.values()]

    def test_same_arguments_as_torch_memory_saver(self):
        e = inspect.Parameter.empty
        t = torch_memory_saver
        self.assertEqual(self.params(t.region), [("tag", "default"), ("enable_cpu_backup", False)])
        self.assertEqual(self.params(t.pause), [("tag", None)])
        self.assertEqual(self.params(t.resume), [("tag", None)])
        self.assertEqual(self.params(t.cuda_graph), [
            ("cuda_graph", e), ("pool", None), ("stream", None), ("capture_error_mode", "global"),
            ("tag", "default"), ("enable_cpu_backup", False)])
        self.assertEqual(self.params(t.disable), [])
        self.assertTrue(callable(tms_module.configure_subprocess))
        self.assertIsInstance(torch_memory_saver, TorchMemorySaver)


class PauseResume(unittest.TestCase):
    def test_pause_and_resume_everything_keeps_backed_up_contents(self):
        w = memsleep.alloc(1 << 20, tag="compat-w", backup=True)
        kv = memsleep.alloc(1 << 20, tag="compat-kv")
        w.write(b"weights!")
        torch_memory_saver.pause()
        self.assertTrue(memsleep.is_asleep("compat-w") and memsleep.is_asleep("compat-kv"))
        self.assertEqual(memsleep.stats("compat-kv").resident_bytes, 0)
        torch_memory_saver.resume()
        self.assertFalse(memsleep.is_asleep("compat-w") or memsleep.is_asleep("compat-kv"))
        self.assertEqual(w.read(0, 8), b"weights!")
        w.free()
        kv.free()

    def test_pause_of_one_tag_leaves_the_others_awake(self):
        a = memsleep.alloc(4096, tag="compat-a")
        b = memsleep.alloc(4096, tag="compat-b")
        torch_memory_saver.pause("compat-a")
        self.assertTrue(memsleep.is_asleep("compat-a"))
        self.assertFalse(memsleep.is_asleep("compat-b"))
        torch_memory_saver.resume(tag="compat-a")
        self.assertFalse(memsleep.is_asleep("compat-a"))
        a.free()
        b.free()

    def test_a_tag_never_used_is_a_no_op(self):
        torch_memory_saver.pause("cuda_graph-never-captured")
        torch_memory_saver.resume("cuda_graph-never-captured")

    def test_pausing_twice_raises_instead_of_exiting(self):
        a = memsleep.alloc(4096, tag="compat-twice")
        torch_memory_saver.pause("compat-twice")
        with self.assertRaises(memsleep.MemsleepError) as cm:
            torch_memory_saver.pause("compat-twice")
        self.assertEqual(cm.exception.code, memsleep.ESTATE)
        torch_memory_saver.resume("compat-twice")
        with self.assertRaises(memsleep.MemsleepError) as cm:
            torch_memory_saver.resume("compat-twice")
        self.assertEqual(cm.exception.code, memsleep.ESTATE)
        a.free()


class Settings(unittest.TestCase):
    def test_hook_mode_is_checked_and_kept(self):
        t = TorchMemorySaver()
        with self.assertRaises(memsleep.MemsleepError) as cm:
            t.hook_mode = "bogus"
        self.assertEqual(cm.exception.code, memsleep.EINVAL)
        t.hook_mode = "torch"
        self.assertEqual(t.hook_mode, "torch")

    def test_enabled_when_the_library_loads(self):
        self.assertTrue(torch_memory_saver.enabled)

    def test_unsupported_knobs_say_so(self):
        t = TorchMemorySaver()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t.memory_margin_bytes = 1 << 30
        self.assertTrue(any("ignored" in str(x.message) for x in w))
        with self.assertRaises(NotImplementedError):
            t.get_cpu_backup(None)

    def test_retain_cpu_backup_drives_keep_backups(self):
        try:
            before = memsleep.keep_backups()
        except memsleep.MemsleepError as e:
            if e.code == memsleep.EUNAVAIL:
                self.skipTest(str(e))
            raise
        torch_memory_saver.retain_cpu_backup = not before
        self.assertEqual(torch_memory_saver.retain_cpu_backup, not before)
        torch_memory_saver.retain_cpu_backup = before
        self.assertEqual(memsleep.keep_backups(), before)

    @unittest.skipIf(HAVE_TORCH, "torch is installed here")
    def test_torch_calls_without_torch_raise_a_clear_import_error(self):
        with self.assertRaises(ImportError) as cm:
            with torch_memory_saver.region(tag="weights", enable_cpu_backup=True):
                pass
        self.assertIn("PyTorch", str(cm.exception))
        self.assertIsNone(memsleep.current_region())


if __name__ == "__main__":
    unittest.main(verbosity=2)
