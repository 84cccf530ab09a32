#!/usr/bin/env python3
"""How the memsleep package finds libmemsleep: the errors when it cannot,
that importing it needs neither the library nor torch, and that a process
ends up with ONE memory core even when the interposer or another copy of
the library is already loaded. Each case runs in a child interpreter,
since the library is loaded once per process.

  MEMSLEEP_LIB_DIR=<dir of libmemsleep.so.0> test_library.py [unittest args]
"""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

PYTHON_DIR = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                          "python"))
LIB_DIR = os.environ.get("MEMSLEEP_LIB_DIR", "")


def child(code, env_changes=None, unset=()):
    """Runs code in a fresh interpreter that imports the package from this
    tree; returns (exit code, stdout, stderr)."""
    env = dict(os.environ)
    for k in unset:
        env.pop(k, None)
    env.update(env_changes or {})
    env["PYTHONPATH"] = PYTHON_DIR
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=60)
    return p.returncode, p.stdout, p.stderr


def core_file():
    for name in ("libmemsleep.so.0", "libmemsleep.so"):
        if os.path.exists(os.path.join(LIB_DIR, name)):
            return os.path.join(LIB_DIR, name)
    raise unittest.SkipTest("MEMSLEEP_LIB_DIR does not name a built libmemsleep")


class Lookup(unittest.TestCase):
    def test_import_needs_neither_the_library_nor_torch(self):
        empty = tempfile.mkdtemp()
        try:
            rc, out, err = child("""
                import sys
                import memsleep, memsleep.compat.torch_memory_saver
                print("torch" in sys.modules)
            """, {"MEMSLEEP_LIB_DIR": empty})
        finally:
            os.rmdir(empty)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), "False")

    def test_an_empty_lib_dir_is_a_clear_error(self):
        empty = tempfile.mkdtemp()
        try:
            rc, out, err = child("""
                import memsleep
                try:
                    memsleep.stats()
                except ImportError as e:
                    assert isinstance(e, memsleep.MemsleepError) and e.code == memsleep.EUNAVAIL
                    print(e)
            """, {"MEMSLEEP_LIB_DIR": empty})
        finally:
            os.rmdir(empty)
        self.assertEqual(rc, 0, err)
        self.assertIn("MEMSLEEP_LIB_DIR=" + empty, out)
        self.assertIn("libmemsleep.so.0", out)

    def test_nothing_found_lists_every_place_searched(self):
        rc, out, err = child("""
            import ctypes
            try:
                ctypes.CDLL("libmemsleep.so.0")
                print("INSTALLED")
            except OSError:
                import memsleep
                try:
                    memsleep.stats()
                except memsleep.LibraryNotFoundError as e:
                    print(e)
        """, unset=("MEMSLEEP_LIB_DIR", "LD_LIBRARY_PATH", "LD_PRELOAD"))
        self.assertEqual(rc, 0, err)
        if out.strip() == "INSTALLED":
            self.skipTest("libmemsleep.so.0 is installed on this machine's loader path")
        self.assertIn("MEMSLEEP_LIB_DIR (not set)", out)
        self.assertIn(os.path.join("memsleep", "_lib"), out)
        self.assertIn("system loader", out)

    def test_lib_dir_is_used(self):
        rc, out, err = child("import memsleep; print(memsleep.core_library_path())",
                             {"MEMSLEEP_LIB_DIR": LIB_DIR})
        self.assertEqual(rc, 0, err)
        self.assertEqual(os.path.realpath(out.strip()), os.path.realpath(core_file()))


class OneCore(unittest.TestCase):
    def test_an_already_loaded_core_wins_over_the_search(self):
        core = core_file()
        other = tempfile.mkdtemp()
        try:
            shutil.copy(os.path.realpath(core), os.path.join(other, "libmemsleep.so.0"))
            rc, out, err = child("""
                import ctypes
                first = ctypes.CDLL(%r)
                import memsleep
                a = memsleep.alloc(4096, tag="shared-tag")
                print(memsleep.core_library_path())
                # The handle loaded first sees the tag made through the package.
                first.memsleep_is_asleep.argtypes = [ctypes.c_char_p]
                print(first.memsleep_is_asleep(b"shared-tag"))
            """ % core, {"MEMSLEEP_LIB_DIR": other})
        finally:
            shutil.rmtree(other)
        self.assertEqual(rc, 0, err)
        path, asleep = out.split()
        self.assertEqual(os.path.realpath(path), os.path.realpath(core))
        self.assertEqual(asleep, "0", "the package used a second memory core")

    def test_a_preloaded_interposer_brings_the_core_the_package_uses(self):
        core = core_file()
        preload = os.path.join(LIB_DIR, "libmemsleep_preload.so")
        if not os.path.exists(preload):
            self.skipTest("libmemsleep_preload.so is not built in MEMSLEEP_LIB_DIR")
        rc, out, err = child("""
            import memsleep
            env = memsleep.subprocess_env({"LD_PRELOAD": "libfoo.so"})
            print(env["LD_PRELOAD"])
        """, {"MEMSLEEP_LIB_DIR": LIB_DIR})
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), preload + ":libfoo.so")

        rc, out, err = child("""
            import ctypes
            import memsleep
            a = memsleep.alloc(4096, tag="via-package")
            print(memsleep.core_library_path())
            print(memsleep._lib.get().preloaded)
            mapped = {p for p in memsleep._lib.mapped_libraries()
                      if p.rsplit("/", 1)[-1].startswith("libmemsleep.so")}
            print(len(mapped))
            core = ctypes.CDLL(%r)
            core.memsleep_is_asleep.argtypes = [ctypes.c_char_p]
            print(core.memsleep_is_asleep(b"via-package"))
        """ % core, {"LD_PRELOAD": preload, "MEMSLEEP_LIB_DIR": LIB_DIR})
        self.assertEqual(rc, 0, err)
        path, preloaded, ncores, asleep = out.split()
        self.assertEqual(path, preload)
        self.assertEqual(preloaded, "True")
        self.assertEqual(ncores, "1", "more than one libmemsleep mapped")
        self.assertEqual(asleep, "0", "the package and the interposer use different cores")


if __name__ == "__main__":
    unittest.main(verbosity=2)
