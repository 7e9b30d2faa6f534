"""Per-slide output locks: ``<out>/<name>/.<name>.lock`` keeps two runs from writing one slide's outputs at once.

Below both the slide predictor (which takes the lock around a slide's writes) and the batch runner
(:mod:`pathseg.inference.batch`, which re-exports these names).

Example:
    >>> from pathseg.inference.locks import SlideLock
    >>> with SlideLock("results/slide1", "slide1"):
    ...     pass  # write results/slide1/* here
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from pathseg.errors import DataError


class SlideBusyError(DataError):
    """Another live run is writing this slide's outputs."""


class SlideLock:
    """``<out>/<name>/.<name>.lock`` held while a run writes a slide's outputs.

    Taken with an exclusive create; holds ``{"pid", "host", "started"}``. A lock whose process is gone
    (same host, no such pid) is stale: it is taken over with a warning. A live one raises
    :class:`SlideBusyError` naming the other run. Released (deleted) on exit, also on an exception.
    """

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.path = Path(folder) / f".{name}.lock"
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner: dict[str, Any]) -> bool:
        if owner.get("host") != socket.gethostname():
            return True  # another machine's run: cannot check, so respect it
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    def acquire(self) -> "SlideLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:  # being written this instant, or garbage: look again
                    time.sleep(0.05)
                    owner = self._owner()
                if owner is not None and self._alive(owner):
                    raise SlideBusyError(
                        f"{self.path.parent}: another pathseg run (pid {owner.get('pid')} on {owner.get('host')}, "
                        f"since {owner.get('started')}) is writing these outputs; wait for it to finish, or use "
                        f"another --out. If that run is gone, delete {self.path}") from None
                warnings.warn(f"{self.path}: taking over a stale lock (pid {owner and owner.get('pid')} is gone)",
                              stacklevel=2)
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise SlideBusyError(f"{self.path}: could not take the lock; another run keeps taking it")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "SlideLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


__all__ = ["SlideBusyError", "SlideLock"]
