"""Build hook of the memsleep Python package (metadata: pyproject.toml).

The package is pure Python; it finds libmemsleep at run time. To ship the
built libraries inside the installed package (memsleep/_lib/), name their
directory at install time:

    MEMSLEEP_BUNDLE_LIB_DIR=<build>/lib pip install --no-build-isolation ./python

libmemsleep.so.0 (symlinks followed) and libmemsleep_preload.so, when
present, are copied into memsleep/_lib/ of the build. Without the variable
nothing is bundled, and MEMSLEEP_LIB_DIR or the system loader finds the
library at run time.
"""
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyBundlingLibs(build_py):
    def run(self):
        super().run()
        src = os.environ.get("MEMSLEEP_BUNDLE_LIB_DIR")
        if not src:
            return
        core = None
        for name in ("libmemsleep.so.0", "libmemsleep.so"):
            if os.path.exists(os.path.join(src, name)):
                core = os.path.join(src, name)
                break
        if core is None:
            raise SystemExit("MEMSLEEP_BUNDLE_LIB_DIR=%s holds no libmemsleep.so.0: build the "
                             "CMake target memsleep first" % src)
        dst = os.path.join(self.build_lib, "memsleep", "_lib")
        os.makedirs(dst, exist_ok=True)
        # Always named by the soname: the interposer's DT_NEEDED entry, found
        # through its $ORIGIN rpath.
        shutil.copyfile(os.path.realpath(core), os.path.join(dst, "libmemsleep.so.0"))
        preload = os.path.join(src, "libmemsleep_preload.so")
        if os.path.exists(preload):
            shutil.copyfile(os.path.realpath(preload), os.path.join(dst, "libmemsleep_preload.so"))
        else:
            print("memsleep: %s has no libmemsleep_preload.so; bundling the core only "
                  "(memsleep.torch will need MEMSLEEP_LIB_DIR)" % src)


setup(cmdclass={"build_py": BuildPyBundlingLibs})
