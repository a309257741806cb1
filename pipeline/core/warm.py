"""The warm process: where it lives, how a command is handed to it, and how to start, stop and ask it.

A process that trains spends 9-11 s importing torch, timm, Lightning, torchmetrics and MLflow before
it does anything (docs/known-limits.md). Like the Gradle daemon or the Bazel server, ume keeps one
process per user and installation that has imported them once (``pipeline.launcher.server``); each
``ume`` command (``pipeline.launcher.entry``) hands it its arguments, working directory, environment
and its three standard file descriptors over a Unix socket, and the warm process forks a child that
runs the command exactly as a cold process would. The child's exit status (or the signal that
killed it) comes back and becomes the command's own.

This module is the part both sides share, standard library only, so that ``ume`` itself starts in
milliseconds: the socket's path, the fingerprint of the code it was started from, the framing of
messages, and the control calls behind ``ume warm start|stop|status``.

``UME_WARM=0`` turns the warm process off (every command runs cold); ``UME_WARM_IDLE`` is the idle
time after which it exits (seconds, default 600); ``UME_WARM_DIR`` is where its socket lives.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WARM_ENV = "UME_WARM"
IDLE_ENV = "UME_WARM_IDLE"
DIR_ENV = "UME_WARM_DIR"
DEFAULT_IDLE_SECONDS = 600.0
# Source trees whose change makes a running warm process stale (a new fingerprint, a new socket).
SOURCE_PACKAGES = ("pipeline", "edits", "behaviors")
_HEADER = struct.Struct("!Q")
_MAX_FDS = 3

# Set in a child of the warm process: the parent pid of the ``ume`` command it runs for (the shell or
# ``dvc`` that started it), which is what ``os.getppid()`` returns in a cold process.
_logical_parent_pid: int | None = None


def enabled() -> bool:
    """Whether commands may use (and start) the warm process: ``UME_WARM`` is not ``0``, and the platform has what it needs."""
    return os.environ.get(WARM_ENV, "1") != "0" and hasattr(os, "pidfd_open") and hasattr(socket, "send_fds")


def idle_seconds() -> float:
    """``UME_WARM_IDLE`` (seconds without a command after which the warm process exits), default 600."""
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_SECONDS)))
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def logical_parent_pid() -> int:
    """The pid ``os.getppid()`` would give a cold ``ume`` process (in a warm child: the client's parent)."""
    return _logical_parent_pid if _logical_parent_pid is not None else os.getppid()


def set_logical_parent_pid(pid: int) -> None:
    """Record, in a warm child, the parent pid of the ``ume`` command it runs for."""
    global _logical_parent_pid
    _logical_parent_pid = pid


def runtime_dir() -> Path:
    """The private (mode 0700) directory of this user's warm sockets; refused when another user owns it."""
    base = os.environ.get(DIR_ENV) or os.path.join(os.environ.get("XDG_RUNTIME_DIR") or "/tmp", f"ume-warm-{os.getuid()}")
    path = Path(base)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path}: the warm process's directory must belong to you with mode 0700")
    return path


def fingerprint() -> str:
    """A hash of this interpreter, ume's source files (path, size, mtime) and the installed packages' directory.

    The interpreter by its real path and prefix: ``.venv/bin/python`` and the ``ume`` script's ``python3.11`` are one.
    """
    digest = hashlib.sha256(f"{os.path.realpath(sys.executable)}:{sys.prefix}".encode())
    root = Path(__file__).resolve().parents[2]
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            info = path.stat()
            digest.update(f"{path}:{info.st_size}:{info.st_mtime_ns}".encode())
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            digest.update(f"{entry}:{os.stat(entry).st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def socket_path() -> Path:
    """The socket of the warm process for this code (its log and lock lie beside it)."""
    return runtime_dir() / f"{fingerprint()}.sock"


def send_message(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    """Send ``message`` as length-prefixed JSON, with ``fds`` (file descriptors) attached to its first bytes."""
    body = json.dumps(message).encode()
    data = _HEADER.pack(len(body)) + body
    sent = socket.send_fds(sock, [data], fds) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def recv_message(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The next message and the file descriptors attached to it; ``(None, [])`` when the peer closed first."""
    data, fds, _flags, _addr = socket.recv_fds(sock, 65536, _MAX_FDS)
    if not data:
        return None, list(fds)
    while len(data) < _HEADER.size:
        more = sock.recv(65536)
        if not more:
            return None, list(fds)
        data += more
    (length,) = _HEADER.unpack_from(data)
    while len(data) < _HEADER.size + length:
        more = sock.recv(max(65536, _HEADER.size + length - len(data)))
        if not more:
            return None, list(fds)
        data += more
    return json.loads(data[_HEADER.size : _HEADER.size + length]), list(fds)


def connect(path: Path | None = None, timeout: float | None = None) -> socket.socket | None:
    """A connection to the warm process, or None when none listens at ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path or socket_path()))
    except OSError:
        sock.close()
        return None
    return sock


def starting(path: Path | None = None) -> bool:
    """Whether a warm process for this code holds its lock but does not listen yet (it is still importing).

    Probes the lock with a shared, non-blocking ``flock`` released at once: a server starting in that same
    instant finds the lock taken and exits, and the next command starts one again.
    """
    lock_path = (path or socket_path()).with_suffix(".lock")
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def wait_for(path: Path | None = None, timeout: float = 60.0) -> socket.socket | None:
    """A connection to the warm process once it listens, while it is still :func:`starting`; None after
    ``timeout`` seconds or once it stops starting without listening."""
    path = path or socket_path()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock = connect(path, timeout=5.0)
        if sock is not None:
            return sock
        if not starting(path):
            return connect(path, timeout=5.0)
        time.sleep(0.05)
    return None


def start(wait: bool = False, timeout: float = 120.0) -> bool:
    """Start a warm process for this code in the background (its own session, output to its log).

    Returns at once unless ``wait``; then returns whether it listens within ``timeout`` seconds. A
    second start while one runs is harmless: the newcomer finds the lock taken and exits.
    """
    path = socket_path()
    log = path.with_suffix(".log")
    bin_dir = os.path.dirname(sys.executable)  # where the `ume` script lives: the server's sys.path[0], as the script's
    code = f"import sys; sys.path[0] = {bin_dir!r}; from pipeline.launcher.server import serve; serve({str(path)!r})"
    with open(log, "ab") as out:
        subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    if not wait:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if state()["listening"]:
            return True
        time.sleep(0.2)
    return False


def state() -> dict[str, Any]:
    """Whether the warm process for this code listens, its pid and socket."""
    path = socket_path()
    sock = connect(path, timeout=5.0)
    if sock is None:
        return {"listening": False, "socket": str(path), "pid": None}
    with sock:
        try:
            send_message(sock, {"op": "ping"})
            reply, _ = recv_message(sock)
        except OSError:
            reply = None
    return {"listening": reply is not None, "socket": str(path), "pid": (reply or {}).get("pid")}


def stop(timeout: float = 30.0) -> bool:
    """Ask the warm process for this code to exit (it lets running commands finish); whether one was running."""
    info = state()
    if not info["listening"] or not info["pid"]:
        return False
    try:
        os.kill(int(info["pid"]), signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and Path(info["socket"]).exists():
        time.sleep(0.1)
    return True
