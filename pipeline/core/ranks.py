"""Which process of a multi-process (DDP) run this is, and what a non-primary rank may do.

With ``train.strategy: ddp`` every rank runs the *whole* ``ume`` command (SPMD): Lightning's
launcher starts ``python .../ume base`` again for local ranks 1..N-1 when rank 0 first calls
``Trainer.fit`` (with ``LOCAL_RANK``, ``NODE_RANK``, ``WORLD_SIZE`` set); torchrun and SLURM start
every rank at once (``RANK``, ``SLURM_PROCID``). Every ``fit`` is collective, so all ranks must
take the same branches, but only the **primary** (global rank 0) may write: components, manifests,
the ledger, the registry, step records, reports and history. The others are **followers**: they
run the same code against a :class:`~pipeline.records.workspace.Workspace` whose writes go to a private
scratch directory (and whose registry writes do nothing), while reads see the shared store.

Three small mechanisms keep the followers on rank 0's path:

- :func:`publish_ledger_start` / :func:`ledger_start`: rank 0 puts the ledger length it saw at its
  first read into the environment its children inherit, so a follower's copy of the ledger is
  rank 0's starting view, not one that already holds rank 0's ``step_started`` entry;
- :func:`agree`: a control-flow decision (the gate's verdict) is rank 0's on every rank: broadcast
  once the process group exists, replayed from the inherited environment before it does (a
  follower that will receive it skips the behaviour suite: :func:`receives_agreement`);
- :func:`finish`: a final barrier, so the command exits when every rank is done.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROLE_ENV = "UME_ROLE"  # "primary" or "follower": overrides what the launcher variables say
LEDGER_START_ENV = "UME_LEDGER_START"  # "<entries>:<ledger path>", set by rank 0 for the ranks it launches
AGREED_ENV = "UME_AGREED"  # JSON list of rank 0's decisions taken before the process group existed
# Variables launchers set; a process is rank 0 only when none of them names another rank or node.
RANK_VARS = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a distributed run, from the launcher's environment variables."""

    primary: bool
    label: str  # the launcher variables that decided it, e.g. "NODE_RANK=0, LOCAL_RANK=1"

    def __str__(self) -> str:
        return self.label


def _int_env(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        return None


@cache
def rank_info() -> RankInfo:
    """Read once per process (Lightning later sets ``LOCAL_RANK=0`` in rank 0 itself: still rank 0)."""
    found = {name: _int_env(name) for name in RANK_VARS}
    named = {k: v for k, v in found.items() if v is not None}
    role = os.environ.get(ROLE_ENV, "").strip().lower()
    primary = role == "primary" if role in ("primary", "follower") else not any(named.values())
    label = ", ".join(f"{k}={v}" for k, v in named.items()) or "no launcher variables"
    return RankInfo(primary=primary, label=f"{label} ({ROLE_ENV}={role})" if role else label)


def is_primary() -> bool:
    """Whether this process is global rank 0 (the only one that writes)."""
    return rank_info().primary


def world_size() -> int:
    """Processes in the run: the process group's size once it exists, else the launcher's ``WORLD_SIZE``, else 1."""
    dist = _dist()
    if dist is not None:
        return dist.get_world_size()
    return _int_env("WORLD_SIZE") or 1


def _dist() -> Any:
    """``torch.distributed`` when a process group with more than one rank exists, else None."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


_scratch: list[Path] = []


def scratch_dir() -> Path:
    """A follower's private directory for what it would have written (removed at exit)."""
    if not _scratch:
        path = Path(tempfile.mkdtemp(prefix=f"ume-follower-{os.getpid()}-"))
        _scratch.append(path)
        if not os.environ.get("UME_KEEP_SCRATCH"):
            atexit.register(shutil.rmtree, path, True)
        print(f"ume: {rank_info()}: follower rank; trains and runs the behaviours like rank 0, writes only to {path}", file=sys.stderr)
    return _scratch[0]


# ----------------------------------------------------------------------------- the ledger at start


def publish_ledger_start(path: Path, entries: int) -> None:
    """Rank 0: remember how long the ledger was when this command first read it (children inherit it)."""
    os.environ[LEDGER_START_ENV] = f"{entries}:{Path(path).resolve()}"


def ledger_start(path: Path) -> int | None:
    """A follower: how many entries of ``path`` rank 0 saw at its start, or None when not published."""
    raw = os.environ.get(LEDGER_START_ENV, "")
    count, _, where = raw.partition(":")
    if not count.isdigit() or where != str(Path(path).resolve()):
        return None
    return int(count)


# ----------------------------------------------------------------------------- shared decisions

_recorded: list[Any] = []  # rank 0: its decisions so far in this process (what it publishes)
_replayed: list[int] = [0]  # a follower: how many of the published ones it has used


def agree(value: T) -> T:
    """Rank 0's ``value`` (JSON-compatible) on every rank; every rank must call this at the same point.

    Once the process group exists (the first ``fit``) it is a broadcast from rank 0. Before that,
    rank 0 appends the value to the environment the ranks it launches inherit, and a follower
    launched that way replays those values in order; a follower started by an external launcher
    (torchrun, SLURM) without them keeps its own (the suite is deterministic).
    """
    value = json.loads(json.dumps(value))  # the same types on every rank and path
    dist = _dist()
    if dist is not None:
        return _broadcast_json(dist, value)
    if is_primary():  # (whatever this process inherited is not rank 0's: overwritten)
        _recorded.append(value)
        os.environ[AGREED_ENV] = json.dumps(_recorded)
        return value
    recorded = json.loads(os.environ.get(AGREED_ENV, "[]"))
    index = _replayed[0]
    _replayed[0] += 1
    return recorded[index] if index < len(recorded) else value


def _broadcast_json(dist: Any, value: Any) -> Any:
    """Rank 0's JSON value on every rank, sent as bytes in tensors (``broadcast_object_list`` would unpickle)."""
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    data = json.dumps(value).encode() if dist.get_rank() == 0 else b""
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    dist.broadcast(size, src=0)
    buffer = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == 0:
        buffer.copy_(torch.tensor(list(data), dtype=torch.uint8, device=device))
    dist.broadcast(buffer, src=0)
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def receives_agreement() -> bool:
    """Whether this process is a follower whose next :func:`agree` returns rank 0's value.

    Then the follower need not compute that value itself (the runner skips the behaviour suite).
    """
    if is_primary():
        return False
    if _dist() is not None:
        return True
    return _replayed[0] < len(json.loads(os.environ.get(AGREED_ENV, "[]")))


def finish() -> None:
    """Wait at the end of a command until every rank is there (a no-op without a process group)."""
    dist = _dist()
    if dist is not None:
        dist.barrier()
