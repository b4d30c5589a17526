"""Atomic file output: every file the package writes appears whole at exactly its path, or not at all.

A temporary file is written beside the target (same folder, so the final ``os.replace`` is a
rename on one file system) and renamed over the target only when writing finished; on any error
or interrupt (``KeyboardInterrupt`` included) the temporary file is removed, and nothing is
renamed into place once Ctrl-C was pressed (:func:`bayes_simfluence.interrupts.check`), even
where the interrupt was swallowed on its way.

A symbolic link at the path is written *through*: the file it points to is replaced and the link
kept (a dangling link gets its target created; a looping one is refused). The new file gets the
permissions of the file it replaces, or those the user's umask gives a new file (not the 0600 of
a temporary file). Errors name the user's path, never the temporary file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

from bayes_simfluence import interrupts
from bayes_simfluence.validation import InputError, write_target


def _umask() -> int:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    current = os.umask(0o022)  # the portable way reads it by setting it
    os.umask(current)
    return current


def new_file_mode(target: Path) -> int:
    """Permissions for the file written at ``target``: those of the file it replaces, else the umask's."""
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _reason(error: OSError) -> str:
    return error.strerror or type(error).__name__


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes ``path`` when the block ends without error."""
    path = Path(path)
    target = write_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    except OSError as error:
        raise InputError(f"{path}: cannot be written ({_reason(error)})") from error
    os.close(handle)
    try:
        try:
            yield Path(temporary)
            interrupts.check()
            os.chmod(temporary, new_file_mode(target))
            os.replace(temporary, target)
            interrupts.written(path)
        except OSError as error:
            raise InputError(f"{path}: could not be written ({_reason(error)})") from error
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def savez(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez`` to exactly ``path`` (numpy would append ``.npz`` to other names), atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, **arrays)
