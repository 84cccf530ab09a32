#!/usr/bin/env python3
"""`pip install ./python` works offline and the installed package finds the
libraries it bundled: a virtual environment (with the system's site
packages, where Debian's setuptools and wheel live) gets the package with
`pip install --no-build-isolation --no-index`, MEMSLEEP_BUNDLE_LIB_DIR
naming the build's library directory; then, from another directory and
without MEMSLEEP_LIB_DIR, the installed package loads libmemsleep from its
own _lib/ and a backed-up allocation survives a release/resume.

  MEMSLEEP_LIB_DIR=<dir of libmemsleep.so.0> test_install.py

Exits 77 (skipped) when venv, pip, setuptools or wheel are missing.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

SOURCE = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                      "python"))
LIB_DIR = os.environ.get("MEMSLEEP_LIB_DIR", "")
TMP = None


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kwargs)


def make_venv(name):
    venv = os.path.join(TMP, name)
    p = run([sys.executable, "-m", "venv", "--system-site-packages", venv])
    if p.returncode != 0:
        raise AssertionError("python -m venv failed: %s" % p.stderr)
    return venv


def pip_install(venv, bundle_dir):
    env = dict(os.environ)
    env.pop("MEMSLEEP_LIB_DIR", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if bundle_dir is not None:
        env["MEMSLEEP_BUNDLE_LIB_DIR"] = bundle_dir
    src = os.path.join(TMP, "src-" + os.path.basename(venv))
    # A copy: pip builds in the source tree, which must stay clean.
    shutil.copytree(SOURCE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "_lib",
                                                               "__pycache__"))
    return run([os.path.join(venv, "bin", "pip"), "install", "--no-build-isolation", "--no-index",
                "--no-deps", src], env=env, cwd=TMP)


class Install(unittest.TestCase):
    def test_installed_package_uses_its_bundled_library(self):
        venv = make_venv("bundled")
        p = pip_install(venv, LIB_DIR)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        env = {k: v for k, v in os.environ.items()
               if k not in ("MEMSLEEP_LIB_DIR", "PYTHONPATH", "LD_LIBRARY_PATH")}
        code = """
import os, memsleep
a = memsleep.alloc(1 << 20, tag="installed", backup=True)
a.write(b"survives")
memsleep.release("installed")
memsleep.resume("installed")
assert a.read(0, 8) == b"survives"
print(memsleep.core_library_path())
print(os.path.exists(os.path.join(os.path.dirname(memsleep.core_library_path()),
                                  "libmemsleep_preload.so")))
"""
        q = run([os.path.join(venv, "bin", "python"), "-c", code], env=env, cwd=TMP)
        self.assertEqual(q.returncode, 0, q.stdout + q.stderr)
        path, has_preload = q.stdout.split()
        self.assertTrue(path.startswith(venv) and path.endswith("memsleep/_lib/libmemsleep.so.0"),
                        "loaded %s, not the bundled copy" % path)
        built_preload = os.path.exists(os.path.join(LIB_DIR, "libmemsleep_preload.so"))
        self.assertEqual(has_preload, str(built_preload))

    def test_bundling_from_a_directory_without_the_library_fails_clearly(self):
        venv = make_venv("bad-bundle")
        missing = os.path.join(TMP, "no-such-build")
        p = pip_install(venv, missing)
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("MEMSLEEP_BUNDLE_LIB_DIR=" + missing, p.stdout + p.stderr)


def prerequisites():
    """What this machine lacks to run the test, or None."""
    if not LIB_DIR or not os.path.exists(os.path.join(LIB_DIR, "libmemsleep.so.0")):
        return "MEMSLEEP_LIB_DIR does not hold libmemsleep.so.0"
    for mod in ("venv", "ensurepip", "pip", "setuptools", "wheel"):
        if importlib.util.find_spec(mod) is None:
            return "python module %s is missing (Debian: python3-venv, python3-pip, " \
                   "python3-setuptools, python3-wheel)" % mod
    return None


if __name__ == "__main__":
    why = prerequisites()
    if why:
        print("test_install: skipped: " + why)
        sys.exit(77)
    TMP = tempfile.mkdtemp(prefix="memsleep-pip-")
    try:
        unittest.main(verbosity=2)
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
