"""Ledger heads written down outside the ledger (anchors), and the check of the ledger against them.

A hash chain catches a careless edit, not someone who rewrites history and recomputes every hash.
What catches that is a head the ledger's owner cannot quietly rewrite together with the ledger:
certificate transparency publishes signed tree heads for this reason (RFC 6962). ume writes and reads
these anchors:

- **registry**: each decision's entry hash and sequence number as tags of its model version
  (``ume.ledger_entry``, ``ume.ledger_seq``, ``ume.ledger_sig``);
- **MLflow runs**: the ledger head at the end of every stage as *parameters* of the stage's run
  (``ume.ledger_anchor`` = ``seq:hash``, ``ume.ledger_anchor_sig``); MLflow never lets a logged
  parameter change;
- **certificates**: the entries a certificate lists and the head it was written at
  (``ume audit --certificate FILE``, and every file under ``certificates/``);
- **DVC**: ``dvc.lock`` records the MD5 of ``store/ledger.jsonl`` at every ``seal`` (in the working tree
  and in every git commit of ``dvc.lock``), and the DVC cache keeps those very files: a cached copy is
  compared line by line, which names the exact first entry that changed.

An anchor agrees when the ledger's entry ``seq`` has that hash (the hash commits to every entry
before it). The first divergence is the first line where a cached copy differs, else it lies after
the last agreeing anchor and at or before the first disagreeing one. With ``ledger.public_key``, each
signed anchor is verified (:mod:`pipeline.core.signing`).
"""

from __future__ import annotations

import calendar
import hashlib
import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core import signing
from pipeline.records.ledger import Entry, identity_text
from pipeline.records.workspace import Workspace

RUN_ANCHOR_PARAM = "ume.ledger_anchor"
RUN_SIGNATURE_PARAM = "ume.ledger_anchor_sig"
CERTIFICATE_MARK = "ume-ledger-anchors:"
ATTESTATION_SUFFIX = ".intoto.json"  # a certificate's in-toto attestation (pipeline/reports/certificate.py)
MAX_GIT_COMMITS = 500
GRACE_SECONDS = 5  # a lock written this close before the first entry's (whole-second) time still counts


@dataclass(frozen=True)
class Anchor:
    """A claim made outside the ledger: entry ``seq`` had hash ``hash`` (``seq`` None: somewhere)."""

    source: str
    seq: int | None
    hash: str
    signature: str | None = None
    lines: tuple[str, ...] | None = None  # a whole earlier copy of the ledger (DVC cache), when there is one
    foreign: str | None = None  # an anchor of another ledger that should not exist beside this one: why


@dataclass
class AnchorReport:
    """What the anchors say about the ledger."""

    agreed: list[Anchor] = field(default_factory=list)
    disagreed: list[tuple[Anchor, str]] = field(default_factory=list)
    bad_signatures: list[Anchor] = field(default_factory=list)
    unsigned: int = 0
    first_divergence: int | None = None  # the first entry that differs (exact, from a cached copy)
    divergence_range: tuple[int, int | None] | None = None  # (after entry, at or before entry) otherwise
    set_aside: list[str] = field(default_factory=list)  # anchors of other ledgers, not evidence about this one

    def divergence(self) -> str:
        """Where history diverges, in words."""
        if self.first_divergence is not None:
            return f"history diverges at entry {self.first_divergence}"
        if self.divergence_range is not None:
            after, before = self.divergence_range
            end = f" and at or before entry {before}" if before is not None else ""
            return f"history diverges after entry {after}{end}"
        return "history diverges"


def signer(ws: Workspace) -> Callable[[int, str], str | None]:
    """A function that signs ``(seq, hash)`` with the configured key, or returns None when signing is off."""
    path = ws.params.signing_key_path
    if path is None:
        return lambda seq, entry_hash: None
    key = signing.load_private_key(path)
    model = ws.params.registry.model_name
    return lambda seq, entry_hash: signing.sign(key, signing.anchor_message(model, seq, entry_hash))


def decision_tags(ws: Workspace) -> Callable[[Entry], dict[str, str]]:
    """The anchor tags of a decision entry on its model version."""
    sign = signer(ws)

    def tags(entry: Entry) -> dict[str, str]:
        out = {"ume.ledger_entry": entry.hash, "ume.ledger_seq": str(entry.seq)}
        signature = sign(entry.seq, entry.hash)
        if signature:
            out["ume.ledger_sig"] = signature
        return out

    return tags


