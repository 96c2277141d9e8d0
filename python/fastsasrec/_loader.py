"""Loads the compiled engine, making sure its BLAS (the scipy-openblas32 package) is found."""
from __future__ import annotations

import ctypes
import importlib
import os


def _preload_blas() -> None:
    # The extension's RPATH points at the scipy_openblas32 package next to it in
    # site-packages; loading the library by its full path first makes other layouts
    # (editable installs, virtual environments) work too.
    try:
        import scipy_openblas32
    except ImportError:  # the RPATH may still find it
        return
    lib_dir = scipy_openblas32.get_lib_dir()
    for name in os.listdir(lib_dir):
        if name.startswith("lib" + scipy_openblas32.get_library()) and ".so" in name:
            ctypes.CDLL(os.path.join(lib_dir, name), mode=ctypes.RTLD_GLOBAL)
            return


def _quiet_openmp() -> None:
    # OpenMP threads that busy-wait between parallel regions are fast on an idle machine
    # and disastrous on a shared one (a laptop, a CI runner, a notebook next to other
    # work): a descheduled peer makes every barrier cost a scheduler time slice.  Waiting
    # passively costs little here (a few microseconds per region), so it is the default
    # unless the user chose a policy.  libgomp reads this when it is first loaded.
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "passive"


def load_core():
    _quiet_openmp()
    _preload_blas()
    try:
        return importlib.import_module("fastsasrec._core")
    except ImportError as e:  # pragma: no cover - a broken install
        raise ImportError(
            "fastsasrec's compiled engine (fastsasrec._core) could not be loaded: "
            f"{e}. Reinstall with `pip install .` from the source tree."
        ) from e
