"""The warm process: imports what a step needs once, then forks one child per ``ume`` command.

A fork server in the manner of the Gradle daemon and ``multiprocessing``'s forkserver: one
single-threaded process per user and code fingerprint (:mod:`pipeline.core.warm`) that has imported
torch, timm, Lightning, torchmetrics, MLflow and ume's own modules, and has run nothing (no tensor
op, no thread pool started, no file of any project opened). For each command it forks a child that
takes the client's standard file descriptors, working directory, environment and arguments, and runs
:func:`pipeline.cli.main` as a cold process would, and exits as a cold ``ume`` does
(:func:`pipeline.launcher.entry.finish`: threads joined, ``atexit``, flushes, no module teardown).
The parent watches each child with a pidfd and each client's socket: the child's wait status
goes back to its client; a client that disappears has its child killed.
It exits after ``UME_WARM_IDLE`` seconds without a command, or on SIGTERM once its children finished.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from pipeline.core import warm
from pipeline.launcher.entry import exit_code, finish

# The heavy modules a stage or command imports (ume's stages and reports, the training stack, MLflow's SQL stores,
# pytest and the behaviour plugin); a command imports anything else itself, in its child.
PRELOAD = (
    "pipeline.cli",
    "pipeline.steps",
    "pipeline.steps.lifecycle",
    "pipeline.steps.kinds.base",
    "pipeline.steps.kinds.update",
    "pipeline.steps.kinds.forget",
    "pipeline.steps.kinds.rollback",
    "pipeline.reports.status",
    "pipeline.reports.audit",
    "pipeline.reports.certificate",
    "pipeline.model.training",
    "pipeline.data.training",
    "pipeline.model.routing",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "timm",
    "pytest",
    "behaviors.plugin",
    "hypothesis",  # the property specs (behaviors/test_invariance.py): 2 s of a gate's imports, measured with cProfile
    # What the stream's steps still imported in their child (measured: the modules each command of the demo stream adds
    # to the preload's, docs/start-up.md "What the preload holds"): about 1 to 2 s of every step.
    "peft",  # a LoRA learn, edit or exact-deletion step (and transformers, accelerate)
    "sklearn.covariance",  # the router's detectors (pipeline.model.routing.Detector.fit), in every routed learn step
    "behaviors.mia",  # the forget checks' attacks (scikit-learn's classifiers)
    "behaviors.membership",
    "behaviors.references",
    "behaviors.perturbations",
    "mlflow.store.db.utils",  # MLflow's schema check on opening the store (alembic)
    "torch.ao.quantization.quantize_fx",  # int8 experts (an int8 champion is composed by every later gate and `ume audit`)
    "torch.export",
    "pipeline.steps.erase",
)
# pytest loads the plugins installed packages declare (entry points of group "pytest11") in every gate's pytest.main.
PYTEST_PLUGIN_GROUP = "pytest11"
# How often the loop looks whether its socket still exists.
SOCKET_CHECK_SECONDS = 5.0
# Set in the server's environment by whoever started it; a child takes its client's instead.
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class _Job:
    """One running command: its client's connection and the child's pidfd."""

    conn: socket.socket
    pidfd: int


class WarmServer:
    """The accept-fork-reap loop (single-threaded: a fork never copies another thread's held lock)."""

    def __init__(self, listener: socket.socket, path: Path, lock: Any) -> None:
        self.listener = listener
        self.path = path
        self.lock = lock
        self.pid = os.getpid()
        self.jobs: dict[int, _Job] = {}
        self.stopping = False
        self.last_activity = time.monotonic()
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_write, False)
        signal.set_wakeup_fd(self.wake_write)
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        self.selector.register(listener, selectors.EVENT_READ, ("accept", 0))
        self.selector.register(self.wake_read, selectors.EVENT_READ, ("wake", 0))

    def _on_term(self, _signum: int, _frame: object) -> None:
        """SIGTERM/SIGINT: accept nothing more; exit when the running commands finished."""
        self.stopping = True

    def loop(self) -> None:
        """Serve until idle for ``UME_WARM_IDLE`` seconds or stopped with no command running."""
        idle = warm.idle_seconds()
        while True:
            if self.stopping:
                self._close_listener()
                if not self.jobs:
                    return
            remaining = max(0.0, self.last_activity + idle - time.monotonic())
            if remaining == 0.0 and not self.jobs:
                self._close_listener()
                return
            if not self.path.exists():  # its socket was removed (its directory deleted): nobody can reach it
                self.stopping = True
            for key, _mask in self.selector.select(min(remaining, SOCKET_CHECK_SECONDS) if not self.jobs else SOCKET_CHECK_SECONDS):
                kind, pid = key.data
                if kind == "accept":
                    self._accept()
                elif kind == "wake":
                    os.read(self.wake_read, 512)
                elif kind == "exit":
                    self._reap(pid)
                elif kind == "client":
                    self._client_event(pid)

    def _close_listener(self) -> None:
        """Stop listening and remove the socket (only the server itself, never a child)."""
        if os.getpid() != self.pid or self.listener.fileno() < 0:
            return
        self.selector.unregister(self.listener)
        self.listener.close()
        self.path.unlink(missing_ok=True)

    def _accept(self) -> None:
        """Answer one connection: a ping, or a command to fork."""
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        self.last_activity = time.monotonic()
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", creds)
            conn.settimeout(10.0)
            message, fds = warm.recv_message(conn)
        except (OSError, ValueError):
            conn.close()
            return
        if uid != os.getuid() or not message:
            _close_all(fds)
            conn.close()
            return
        if message.get("op") == "ping":
            _reply(conn, {"pid": self.pid})
            conn.close()
        elif message.get("op") == "run" and len(fds) == 3 and not self.stopping:
            self._fork(conn, message, fds)
        else:
            _close_all(fds)
            conn.close()

    def _fork(self, conn: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
        """Fork a child for the command; the parent keeps the connection to send the wait status."""
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self._become_child(conn, fds)
            run_command(message)  # never returns: the child exits as the command's process
        _close_all(fds)
        pidfd = os.pidfd_open(pid)
        self.jobs[pid] = _Job(conn, pidfd)
        self.selector.register(pidfd, selectors.EVENT_READ, ("exit", pid))
        if not _reply(conn, {"pid": pid}):
            os.kill(pid, signal.SIGKILL)
            return
        conn.settimeout(None)
        self.selector.register(conn, selectors.EVENT_READ, ("client", pid))

    def _become_child(self, conn: socket.socket, fds: list[int]) -> None:
        """In the child: drop every file descriptor and handler of the server; take the client's stdio."""
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.selector.close()
        for job in self.jobs.values():
            job.conn.close()
            os.close(job.pidfd)
        self.listener.close()
        self.lock.close()
        conn.close()
        os.close(self.wake_read)
        os.close(self.wake_write)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
        _close_all(fd for fd in fds if fd > 2)

    def _reap(self, pid: int) -> None:
        """A child exited: send its wait status to its client and forget it."""
        job = self.jobs.pop(pid)
        _, status = os.waitpid(pid, 0)
        self.selector.unregister(job.pidfd)
        os.close(job.pidfd)
        if job.conn.fileno() >= 0:
            self.selector.unregister(job.conn)
            _reply(job.conn, {"status": status})
            job.conn.close()
        self.last_activity = time.monotonic()

    def _client_event(self, pid: int) -> None:
        """The client of a running command closed its end (killed, or gone): kill the command too."""
        job = self.jobs[pid]
        try:
            data = job.conn.recv(1, socket.MSG_PEEK)
        except OSError:
            data = b""
        if data:
            return
        self.selector.unregister(job.conn)
        job.conn.close()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_command(message: dict[str, Any]) -> NoReturn:
    """In a forked child: become the client's command (cwd, environment, argv) and run the CLI; never returns."""
    _reopen_standard_streams()
    try:
        os.chdir(message["cwd"])
    except OSError as exc:
        print(f"ume: error: {message['cwd']}: {exc.strerror}", file=sys.stderr)
        finish(2)
    _take_environment(message["env"])
    argv = [str(a) for a in message["argv"]]
    sys.argv = argv
    script = os.path.abspath(argv[0])
    sys.path[0] = os.path.dirname(script)
    main = types.ModuleType("__main__")  # what a launcher (Lightning DDP) reruns: the ``ume`` script, not this server
    main.__file__ = script
    main.__spec__ = None
    sys.modules["__main__"] = main
    warm.set_logical_parent_pid(int(message.get("ppid") or os.getppid()))
    _set_threads()
    from pipeline.cli import main as cli_main

    try:
        cli_main(argv[1:])
    except SystemExit as exc:
        finish(exit_code(exc))
    except KeyboardInterrupt:  # as the interpreter does: the traceback, then die of SIGINT
        traceback.print_exc()
        atexit._run_exitfuncs()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # as the interpreter would: the traceback on stderr, exit 1
        traceback.print_exc()
        finish(1)
    finish(0)


def _reopen_standard_streams() -> None:
    """``sys.stdin``/``stdout``/``stderr`` over the client's descriptors, buffered as Python would for them."""
    encoding = "utf-8"
    sys.stdin = sys.__stdin__ = open(0, encoding=encoding, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = sys.__stdout__ = open(1, "w", buffering=1 if os.isatty(1) else -1, encoding=encoding, closefd=False)  # noqa: SIM115
    sys.stderr = sys.__stderr__ = open(2, "w", buffering=1, encoding=encoding, errors="backslashreplace", closefd=False)  # noqa: SIM115


def _take_environment(env: dict[str, str]) -> None:
    """The client's environment, and the ``PYTHONPATH`` entries it adds, as a cold start would have them."""
    before = os.environ.get("PYTHONPATH", "")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in env.items()})
    added = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p not in before.split(os.pathsep)]
    sys.path[1:1] = [p for p in added if p not in sys.path]


