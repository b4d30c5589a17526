"""Ctrl-C, handled once at the CLI boundary (:func:`bayes_simfluence.cli.main`).

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be when SIGINT arrives.
Inside JAX/XLA that can be a garbage-collection callback or a ``__del__``, where the exception
is printed as "Exception ignored" and *swallowed*: the command then ran on and wrote its output.
So the handler installed by :func:`handling` also records the request, and

- :func:`check` raises ``KeyboardInterrupt`` again wherever it is called: the atomic writer
  (:mod:`bayes_simfluence.atomic`) calls it before it renames a finished file into place, so no
  output appears after an interrupt, and the CLI calls it after the command returns;
- the handler does not raise inside a garbage-collection callback or a ``__del__`` (it would
  only print "Exception ignored"), and an interrupt raised where Python swallows it anyway (a
  weakref callback, ...) reaches ``sys.unraisablehook``, which drops it silently; either way a
  watchdog thread then re-sends SIGINT every :data:`RESEND_SECONDS` until it is raised where it
  propagates, so a long fit stops instead of running to its end. Once raised it is not sent again
  (that could break the clean-up it runs through, e.g. of collection workers).

The CLI then exits with 130, through ``os._exit`` after flushing its streams when run as a
command: tearing the interpreter down while XLA's threads are mid-computation crashed (rc -11).
Once the command has returned (:func:`finish`), its outputs are complete: a later SIGINT is only
noted (:func:`late`), and the command's own process blocks it during the interpreter's teardown.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

#: seconds between re-sent SIGINTs while an interrupt has not reached the CLI boundary.
RESEND_SECONDS = 0.5

_requested = threading.Event()
_raised = threading.Event()
_acknowledged = threading.Event()
_finished = threading.Event()
_late = threading.Event()
_importing = threading.Event()
_written: list[str] = []
#: what the command's process prints when SIGINT lands while it imports its commands
IMPORT_MESSAGE = b"bayes-simfluence: interrupted; nothing was written\n"


def requested() -> bool:
    """Whether SIGINT arrived since :func:`handling` began."""
    return _requested.is_set()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if SIGINT arrived (also when it was swallowed on its way)."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextmanager
def exiting_at_once() -> Iterator[None]:
    """While the command's process imports its modules (nothing is written yet), a SIGINT ends it
    at once with exit code 130 (``os._exit``): a ``KeyboardInterrupt`` raised inside the import of a
    native extension (JAX's) aborted the process (rc -6) on its way out."""
    _importing.set()
    try:
        yield
    finally:
        _importing.clear()


def finish() -> None:
    """The command returned: its outputs are complete, and a SIGINT from now on is late."""
    _finished.set()


def late() -> bool:
    """Whether SIGINT arrived after :func:`finish` (and was ignored)."""
    return _late.is_set()


def written(path: Any) -> None:
    """Record a file the command finished writing (the atomic writer calls this after its rename)."""
    _written.append(str(path))


def written_files() -> list[str]:
    """The files this command finished writing, in order."""
    return list(_written)


def acknowledge() -> None:
    """The interrupt reached the CLI boundary: stop re-sending it."""
    _acknowledged.set()


def _resend() -> None:
    """Until the CLI acknowledges the interrupt: send SIGINT again whenever it is not propagating
    (not raised yet, or swallowed since)."""
    while not _acknowledged.wait(RESEND_SECONDS):
        if _raised.is_set():
            continue
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except OSError:  # pragma: no cover - the process is going away
            return


_watchdog: list[threading.Thread] = []


def _send_again() -> None:
    """Start the watchdog that re-sends SIGINT, unless it runs already."""
    if not (_watchdog and _watchdog[-1].is_alive()):
        _watchdog[:] = [threading.Thread(target=_resend, name="bayes-simfluence-interrupt", daemon=True)]
        _watchdog[0].start()


def _unraisable(hook_args: Any) -> None:
    """``sys.unraisablehook``: a KeyboardInterrupt that Python swallowed is dropped quietly and sent
    again; anything else goes to the previous hook."""
    if hook_args.exc_type is not None and issubclass(hook_args.exc_type, KeyboardInterrupt) and _requested.is_set():
        _raised.clear()
        _send_again()
        return
    _previous_hook[0](hook_args)


_previous_hook: list[Any] = [sys.unraisablehook]


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
    if _importing.is_set():
        os.write(2, IMPORT_MESSAGE)
        os._exit(130)
    if _finished.is_set():
        _late.set()
        return
    _requested.set()
    if not _swallowing(frame):
        _raised.set()
        raise KeyboardInterrupt
    _send_again()  # until it lands where it can be raised


def _reset() -> None:
    for event in (_requested, _raised, _acknowledged, _finished, _late, _importing):
        event.clear()
    _written.clear()


@contextmanager
def handling(keep: bool = False) -> Iterator[None]:
    """Install the SIGINT handler for the duration of one command (main thread only; elsewhere
    a no-op), with a fresh state. Afterwards the previous handler is restored and the state
    cleared, so later writes of the same process are not interrupted; with ``keep`` (a process
    that ends with the command) the handler stays, ignoring late signals, and SIGINT is blocked
    for the interpreter's teardown."""
    _reset()
    if threading.current_thread() is not threading.main_thread():
        try:
            yield
        finally:
            _reset()
        return
    previous = signal.signal(signal.SIGINT, _handler)
    _previous_hook[0] = sys.unraisablehook
    sys.unraisablehook = _unraisable
    try:
        yield
    finally:
        _acknowledged.set()  # stops the watchdog, if any
        if keep:
            _finished.set()
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        else:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = _previous_hook[0]
            _reset()
