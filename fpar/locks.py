"""One writer per folder: a lock file with the owner's pid, host and a heartbeat.

`FolderLock` creates ``FOLDER/.fpar.lock`` atomically (``O_EXCL``) and refreshes its heartbeat every
``HEARTBEAT_S`` seconds from a background thread. A second writer is refused with a one-line error that names the
owner. A lock is stale, and taken over with a warning in the log, when its owner is a dead process on this host or
when its heartbeat is older than ``grace`` seconds (``FPAR_LOCK_GRACE``, default 60): the heartbeat works across
machines sharing a file system, where a pid cannot be checked. Each heartbeat also checks that the lock is still
ours; a writer that lost its lock stops at its next `check` instead of writing over the new owner.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from .errors import FparError
from .utils import pid_alive

logger = logging.getLogger(__name__)

LOCK_NAME = ".fpar.lock"
HEARTBEAT_S = 5.0


def default_grace() -> float:
    try:
        return float(os.environ.get("FPAR_LOCK_GRACE", "60"))
    except ValueError:
        return 60.0


def read_lock(path: Path) -> dict | None:
    """The lock's content, or None when there is none, or it is not a lock fpar wrote (then `is_stale` ages it by
    the file's modification time)."""
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    if not isinstance(info, dict):
        return None
    try:
        info["pid"], info["heartbeat"] = int(info.get("pid", -1)), float(info.get("heartbeat", 0))
    except (TypeError, ValueError):
        return None
    return info


def is_stale(info: dict, grace: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname() and not pid_alive(info["pid"]):
        return True  # its process is gone: no need to wait for the heartbeat to age
    return now - info["heartbeat"] > grace


def _ident(info: dict) -> tuple:
    return info.get("pid"), info.get("host"), info.get("heartbeat"), info.get("token")


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


class FolderLock:
    """``with FolderLock(folder, what="training"):`` holds the folder for this process.

    Raises:
        FparError: another live process holds the folder.
    """

    def __init__(self, folder: str | os.PathLike, *, what: str = "a run", grace: float | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.what = what
        self.grace = default_grace() if grace is None else grace
        self.token = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _content(self) -> str:
        return json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(), "what": self.what,
             "token": self.token}
        )  # fmt: skip

    def _create(self) -> bool:
        """Put a complete lock file in place atomically (written beside, then hard-linked: a kill never leaves an
        empty lock). False when one exists."""
        tmp = self.path.with_name(f"{LOCK_NAME}.{self.token.replace(':', '-')}.new")
        try:
            tmp.write_text(self._content())
        except OSError as e:
            raise FparError(
                f"cannot write in {self.folder} ({e.strerror}); fix its permissions, free some space or use another "
                "folder"
            ) from None
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def acquire(self) -> FolderLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._create():
                break
            info = read_lock(self.path)
            if info is None:
                if _age(self.path) <= self.grace:
                    time.sleep(0.05)  # being replaced right now
                    continue
                info = {"pid": "?", "host": "?", "heartbeat": 0.0}  # not a lock fpar wrote, and old: stale
            elif not is_stale(info, self.grace):
                age = time.time() - float(info.get("heartbeat", 0))
                raise FparError(
                    f"{self.folder} is being written by pid {info.get('pid')} on {info.get('host')} "
                    f"({info.get('what', 'fpar')}, heartbeat {age:.0f} s ago); wait for it to finish, stop it, or "
                    "use another folder"
                )
            logger.warning(
                "%s: taking over the stale lock of pid %s on %s (heartbeat %.0f s ago)",
                self.folder,
                info.get("pid"),
                info.get("host"),
                time.time() - float(info.get("heartbeat", 0)),
            )
            aside = self.path.with_name(f"{LOCK_NAME}.stale-{self.token.replace(':', '-')}")
            try:
                os.replace(self.path, aside)  # move it aside under a name only we use, then look at what we moved
            except FileNotFoundError:
                continue
            moved = read_lock(aside)
            if moved is not None and _ident(moved) != _ident(info):
                try:  # another process took the stale lock over a moment ago: give its fresh lock back
                    os.link(aside, self.path)
                except FileExistsError:
                    pass
            aside.unlink(missing_ok=True)
        else:
            if read_lock(self.path) is None:  # still unreadable: not a lock being replaced a moment ago
                raise FparError(
                    f"{self.path} is not a lock fpar can read (damaged, or not fpar's); if no fpar process writes "
                    f"{self.folder}, delete it (it is taken over once {self.grace:.0f} s old, FPAR_LOCK_GRACE)"
                )
            raise FparError(f"could not take the lock {self.path}; another process is starting there too")
        self._thread = threading.Thread(target=self._beat, name="fpar-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            info = read_lock(self.path)
            if info is None or info.get("token") != self.token:
                self.lost = True
                return
            tmp = self.path.with_name(f"{LOCK_NAME}.{os.getpid()}.beat")
            try:
                tmp.write_text(self._content())
                os.replace(tmp, self.path)
            except OSError as e:  # a full or read-only disk: the next beat tries again
                logger.warning("%s: heartbeat not written (%s)", self.path, e)

    def check(self) -> None:
        """Raise when another process has taken the folder over (call before each write of consequence)."""
        if self.lost:
            raise FparError(
                f"{self.folder} was taken over by another process (its lock is no longer ours); this one stops "
                "without writing"
            )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S + 1)
        info = read_lock(self.path)
        if info is not None and info.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