def _set_threads() -> None:
    """torch's CPU threads as a cold process would pick them: ``OMP_NUM_THREADS`` or every CPU it may use."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    wanted = os.environ.get("OMP_NUM_THREADS", "")
    threads = int(wanted) if wanted.isdigit() and int(wanted) > 0 else len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)


def _reply(conn: socket.socket, message: dict[str, Any]) -> bool:
    """Send ``message``; False when the client is gone."""
    try:
        warm.send_message(conn, message)
    except OSError:
        return False
    return True


def _close_all(fds: Any) -> None:
    """Close file descriptors, ignoring ones already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def pytest_plugin_modules() -> list[str]:
    """The modules of the pytest plugins installed packages declare: pytest imports each in every gate."""
    from importlib.metadata import entry_points

    return sorted({entry.module for entry in entry_points(group=PYTEST_PLUGIN_GROUP)})


def preload() -> None:
    """Import what commands use; a module that fails to import is left to the command (which reports it)."""
    for name in (*PRELOAD, *pytest_plugin_modules()):
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the command will import it again and fail with the real error
            print(f"ume warm: not preloaded {name}: {exc}", file=sys.stderr)


def serve(socket_file: str) -> None:
    """Run the warm process for ``socket_file`` unless one already runs for it (its lock is taken)."""
    path = Path(socket_file)
    lock = open(path.with_suffix(".lock"), "w")  # noqa: SIM115 - held for the server's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return
    for name in (*_THREAD_VARIABLES, "UME_CRASH_AT", "UME_CRASH_LOG"):
        os.environ.pop(name, None)
    started = time.monotonic()
    preload()
    staging = path.with_suffix(f".{os.getpid()}.tmp")
    staging.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(staging))
    listener.listen(64)
    os.replace(staging, path)  # appears only once it listens, with everything imported
    print(f"ume warm: pid {os.getpid()} listening on {path} after {time.monotonic() - started:.1f} s of imports", file=sys.stderr, flush=True)
    WarmServer(listener, path, lock).loop()