def anchor_run(ws: Workspace, run_id: str | None) -> None:
    """Write the ledger head as parameters of a stage's run (once per run: MLflow parameters never change)."""
    if not run_id or not ws.primary:  # a resumed stage has no run of its own
        return
    entries = ws.ledger.verify()
    if not entries:
        return
    head = entries[-1]
    params = {RUN_ANCHOR_PARAM: f"{head.seq}:{head.hash}"}
    signature = signer(ws)(head.seq, head.hash)
    if signature:
        params[RUN_SIGNATURE_PARAM] = signature
    ws.registry.log_params(run_id, params)


def certificate_anchor_payload(ws: Workspace, entries: list[Entry]) -> dict[str, Any]:
    """The anchors a certificate carries: its entries, the ledger head, and the head's signature (a signing key set)."""
    head = ws.ledger.verify()[-1]
    payload: dict[str, Any] = {
        "model": ws.params.registry.model_name,
        "entries": [[e.seq, e.hash] for e in entries],
        "head": [head.seq, head.hash],
    }
    signature = signer(ws)(head.seq, head.hash)
    if signature:
        payload["head_signature"] = signature
    return payload


def certificate_anchor_block(payload: dict[str, Any]) -> str:
    """The anchors as the Markdown and HTML carry them: an HTML comment, invisible, kept in both formats."""
    return f"<!-- {CERTIFICATE_MARK} {json.dumps(payload, separators=(',', ':'))} -->"


def is_attestation(path: Path) -> bool:
    """Whether a certificate file is the in-toto attestation (``<id>.intoto.json``) rather than Markdown or HTML."""
    return path.name.endswith(".json")


def certificate_anchors(path: Path) -> list[Anchor]:
    """The anchors of one certificate file (Markdown, HTML, or the attestation's predicate); a :class:`ValueError` when it has none.

    An attestation's signature is not checked here (``pipeline.reports.audit`` does that first).
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    if is_attestation(path):
        from pipeline.core.attestation import statement_of

        ledger = statement_of(json.loads(text))["predicate"].get("ledger")
        if not isinstance(ledger, dict):
            raise ValueError(f"{path}: its predicate has no ledger anchors")
        payload = {**ledger, "entries": [[e["seq"], e["hash"]] for e in ledger["entries"]], "head": [ledger["head"]["seq"], ledger["head"]["hash"]]}
    else:
        found = re.search(r"<!-- " + re.escape(CERTIFICATE_MARK) + r" (\{.*?\}) -->", text)
        if found is None:
            raise ValueError(f"{path} carries no ume ledger anchors (written before ume anchored certificates?)")
        payload = json.loads(found.group(1))
    out = [Anchor(f"certificate {path.name}: entry {seq}", int(seq), str(h)) for seq, h in payload["entries"]]
    seq, head = payload["head"]
    out.append(Anchor(f"certificate {path.name}: head", int(seq), str(head), payload.get("head_signature")))
    return out


def registry_anchors(ws: Workspace) -> list[Anchor]:
    """Each version's ``ume.ledger_entry`` (with ``ume.ledger_seq`` where written)."""
    out = []
    for info in ws.registry.versions():
        entry_hash = info.tags.get("ume.ledger_entry")
        if not entry_hash:
            continue
        seq = info.tags.get("ume.ledger_seq")
        number = int(seq) if seq and seq.isdigit() else None
        out.append(Anchor(f"registry v{info.version} tag ume.ledger_entry", number, entry_hash, info.tags.get("ume.ledger_sig")))
    return out


def run_anchors(ws: Workspace) -> list[Anchor]:
    """The ledger head each stage's MLflow run holds as a parameter."""
    out = []
    for run_id, name, params in ws.registry.run_params((RUN_ANCHOR_PARAM, RUN_SIGNATURE_PARAM)):
        value = params.get(RUN_ANCHOR_PARAM)
        if value and ":" in value:
            seq, _, entry_hash = value.partition(":")
            where = f"MLflow run {name} ({run_id[:8]}) param {RUN_ANCHOR_PARAM}"
            out.append(Anchor(where, int(seq), entry_hash, params.get(RUN_SIGNATURE_PARAM)))
    return out


