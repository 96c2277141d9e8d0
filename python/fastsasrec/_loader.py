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


# libgomp's spin before a waiting thread sleeps, unless the user chose a policy.  Between
# two parallel regions of a training step the engine's serial gap is microseconds, so a
# short spin catches the next region without a futex wake-up (about 40 us on a virtual
# machine), while a thread that finds no work soon sleeps and leaves its core to other
# processes.  Measured (BENCHMARKS.md, "OpenMP waiting"): passive waiting costs about 9%
# of training throughput on a quiet machine; libgomp's own default (300,000 spins, about
# 3 ms) is 7x slower with other work busy on both cores; 1,000 spins is within a few
# percent of passive waiting there and as fast as spinning on a quiet machine.
SPIN_COUNT = "1000"
# How the engine's OpenMP threads wait, as show_config() prints it (set by load_core).
openmp_wait = "not loaded"


def _libgomp_loaded() -> bool:
    """Whether the system's libgomp (the engine's OpenMP: libgomp.so.1, the file
    libgomp.so.1.x.y) is already in this process, loaded by another extension: its
    settings are then fixed.  (Wheels that bundle their own copy under another name,
    libgomp-<hash>.so.1 as PyTorch's, do not count.)"""
    try:
        with open("/proc/self/maps") as f:
            return any(os.path.basename(line.split()[-1]).startswith("libgomp.so")
                       for line in f if "/" in line)
    except OSError:  # not Linux: nothing to tell
        return False


def _import_with_short_spin(name: str):
    # libgomp reads its environment once, when it is first loaded (here, with the engine).
    # The variable is set for that load only and then removed, so that OpenMP runtimes of
    # other names loaded later do not read it.  A library that loads libgomp.so.1 after us
    # shares this copy, and its setting (PyTorch's wheels carry a libgomp.so.1 of their
    # own, which the loader does not load twice).
    global openmp_wait
    mine = [f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ]
    chosen = bool(mine)
    if not chosen:
        os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    openmp_wait = (", ".join(mine) + " (yours)" if chosen else
                   "libgomp's own (another library loaded it first; set OMP_WAIT_POLICY or "
                   "GOMP_SPINCOUNT before any import to choose)" if _libgomp_loaded() else
                   f"spin {SPIN_COUNT} then sleep (fastsasrec's default; OMP_WAIT_POLICY or "
                   "GOMP_SPINCOUNT chooses)")
    try:
        return importlib.import_module(name)
    finally:
        if not chosen:
            os.environ.pop("GOMP_SPINCOUNT", None)


def load_core():
    _preload_blas()
    try:
        return _import_with_short_spin("fastsasrec._core")
    except ImportError as e:  # pragma: no cover - a broken install
        raise ImportError(
            "fastsasrec's compiled engine (fastsasrec._core) could not be loaded: "
            f"{e}. Reinstall with `pip install .` from the source tree."
        ) from e
