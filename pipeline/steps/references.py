"""``ume references``: train a version's reference bank ahead of a deletion, off the deletion's critical path.

The per-sample forget check (:mod:`behaviors.references`) opens the bank of the candidate's clean base
at every deletion: it purges the shadows that trained on a deleted sample, and trains shadows only when
fewer than ``min_shadows`` remain. Run after a step (the ``seal`` stage does, by hand, or from cron), this
command trains the bank back to every shadow, so the next deletion's gate trains nothing: it purges one
shadow of each complementary pair and scores with the others. After a learn step that brought a new slice, the
shadows that never saw it are stale and are trained again here (:func:`behaviors.references.open_bank`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import RegistryError
from pipeline.records.workspace import Workspace


@dataclass(frozen=True)
class BankReport:
    """What opening the bank did."""

    version: int | None  # None: no champion yet (``ahead``)
    shadows: int
    trained: int
    purged: int
    seconds: float
    path: str
    note: str = ""  # why there is no bank (nothing to train on)
    stale: int = 0  # shadows removed because the pool gained a slice they never saw


def prepare_references(ws: Workspace, version: int | None = None, *, ahead: bool = False) -> BankReport:
    """Open (purge, top up) the reference bank of ``version`` (default: the champion).

    ``ahead`` is how the ``seal`` stage runs it after every ``dvc repro`` that ran a step: no champion yet
    (a blocked base) is then a note, not an error, so the bank is kept full between runs whenever there is one.
    """
    from behaviors.build import reference_bank
    from pipeline.data.module import open_data

    target = version or ws.registry.champion()
    if target is None:
        if ahead:
            return BankReport(None, 0, 0, 0, 0.0, "", "no champion yet: no reference bank to keep")
        raise RegistryError("no champion yet: run `dvc repro` (or `make demo`) first", field="champion")
    manifest = ws.manifest_of(target)
    data = open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
    bank, note = reference_bank(ws, data, manifest, fill=True)
    if bank is None:
        return BankReport(target, 0, 0, 0, 0.0, "", note)
    return BankReport(target, len(bank), bank.trained, bank.purged, bank.seconds, str(bank.root), stale=bank.stale)