@dataclass(frozen=True)
class LockRecord:
    """What one ``dvc.lock`` recorded of the ledger: its MD5, the MD5 of its identity file, and when it was written."""

    where: str
    md5: str
    identity_md5: str | None  # None: a lock written before ledgers carried an identity
    written: float | None  # commit time, or the working tree file's modification time (seconds since the epoch)


def _lock_records(project: Path, ledger_rel: str, identity_rel: str) -> list[LockRecord]:
    """The ledger as ``dvc.lock`` recorded it: the working tree, then git history (newest first)."""
    found: list[LockRecord] = []

    def read(text: str, where: str, written: float | None) -> None:
        try:
            stages = (yaml.safe_load(text) or {}).get("stages") or {}
        except yaml.YAMLError:
            return
        for stage in stages.values():
            outs = {str(o.get("path")): o for o in stage.get("outs") or [] if isinstance(o, dict)}
            ledger = outs.get(ledger_rel)
            if ledger and ledger.get("md5"):
                identity = outs.get(identity_rel, {}).get("md5")
                found.append(LockRecord(where, str(ledger["md5"]), str(identity) if identity else None, written))

    lock = project / "dvc.lock"
    if lock.exists():
        read(lock.read_text(), "dvc.lock (working tree)", lock.stat().st_mtime)
    try:
        commits = subprocess.run(
            ["git", "log", f"-{MAX_GIT_COMMITS}", "--format=%H %ct", "--", "dvc.lock"], cwd=project, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return found
    for line in commits.stdout.splitlines() if commits.returncode == 0 else []:
        commit, _, stamp = line.partition(" ")
        shown = subprocess.run(["git", "show", f"{commit}:dvc.lock"], cwd=project, capture_output=True, text=True, timeout=60)
        if shown.returncode == 0:
            read(shown.stdout, f"dvc.lock at git commit {commit[:10]}", float(stamp) if stamp.isdigit() else None)
    return found


def _ledger_began(ws: Workspace) -> float | None:
    """When the ledger's first entry was written (seconds since the epoch), or None."""
    lines = ws.ledger.raw_lines()
    if not lines:
        return None
    try:
        stamp = json.loads(lines[0])["time"]
        return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _belongs(record: LockRecord, identity_md5: str | None, began: float | None) -> tuple[bool, str | None]:
    """Whether a ``dvc.lock`` speaks about this ledger: ``(True, None)``; ``(False, why)`` set aside; ``(True, why)``
    another ledger's lock written after this ledger began, which is itself evidence of a replaced ledger."""
    before = began is not None and record.written is not None and record.written < began - GRACE_SECONDS
    if record.identity_md5 is not None and identity_md5 is not None:
        if record.identity_md5 == identity_md5:
            return True, None
        if before:
            return False, "another ledger's (its identity differs), written before this ledger began"
        return True, "it records another ledger (its identity differs) but was written after this ledger began"
    if before:
        return False, "written before this ledger began (no identity recorded)"
    return True, None


def dvc_anchors(ws: Workspace, set_aside: list[str] | None = None) -> list[Anchor]:
    """The ledgers ``dvc.lock`` recorded, as whole copies from the DVC cache where it still has them.

    Only locks about *this* ledger count (:func:`_belongs`): a lock whose identity file differs and that was
    written before this ledger's first entry (a clone's origin, another run) is set aside, named in ``set_aside``.
    """
    project = Path(ws.params.file).resolve().parent
    try:
        ledger_rel = str(ws.ledger.path.resolve().relative_to(project))
        identity_rel = str(ws.ledger.identity_path.resolve().relative_to(project))
    except ValueError:
        return []
    identity = ws.ledger.identity()
    identity_md5 = hashlib.md5(identity_text(identity).encode()).hexdigest() if identity else None
    began = _ledger_began(ws)
    cache = project / ".dvc" / "cache" / "files" / "md5"
    out, seen = [], set()
    for record in _lock_records(project, ledger_rel, identity_rel):
        counts, why = _belongs(record, identity_md5, began)
        if not counts:
            if set_aside is not None:
                set_aside.append(f"{record.where}: {why}")
            continue
        if why is not None:
            out.append(Anchor(f"{record.where}", None, f"identity:{record.identity_md5}", foreign=why))
            continue
        if record.md5 in seen:
            continue
        seen.add(record.md5)
        copy = cache / record.md5[:2] / record.md5[2:]
        if copy.exists():
            lines = tuple(line for line in copy.read_text(encoding="utf-8").split("\n") if line.strip())
            last = json.loads(lines[-1]) if lines else {"seq": 0, "hash": ""}
            out.append(Anchor(f"{record.where}: the ledger DVC cached ({record.md5[:10]})", int(last["seq"]), str(last["hash"]), lines=lines))
        else:
            out.append(Anchor(f"{record.where}: MD5 {record.md5[:10]} of the ledger (not in the DVC cache)", None, f"md5:{record.md5}"))
    return out


def check_anchors(ws: Workspace, anchors: list[Anchor]) -> AnchorReport:
    """Compare the ledger with every anchor (and verify signatures when ``ledger.public_key`` is set)."""
    lines = ws.ledger.raw_lines()
    hashes: list[str] = []
    for line in lines:
        try:
            hashes.append(str(json.loads(line).get("hash")))
        except (json.JSONDecodeError, AttributeError):
            hashes.append("")
    position = {h: i + 1 for i, h in enumerate(hashes)}
    prefix_md5: dict[str, int] = {}
    if any(a.hash.startswith("md5:") for a in anchors):
        digest = hashlib.md5()
        for i, line in enumerate(lines, start=1):
            digest.update((line + "\n").encode())
            prefix_md5[digest.hexdigest()] = i
    report = AnchorReport()
    disagree_at: list[int] = []
    for anchor in anchors:
        if anchor.foreign is not None:
            report.disagreed.append((anchor, f"{anchor.foreign}: the ledger was replaced from its first entry"))
            report.first_divergence = 1
        elif anchor.lines is not None:
            first = next((i + 1 for i, old in enumerate(anchor.lines) if i >= len(lines) or lines[i] != old), None)
            if first is None:
                report.agreed.append(anchor)
            else:
                why = "the ledger ends before it" if first > len(lines) else "an entry differs"
                report.disagreed.append((anchor, f"{why}: entry {first} is not what was recorded"))
                report.first_divergence = first if report.first_divergence is None else min(report.first_divergence, first)
        elif anchor.hash.startswith("md5:"):
            if anchor.hash[4:] in prefix_md5:
                report.agreed.append(anchor)
            else:
                report.disagreed.append((anchor, "no prefix of the ledger has this MD5"))
        elif anchor.seq is not None:
            if anchor.seq <= len(hashes) and hashes[anchor.seq - 1] == anchor.hash:
                report.agreed.append(anchor)
            else:
                missing = "the ledger has no such entry" if anchor.seq > len(hashes) else f"entry {anchor.seq} has another hash"
                report.disagreed.append((anchor, f"{missing} (recorded {anchor.hash[:12]})"))
                disagree_at.append(anchor.seq)
        elif anchor.hash in position:
            report.agreed.append(anchor)
        else:
            report.disagreed.append((anchor, f"no entry has hash {anchor.hash[:12]}"))
    if report.first_divergence is None and report.disagreed:
        before = min(disagree_at) if disagree_at else None
        agreed_seqs = [a.seq for a in report.agreed if a.seq is not None and (before is None or a.seq < before)]
        report.divergence_range = (max(agreed_seqs, default=0), before)
    _check_signatures(ws, anchors, report)
    return report


def _check_signatures(ws: Workspace, anchors: list[Anchor], report: AnchorReport) -> None:
    path = ws.params.public_key_path
    if path is None:
        return
    key = signing.load_public_keys(path)  # the current key and any retired ones (an anchor verifies with one of them)
    model = ws.params.registry.model_name
    for anchor in anchors:
        if anchor.lines is not None or anchor.hash.startswith(("md5:", "identity:")):
            continue
        if anchor.signature is None:
            report.unsigned += 1
        elif anchor.seq is None or not signing.verify(key, signing.anchor_message(model, anchor.seq, anchor.hash), anchor.signature):
            report.bad_signatures.append(anchor)


def reachable_anchors(ws: Workspace, certificates: list[Path] | None = None, set_aside: list[str] | None = None) -> list[Anchor]:
    """Every anchor ume can reach: registry, runs, DVC (working tree, git history, cache), certificates.

    ``set_aside`` collects the ``dvc.lock`` records of other ledgers, which are not evidence about this one."""
    anchors = [*registry_anchors(ws), *run_anchors(ws), *dvc_anchors(ws, set_aside)]
    for path in certificates or []:
        anchors.extend(certificate_anchors(path))
    return anchors
