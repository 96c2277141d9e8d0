"""Imported first by every benchmark script, before numpy, torch or fastsasrec."""
import os
import sys

_OPENBLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def strip_openblas_env() -> None:
    """Re-exec without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE: some machines set them to work
    around old OpenBLAS builds, and they slow current OpenBLAS down.  OpenBLAS reads them
    when it loads, so this must run before anything imports it."""
    if any(k in os.environ for k in _OPENBLAS_ENV):
        env = {k: v for k, v in os.environ.items() if k not in _OPENBLAS_ENV}
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
