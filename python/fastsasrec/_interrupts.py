"""Ctrl-C during a fit (``_training``): an epoch is kept whole or not at all."""
from __future__ import annotations

import contextlib
import signal
import threading
import warnings
from typing import Any, Optional


class CtrlC:
    """Ctrl-C during a fit: inside an epoch it stops the epoch at once (the engine puts the
    epoch back); anywhere else (an epoch's validation, record and checkpoint, between the
    phases) it waits for the next epoch's start, so that every epoch is kept whole and a
    resume continues exactly.  A second Ctrl-C does not wait.  Installed by ``ctrl_c``
    for a fit in the main thread while Python's own handler is in place."""

    active: "Optional[CtrlC]" = None  # the fit's, while one runs

    def __init__(self) -> None:
        self.in_epoch = False
        self.pending = False

    def handler(self, signum: int, frame: Any) -> None:
        if self.in_epoch or self.pending:
            self.pending = False
            raise KeyboardInterrupt
        self.pending = True

    def check(self) -> None:
        """Raises the Ctrl-C that waited, if one did."""
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt


@contextlib.contextmanager
def ctrl_c():
    if (CtrlC.active is not None or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # a fit inside a fit's callback, another thread, or a handler of the caller's
        return
    guard = CtrlC.active = CtrlC()
    signal.signal(signal.SIGINT, guard.handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        CtrlC.active = None
    if guard.pending:
        warnings.warn("Ctrl-C came as the fit ended: the fit is complete", stacklevel=4)
