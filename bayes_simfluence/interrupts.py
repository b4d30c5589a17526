"""Ctrl-C, handled once at the CLI boundary (:func:`bayes_simfluence.cli.main`).

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives.
Inside JAX/XLA that can be a garbage-collection callback or a ``__del__``, where the exception
is printed as "Exception ignored" and *swallowed*: the command then ran on and wrote its output.
So the handler installed by :func:`handling` also records the request, and

- :func:`check` raises ``KeyboardInterrupt`` again wherever it is called: the atomic writer
  (:mod:`bayes_simfluence.atomic`) calls it before it renames a finished file into place, so no
  output appears after an interrupt, and the CLI calls it after the command returns;
- the handler does not raise inside a garbage-collection callback or a ``__del__`` (it would
  only print "Exception ignored"), and until the CLI acknowledges the interrupt a watchdog thread
  re-sends SIGINT every :data:`RESEND_SECONDS`, so the interrupt is raised at the next point where
  it propagates instead of letting a long fit run to its end.

The CLI then exits with 130, through ``os._exit`` after flushing its streams when run as a
command: tearing the interpreter down while XLA's threads are mid-computation crashed (rc -11).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

#: seconds between re-sent SIGINTs while an interrupt has not reached the CLI boundary.
RESEND_SECONDS = 0.5

_requested = threading.Event()
_acknowledged = threading.Event()


def requested() -> bool:
    """Whether SIGINT arrived since :func:`handling` began."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived (also when it was swallowed on its way)."""
    if _requested.is_set():
        raise KeyboardInterrupt


def acknowledge() -> None:
    """The interrupt reached the CLI boundary: stop re-sending it."""
    _acknowledged.set()


def _resend() -> None:
    while not _acknowledged.wait(RESEND_SECONDS):
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except OSError:  # pragma: no cover - the process is going away
            return


def _swallowing(frame: Any) -> bool:
    """Whether an exception raised at ``frame`` would be printed and dropped ("Exception ignored in"):
    inside a garbage-collection callback (JAX registers one) or a ``__del__``."""
    callbacks = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _handler(signum: int, frame: Any) -> None:
    first = not _requested.is_set()
    _requested.set()
    if first:
        threading.Thread(target=_resend, name="bayes-simfluence-interrupt", daemon=True).start()
    if not _swallowing(frame):  # else the watchdog sends it again, to land at a point that raises
        raise KeyboardInterrupt


@contextmanager
def handling() -> Iterator[None]:
    """Install the SIGINT handler for the duration of one command (main thread only; elsewhere
    a no-op), with a fresh state; the previous handler is restored afterwards."""
    _requested.clear()
    _acknowledged.clear()
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            _requested.clear()
        return
    previous = signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        _acknowledged.set()  # stops the watchdog, if any
        signal.signal(signal.SIGINT, previous)
        _requested.clear()  # the command is over: later writes of this process are not interrupted
