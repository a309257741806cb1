"""Named crash points: where the reliability harness kills a step process with SIGKILL.

Like the failpoints of etcd or TiKV, each place where a crash would leave work half done calls
:func:`crash_point` with a stable name. Normally it costs one environment lookup and does nothing.
With ``UME_CRASH_AT=<name>`` (or ``<name>@<n>`` for the n-th time the point is reached) the process
appends the name to the file named by ``UME_CRASH_LOG`` (so the harness knows the point was
reached), then kills itself with SIGKILL: no ``finally``, no ``atexit``, no flush, exactly like a
power cut or the OOM killer. :data:`CRASH_POINTS` lists every point, so the harness can try them all.
"""

from __future__ import annotations

import os
import signal

from pipeline.core import warm

CRASH_AT_ENV = "UME_CRASH_AT"
CRASH_LOG_ENV = "UME_CRASH_LOG"

CRASH_POINTS: dict[str, str] = {
    "prepare.staged": "the sample table is built in the staging directory, not yet swapped in",
    "step.started": "the ledger says the step started; nothing else written",
    "forget.ingested": "`ume forget`: the request is in the ledger, its request file and stream step are not written",
    "forget.request_written": "`ume forget`: the request file is written, the stream step is not appended",
    "step.ingested": "a forget step ingested its request into the ledger",
    "registry.run_started": "the step's MLflow run exists (RUNNING), no training yet",
    "train.batch": "in the middle of training (after a few optimizer steps)",
    "component.tmp_written": "a component's weights are in a temporary file, not yet renamed into place",
    "component.saved": "a component is stored, the ledger does not know it yet",
    "ledger.tmp_written": "a new ledger file is written and fsynced under a temporary name, not yet renamed",
    "registry.registered": "the candidate is a registered MLflow version, the ledger has no candidate entry",
    "ledger.candidate": "the ledger has the candidate, no decision yet",
    "gate.decided": "the ledger has the decision, the registry has neither its tags nor the alias move",
    "gate.tagged": "the version is tagged with the decision, the alias is not moved yet",
    "gate.promoted": "the alias moved; the run tags, history and step record are not written",
    "step.record_tmp": "the step record (the DVC output) is in a temporary file",
    "forget.resolved": "the ledger says the request is resolved; earlier versions are not revoked yet",
    "revoke.ledger": "the ledger revokes earlier versions; the registry tags are not set yet",
    "sync.recorded": "`ume sync`: a request made in the MLflow UI is in the ledger; the alias is not moved back, no step appended",
    "sync.before_run": "`ume sync`: the rollback step is in the stream, not run yet",
    "erase.planned": "`ume erase`: the plan (erasure_started) is in the ledger, nothing erased yet",
    "erase.components": "`ume erase`: the components' weights are deleted; signed copies, MLflow artifacts and tags not yet",
    "erase.mlflow": "`ume erase`: the versions' MLflow artifacts are deleted and tagged; report images not yet",
    "erase.reports": "`ume erase`: report images replaced; reference shadows and row caches not yet",
    "erase.derived": "`ume erase`: derived stores purged; the DVC cache's objects not yet",
    "erase.dvc_cache": "`ume erase`: the DVC cache's objects are deleted; the rows' keys not yet destroyed",
    "erase.keys": "`ume erase`: the rows' keys are destroyed; the ledger does not record the erasure yet",
    "dvc.between_stages": "the `dvc repro` process itself is killed right after a stage finished (its record written), before DVC"
    " records that stage in dvc.lock and starts the next",
}
# Points that kill the `dvc` process running this stage (the nearest ancestor whose command is dvc), not this process.
KILL_DVC_POINTS = frozenset({"dvc.between_stages"})


def crash_point(name: str) -> None:
    """SIGKILL this process here if ``UME_CRASH_AT`` names this point (no-op otherwise).

    A point in :data:`KILL_DVC_POINTS` kills the ``dvc`` process that runs this stage instead, and
    this process goes on (it is about to exit anyway).
    """
    target = os.environ.get(CRASH_AT_ENV)
    if not target:
        return
    point, _, nth = target.partition("@")
    if point != name:
        return
    if name not in CRASH_POINTS:
        raise KeyError(f"unknown crash point {name!r}")
    wanted = int(nth) if nth else 1
    counter = f"_UME_CRASH_SEEN_{name.replace('.', '_')}"
    seen = int(os.environ.get(counter, "0")) + 1
    os.environ[counter] = str(seen)
    if seen < wanted:
        return
    log = os.environ.get(CRASH_LOG_ENV)
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(f"{name} pid={os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
    if name in KILL_DVC_POINTS:
        dvc = _dvc_ancestor()
        if dvc is not None:
            os.kill(dvc, signal.SIGKILL)
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _dvc_ancestor() -> int | None:
    """The pid of the nearest ancestor process whose command line runs ``dvc`` (Linux ``/proc``), or None."""
    pid = warm.logical_parent_pid()  # in a child of the warm process: the ``ume`` client's parent
    while pid > 1:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = [a.decode(errors="replace") for a in fh.read().split(b"\0") if a]
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                parent = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        if any(os.path.basename(a) == "dvc" for a in argv[:2]):
            return pid
        pid = parent
    return None
