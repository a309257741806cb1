"""The ``ume`` console script: hand the command to the warm process, or run it here (cold).

Standard library only until it runs cold, so a warm command's own start-up is the interpreter's (about
30 ms) plus one fork. A command that finds no warm process runs cold and starts one in the background
for the next command (``UME_WARM=0``: never); one that finds it still importing waits for it. See
:mod:`pipeline.core.warm`.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from typing import NoReturn

from pipeline.core import warm

# Signals the terminal or a supervisor sends to ``ume``: passed on to the child that runs the command.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
# Commands that never use the warm process (``warm`` controls it; help needs no import).
COLD_ONLY = frozenset({"warm", "-h", "--help", "keygen"})
# How long a command waits for a warm process that is still importing before it runs cold itself.
STARTING_WAIT_SECONDS = 60.0


def main() -> None:
    """Run ``sys.argv`` in the warm process when one listens, otherwise here."""
    if warm.enabled() and not COLD_ONLY.intersection(sys.argv[1:2]):
        code = run_warm(sys.argv)
        if code is not None:
            exit_like(code)
    from pipeline.cli import main as cold_main

    try:
        cold_main()
    except SystemExit as exc:
        finish(exit_code(exc))


def exit_code(exc: SystemExit) -> int:
    """The status the interpreter would exit with for ``exc`` (a message is printed to stderr, status 1)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def finish(code: int) -> NoReturn:
    """End the process as the interpreter would, less the teardown of every module (measured: 3 s).

    The interpreter's own order: wait for non-daemon threads, run ``atexit`` (MLflow, Lightning, logging,
    temporary directories), flush stdout and stderr; then exit without freeing 5,000 modules' objects one
    by one, which in a process that imported torch, Lightning and MLflow takes longer than a status command.
    """
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def run_warm(argv: list[str]) -> int | None:
    """The command's exit code (negative: killed by that signal) as run by the warm process; None to run cold.

    None when no warm process listens (one is started for the next command), when this process's standard
    file descriptors cannot be passed, or when the warm process refuses; never once the command has started.
    A warm process that is still importing (started by the command before, e.g. the previous DVC stage) is
    waited for, up to ``STARTING_WAIT_SECONDS``: importing here as well would compete with it for the same cores.
    """
    try:
        path = warm.socket_path()
    except OSError:
        return None
    sock = warm.connect(path, timeout=5.0)
    if sock is None and warm.starting(path):
        sock = warm.wait_for(path, timeout=STARTING_WAIT_SECONDS)  # it imports already: importing here too would only compete
    if sock is None:
        try:
            warm.start()
        except OSError:
            pass
        return None
    with sock:
        try:
            request = {"op": "run", "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ), "ppid": os.getppid()}
            warm.send_message(sock, request, [0, 1, 2])
            reply, _ = warm.recv_message(sock)
        except (OSError, ValueError):
            return None
        if not reply or "pid" not in reply:
            return None
        child = int(reply["pid"])
        for signum in FORWARDED_SIGNALS:
            signal.signal(signum, lambda sig, _frame: _forward(child, sig))
        sock.settimeout(None)
        try:
            done, _ = warm.recv_message(sock)
        except (OSError, ValueError):
            done = None
    if not done or "status" not in done:
        print("ume: error: the warm process ended before the command finished (UME_WARM=0 runs it cold)", file=sys.stderr)
        return 1
    return os.waitstatus_to_exitcode(int(done["status"]))


def _forward(child: int, signum: int) -> None:
    """Pass a signal this process received on to the child that runs the command."""
    try:
        os.kill(child, signum)
    except ProcessLookupError:
        pass


def exit_like(code: int) -> None:
    """Exit with ``code``; a negative code dies of that signal, as the child did (``-9``: SIGKILL)."""
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # the two whose handler cannot be set (nor was)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        code = 128 - code
    sys.exit(code)
