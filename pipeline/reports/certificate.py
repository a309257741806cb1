"""Deletion certificates: what a request resolved to, how it was honoured, and the evidence.

No raw data and no raw sample ids: only counts, hashed ids, component ids, versions, metrics and
ledger entry hashes, so the certificate can be handed to the data subject or an auditor.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.markdown import markdown_to_html
from pipeline.records.anchors import CERTIFICATE_MARK, certificate_anchor_block
from pipeline.records.debt import debts_of
from pipeline.records.deletion import REPEAT_ENTRY, REVOKED_ENTRY, DeletionLog, load_request
from pipeline.records.workspace import Workspace


def _affected_components(ws: Workspace, hashed: set[str]) -> list[dict[str, Any]]:
    out = []
    root = ws.components.root
    for path in sorted(root.glob("*.json")) if root.exists() else []:
        sidecar = ws.components.sidecar(path.stem)
        hit = len(hashed & set(sidecar.lineage))
        covers = len(hashed & set(sidecar.meta.get("covers", [])))
        if hit or covers:
            out.append({"id": sidecar.id, "kind": sidecar.kind, "influenced_by": hit, "covers": covers, "method": sidecar.meta.get("method")})
    return out


def lineage_rows(ws: Workspace, version: int, hashed: set[str]) -> list[dict[str, Any]]:
    """Each component a version composes: id, kind, the sha256 of its weights, and how many of ``hashed`` its lineage holds."""
    manifest = ws.manifest_of(version)
    rows = []
    for component_id in (manifest.base, *manifest.overlays, *manifest.transforms):
        sidecar = ws.components.sidecar(component_id)
        rows.append({"id": sidecar.id, "kind": sidecar.kind, "sha256": sidecar.sha256, "held": len(hashed & set(sidecar.lineage))})
    return rows


def proof_lines(ws: Workspace, resolved: dict[str, Any], hashed: set[str]) -> list[str]:
    """The construction proof of an exact deletion: the served components and that no lineage holds the samples."""
    version = int(resolved["version"])
    rows = lineage_rows(ws, version, hashed)
    held = sum(r["held"] for r in rows)
    lines = [
        "## Proof by construction",
        "",
        f"The version that serves without the samples, v{version} (manifest `{resolved['manifest_hash'][:16]}`), is composed of",
        "the components below. A component's lineage, in the sidecar beside its weights, is the hashed id of every sample it was",
        "trained on; the weights are checked against their sha256 by `ume audit`.",
        "",
        "| component | kind | sha256 of its weights | the request's samples in its lineage |",
        "|---|---|---|---|",
        *(f"| `{r['id']}` | {r['kind']} | `{r['sha256']}` | {r['held']} |" for r in rows),
        "",
    ]
    if held:
        lines.append(f"**{held} of the request's samples are in the lineage of a served component: this version is not exact.**")
    else:
        lines.append(f"**None of the {len(hashed)} samples is in the lineage of any component of v{version}: the deletion is exact by construction.**")
    champion = ws.registry.champion()
    if champion is not None and champion != version:
        now = sum(r["held"] for r in lineage_rows(ws, champion, hashed))
        lines += ["", f"The current champion, v{champion}, checked the same way now: {now} of them in its lineage."]
    lines += ["", 'The components trained on them are under "Components affected"; the versions that served them, under "Versions revoked".', ""]
    return lines


def _forget_step(ws: Workspace, request_id: str) -> str | None:
    for key, step in ws.params.stream.items():
        if step.kind == "forget" and step.options.get("request") == request_id:
            return key
    return None


def _fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def evidence_lines(results: list[dict[str, Any]], request_id: str, resolved: dict[str, Any] | None) -> list[str]:
    """The evidence table: each forget check on the candidate and on its control, with its verdict.

    Only checks whose control (the un-forgotten model) fails them can show forgetting; the others
    are inconclusive and say so. Values recorded without a threshold are listed apart, as values.
    """
    suffix = f"[{request_id}]"
    checks = [c | {"blocking": r["blocking"]} for r in results for c in r["checks"] if c["name"].endswith(suffix) and c.get("controlled")]
    recorded = [c for r in results for c in r["checks"] if c["name"].endswith(suffix) and c["threshold"] is None]
    lines = [
        "Every check was run on the served candidate and on its *control*, the model that still carried the samples.",
        "A check shows forgetting only when the control fails it (`passed`); `inconclusive` means the control passes too.",
        "",
        "Advisory checks (population attacks) are shown for comparison and do not block: they also fail exact",
        "retrains of atypical data (`ume bench forget-evidence`).",
        "",
        "| check | candidate | control | threshold | verdict | blocking |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        sign = ">=" if c["higher_is_better"] else "<="
        cells = f"| {c['name'][: -len(suffix)]} | {_fmt(c['value'])} | {_fmt(c['control'])} | {sign} {c['threshold']:.4f} | {c['verdict']} |"
        lines.append(f"{cells} {'yes' if c['blocking'] else 'no (advisory)'} |")
    shown = [c["name"][: -len(suffix)] for c in checks if c["verdict"] == "passed"]
    if shown:
        lines += ["", f"**Conclusive evidence: {', '.join(shown)}.**"]
    elif resolved and resolved.get("exact"):
        lines += [
            "",
            "**No statistical check was conclusive**: the control, the model before the deletion, passes them too; it showed no",
            "measurable memorisation of these samples, so these statistics cannot tell. The proof of this deletion is its",
            "construction (above).",
        ]
    else:
        lines += ["", "**No check was conclusive: nothing here shows the samples were forgotten.**"]
    if resolved and resolved.get("note"):
        lines += ["", f"Resolution: {resolved['note']}."]
    if recorded:
        lines += ["", "Recorded values (measurements, not checks):", "", "| value | candidate | control |", "|---|---|---|"]
        lines += [f"| {c['name'][: -len(suffix)]} | {_fmt(c['value'])} | {_fmt(c.get('control'))} |" for c in recorded]
    return lines


def certificate_markdown(ws: Workspace, request_id: str) -> str:
    """The certificate as Markdown."""
    log = DeletionLog.read(ws.ledger)
    if request_id not in log.requests:
        known = ", ".join(log.requests) or "none"
        raise ConfigError(f"no deletion request {request_id!r} in the ledger (received: {known})", field="REQUEST_ID")
    request = load_request(request_id, ws.params.requests_dir)
    entry = log.requests[request_id]
    hashed = set(entry.data["hashed_ids"])
    resolved = log.resolved.get(request_id)
    phases = log.resolutions.get(request_id, [])
    step_key = resolved.step if resolved is not None and resolved.step else _forget_step(ws, request_id)
    steps = {e.step for e in phases if e.step} | ({step_key} if step_key else set())
    debt = next(d for d in debts_of(ws) if d.request_id == request_id)
    lines = [
        f"# Deletion certificate `{request_id}`",
        "",
        "## Request",
        "",
        "| field | value |",
        "|---|---|",
        f"| selector | {request.describe()} |",
        f"| reason | {request.reason} |",
        f"| received | {request.received} |",
        f"| samples resolved | {entry.data['count']} |",
        f"| scope | {entry.data['scope']} |",
        f"| status | {'resolved' if resolved else 'pending'} ({debt.state}) |",
        f"| deadline | {debt.deadline} (received + {ws.params.deletion.max_debt_days:g} days) |",
        f"| became exact | {debt.exact_since or 'not yet'} |",
        "",
    ]
    if resolved and resolved.data.get("exact"):
        lines += proof_lines(ws, resolved.data, hashed)
    lines += ["## How it was honoured", ""]
    if resolved:
        r = resolved.data
        lines += [
            "| field | value |",
            "|---|---|",
            f"| stream step | `{step_key}` |",
            f"| method | {r['method']} |",
            f"| exact | {'yes' if r['exact'] else 'no: approximate removal, recorded as deletion debt'} |",
            f"| samples in deletion debt | {r['debt_samples']} |",
            f"| version serving without them | {r['version']} (manifest `{r['manifest_hash'][:16]}`) |",
            f"| current champion | {ws.registry.champion()} |",
            "",
        ]
        if len(phases) > 1:  # a two-phase deletion: approximate at once, then exact
            lines += ["Phases:", "", "| phase | step | method | exact | version | debt samples | recorded |", "|---|---|---|---|---|---|---|"]
            for number, e in enumerate(phases, start=1):
                d = e.data
                lines.append(f"| {number} | `{e.step}` | {d['method']} | {'yes' if d['exact'] else 'no'} | v{d['version']} | {d['debt_samples']} | {e.time} |")
            lines.append("")
    else:
        lines += ["The request is received and its samples are excluded from all data use; the model step is pending.", ""]
    lines += ["## Components affected", "", "| component | kind | influenced by | covers | made by |", "|---|---|---|---|---|"]
    lines += [f"| `{c['id']}` | {c['kind']} | {c['influenced_by']} | {c['covers']} | {c['method']} |" for c in _affected_components(ws, hashed)]
    revoked = [e for e in ws.ledger.of_type(REVOKED_ENTRY) if any(request_id in v for v in e.data["by_request"].values())]
    versions = sorted({int(v) for e in revoked for v, reqs in e.data["by_request"].items() if request_id in reqs})
    lines += ["", "## Versions revoked", "", ", ".join(f"v{v}" for v in versions) or "none", ""]
    lines += ["## Evidence", ""]
    evidence = ws.reports_dir / (step_key or "") / "results.json"
    second = ws.reports_dir / f"{step_key}-attempt2" / "results.json"
    if step_key and second.exists():  # the fallback attempt decided
        evidence = second
    if step_key and evidence.exists():
        if evidence == second:
            first = json.loads((ws.reports_dir / step_key / "results.json").read_text())
            lines += [f"First attempt: {first['decision']['label']} ({first['decision']['reason']}); the exact fallback decided.", ""]
        lines += evidence_lines(json.loads(evidence.read_text())["results"], request_id, resolved.data if resolved else None)
    else:
        lines.append("No forget step has run for this request yet.")
    lines += ["", "## Ledger entries", "", "| seq | type | step | hash |", "|---|---|---|---|"]
    listed = []
    entries = ws.ledger.verify()
    for e in entries:
        related = e.data.get("request_id") == request_id or (e.step in steps) or e in revoked
        if related or (e.type == REPEAT_ENTRY and e.data.get("request_id") == request_id):
            lines.append(f"| {e.seq} | {e.type} | {e.step or ''} | `{e.hash}` |")
            listed.append(e)
    lines += [
        "",
        f"Ledger head: entry {entries[-1].seq}, `{entries[-1].hash}`. Anyone holding this file can check that these entries are"
        " still in the ledger, unchanged and in order: `ume audit --certificate <this file>`.",
        "",
        "## Hashed sample ids",
        "",
    ]
    ws_anchor = certificate_anchor_block(ws, listed)
    lines += ["```", *sorted(hashed), "```", "", ws_anchor, ""]
    return "\n".join(lines)


def write_certificate(ws: Workspace, request_id: str, out_dir: Path) -> tuple[Path, Path]:
    """Write ``<id>.md`` and ``<id>.html`` into ``out_dir``."""
    markdown = certificate_markdown(ws, request_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out_dir / f"{request_id}.md", out_dir / f"{request_id}.html"
    md_path.write_text(markdown)
    anchors = next(line for line in markdown.splitlines() if line.startswith(f"<!-- {CERTIFICATE_MARK}"))
    body = markdown_to_html("\n".join(line for line in markdown.splitlines() if line != anchors), f"Deletion certificate {request_id}")
    html_path.write_text(body.replace("</body>", f"{anchors}\n</body>", 1) if "</body>" in body else f"{body}\n{anchors}\n")
    return md_path, html_path

