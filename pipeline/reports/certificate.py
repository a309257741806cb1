"""Deletion certificates: what a request resolved to, how it was honoured, and the evidence.

No raw data and no raw sample ids: only counts, hashed ids, component ids, versions, metrics and
ledger entry hashes, so the certificate can be handed to the data subject or an auditor.

The facts are gathered once (:func:`certificate_facts`) and written three ways: Markdown and HTML,
the human view, and an in-toto attestation (``<id>.intoto.json``): a v1 Statement whose subjects are
the weights of the version that serves without the samples and whose predicate (type
:data:`PREDICATE_TYPE`) holds the same facts, in a DSSE envelope signed with ``ledger.signing_key``
(unsigned Statement without a key). ``ume audit --certificate <id>.intoto.json`` verifies it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.errors import ConfigError
from pipeline.core.markdown import markdown_to_html
from pipeline.records.anchors import ATTESTATION_SUFFIX, CERTIFICATE_MARK, certificate_anchor_block, certificate_anchor_payload
from pipeline.records.debt import debts_of
from pipeline.records.deletion import REPEAT_ENTRY, REVOKED_ENTRY, DeletionLog, load_request
from pipeline.records.erasure import ErasureLog, erasure_state
from pipeline.records.workspace import Workspace

PREDICATE_TYPE = "https://ume.dev/deletion-certificate/v1"


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
    for component_id in manifest.component_ids:
        sidecar = ws.components.sidecar(component_id)
        rows.append({"id": sidecar.id, "kind": sidecar.kind, "sha256": sidecar.sha256, "held": len(hashed & set(sidecar.lineage))})
    return rows


def proof_facts(ws: Workspace, resolved: dict[str, Any], hashed: set[str]) -> dict[str, Any]:
    """The construction proof of an exact deletion: the served components, and how many of the samples each lineage holds."""
    version = int(resolved["version"])
    rows = lineage_rows(ws, version, hashed)
    champion = ws.registry.champion()
    now = None
    if champion is not None and champion != version:
        now = {"version": champion, "held": sum(r["held"] for r in lineage_rows(ws, champion, hashed))}
    return {
        "version": version,
        "manifest_hash": resolved["manifest_hash"],
        "components": rows,
        "held": sum(r["held"] for r in rows),
        "samples": len(hashed),
        "exact_by_construction": not any(r["held"] for r in rows),
        "current_champion": now,
    }


def proof_lines(proof: dict[str, Any]) -> list[str]:
    """The construction proof as Markdown."""
    version, held = proof["version"], proof["held"]
    lines = [
        "## Proof by construction",
        "",
        f"The version that serves without the samples, v{version} (manifest `{proof['manifest_hash'][:16]}`), is composed of",
        "the components below. A component's lineage, in the sidecar beside its weights, is the hashed id of every sample it was",
        "trained on; the weights are checked against their sha256 by `ume audit`.",
        "",
        "| component | kind | sha256 of its weights | the request's samples in its lineage |",
        "|---|---|---|---|",
        *(f"| `{r['id']}` | {r['kind']} | `{r['sha256']}` | {r['held']} |" for r in proof["components"]),
        "",
    ]
    if held:
        lines.append(f"**{held} of the request's samples are in the lineage of a served component: this version is not exact.**")
    else:
        lines.append(f"**None of the {proof['samples']} samples is in the lineage of any component of v{version}: the deletion is exact by construction.**")
    now = proof["current_champion"]
    if now is not None:
        lines += ["", f"The current champion, v{now['version']}, checked the same way now: {now['held']} of them in its lineage."]
    lines += ["", 'The components trained on them are under "Components affected"; the versions that served them, under "Versions revoked".', ""]
    return lines


def _forget_step(ws: Workspace, request_id: str) -> str | None:
    for key, step in ws.params.stream.items():
        if step.kind == "forget" and step.options.get("request") == request_id:
            return key
    return None


def _fmt(value: float | None) -> str:
    return "" if value is None or value != value else f"{value:.4f}"


def _number(value: Any) -> Any:
    """A value for JSON: NaN becomes null (JSON has no NaN)."""
    return None if isinstance(value, float) and value != value else value


def evidence_facts(results: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """Each forget check of the request on the candidate and on its control, with its verdict; values recorded without a threshold apart."""
    suffix = f"[{request_id}]"
    checks = [c | {"blocking": r["blocking"]} for r in results for c in r["checks"] if c["name"].endswith(suffix) and c.get("controlled")]
    recorded = [c for r in results for c in r["checks"] if c["name"].endswith(suffix) and c["threshold"] is None]
    return {
        "checks": [
            {
                "check": c["name"][: -len(suffix)],
                "candidate": _number(c["value"]),
                "control": _number(c["control"]),
                "threshold": _number(c["threshold"]),
                "higher_is_better": c["higher_is_better"],
                "verdict": c["verdict"],
                "blocking": bool(c["blocking"]),
            }
            for c in checks
        ],
        "conclusive": [c["name"][: -len(suffix)] for c in checks if c["verdict"] == "passed"],
        "recorded": [{"value": c["name"][: -len(suffix)], "candidate": _number(c["value"]), "control": _number(c.get("control"))} for c in recorded],
    }


def evidence_lines(evidence: dict[str, Any], resolved: dict[str, Any] | None) -> list[str]:
    """The evidence table: each forget check on the candidate and on its control, with its verdict.

    Only checks whose control (the un-forgotten model) fails them can show forgetting; the others
    are inconclusive and say so. Values recorded without a threshold are listed apart, as values.
    """
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
    for c in evidence["checks"]:
        sign = ">=" if c["higher_is_better"] else "<="
        cells = f"| {c['check']} | {_fmt(c['candidate'])} | {_fmt(c['control'])} | {sign} {_fmt(c['threshold'])} | {c['verdict']} |"
        lines.append(f"{cells} {'yes' if c['blocking'] else 'no (advisory)'} |")
    if evidence["conclusive"]:
        lines += ["", f"**Conclusive evidence: {', '.join(evidence['conclusive'])}.**"]
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
    if evidence["recorded"]:
        lines += ["", "Recorded values (measurements, not checks):", "", "| value | candidate | control |", "|---|---|---|"]
        lines += [f"| {c['value']} | {_fmt(c['candidate'])} | {_fmt(c['control'])} |" for c in evidence["recorded"]]
    return lines


def erasure_facts(ws: Workspace, request_id: str) -> dict[str, Any]:
    """When the request's pixels and weights were erased and what went (or when erasure is due)."""
    state = next(r for r in erasure_state(ws.ledger, ws.params.deletion.max_erasure_days) if r["request_id"] == request_id)
    entry = ErasureLog.read(ws.ledger).done.get(request_id)
    out: dict[str, Any] = {"state": state["state"], "deadline": state["deadline"], "erased_at": state["erased_at"]}
    if entry is not None:
        d = entry.data
        out |= {
            "rows_keys_destroyed": d["rows"],
            "components": [c["id"] for c in d["components"]],
            "versions": d["versions"],
            "report_images": d["reports"],
            "dvc_objects": d["dvc_objects"],
            "ledger_entry": {"seq": entry.seq, "hash": entry.hash},
        }
    return out


def erasure_lines(erasure: dict[str, Any]) -> list[str]:
    """The certificate's "Erasure" section."""
    lines = ["## Erasure", ""]
    if erasure["state"] != "erased":
        why = "the request is exact; `ume erase` (the DVC stage seal) erases it" if erasure["state"] == "due" else "erasure follows an exact deletion"
        return lines + [f"Not erased yet ({why}); deadline {erasure['deadline']} (deletion.max_erasure_days).", ""]
    lines += [
        f"**Erased at {erasure['erased_at']}** (ledger entry {erasure['ledger_entry']['seq']}, `{erasure['ledger_entry']['hash'][:16]}`):",
        "",
        f"- the pixels of {erasure['rows_keys_destroyed']} sample(s): their row keys destroyed (crypto-shredding), so no copy of"
        " store/data (workspace, DVC cache, DVC remote, backups) can be read for them;",
        f"- the weights of {len(erasure['components'])} component(s) trained on them"
        + (f" ({', '.join(f'`{c}`' for c in erasure['components'])})" if erasure["components"] else "")
        + f", removed from store/components, store/signed, the MLflow artifacts of version(s) {', '.join(f'v{v}' for v in erasure['versions']) or 'none'}"
        f" and {len(erasure['dvc_objects'])} DVC cache object(s); the sidecars (hashes, lineage) stay for the audit;",
        f"- {len(erasure['report_images'])} report image(s) that showed them, replaced.",
        "",
        "Forget checks of an erased request cannot read its samples: they rest on the evidence above and on the lineage proof"
        " (`erased_lineage`, run at every later gate).",
        "",
    ]
    return lines


def certificate_facts(ws: Workspace, request_id: str) -> dict[str, Any]:
    """Everything a certificate states, as JSON-ready data: what the Markdown shows and the attestation's predicate holds."""
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
    champion = ws.registry.champion()
    facts: dict[str, Any] = {
        "request": {
            "id": request_id,
            "selector": request.describe(),
            "reason": request.reason,
            "received": request.received,
            "samples": entry.data["count"],
            "scope": entry.data["scope"],
            "status": "resolved" if resolved else "pending",
            "state": debt.state,
            "deadline": debt.deadline,
            "max_debt_days": ws.params.deletion.max_debt_days,
            "exact_since": debt.exact_since,
            "hashed_ids": sorted(hashed),
        },
        "proof": proof_facts(ws, resolved.data, hashed) if resolved and resolved.data.get("exact") else None,
        "resolution": None,
    }
    if resolved:
        r = resolved.data
        facts["resolution"] = {
            "step": step_key,
            "method": r["method"],
            "exact": bool(r["exact"]),
            "debt_samples": r["debt_samples"],
            "version": r["version"],
            "manifest_hash": r["manifest_hash"],
            "current_champion": champion,
            "note": r.get("note"),
            "phases": [
                {"step": e.step, "method": e.data["method"], "exact": bool(e.data["exact"]), "version": e.data["version"],
                 "debt_samples": e.data["debt_samples"], "recorded": e.time}
                for e in phases
            ],
        }
    facts["components_affected"] = _affected_components(ws, hashed)
    revoked = [e for e in ws.ledger.of_type(REVOKED_ENTRY) if any(request_id in v for v in e.data["by_request"].values())]
    facts["versions_revoked"] = sorted({int(v) for e in revoked for v, reqs in e.data["by_request"].items() if request_id in reqs})
    facts["erasure"] = erasure_facts(ws, request_id)
    facts["evidence"] = None
    evidence = ws.reports_dir / (step_key or "") / "results.json"
    second = ws.reports_dir / f"{step_key}-attempt2" / "results.json"
    if step_key and second.exists():  # the fallback attempt decided
        evidence = second
    if step_key and evidence.exists():
        facts["evidence"] = evidence_facts(json.loads(evidence.read_text())["results"], request_id)
        facts["evidence"]["report"] = f"{evidence.parent.name}/{evidence.name}"
        facts["evidence"]["first_attempt"] = None
        if evidence == second:
            first = json.loads((ws.reports_dir / step_key / "results.json").read_text())["decision"]
            facts["evidence"]["first_attempt"] = {"decision": first["label"], "reason": first["reason"]}
    listed, rows = [], []
    entries = ws.ledger.verify()
    for e in entries:
        related = e.data.get("request_id") == request_id or (e.step in steps) or e in revoked or request_id in e.data.get("requests", ())
        if related or (e.type == REPEAT_ENTRY and e.data.get("request_id") == request_id):
            rows.append({"seq": e.seq, "type": e.type, "step": e.step, "hash": e.hash})
            listed.append(e)
    anchors = certificate_anchor_payload(ws, listed)
    facts["ledger"] = {
        "model": anchors["model"],
        "entries": rows,
        "head": {"seq": anchors["head"][0], "hash": anchors["head"][1]},
        **({"head_signature": anchors["head_signature"]} if "head_signature" in anchors else {}),
    }
    served = facts["resolution"]["version"] if facts["resolution"] else champion
    if served is not None:
        facts["served_version"] = {
            "version": served,
            "manifest_hash": ws.manifest_of(int(served)).hash,
            "why": "serves without the request's samples" if resolved else "the current champion (the request is pending)",
            "weights": [{"name": f"{r['id']}.safetensors", "kind": r["kind"], "sha256": r["sha256"]} for r in lineage_rows(ws, int(served), hashed)],
        }
    return facts


def render_markdown(facts: dict[str, Any]) -> str:
    """The certificate as Markdown, from :func:`certificate_facts`."""
    req, resolution = facts["request"], facts["resolution"]
    lines = [
        f"# Deletion certificate `{req['id']}`",
        "",
        "## Request",
        "",
        "| field | value |",
        "|---|---|",
        f"| selector | {req['selector']} |",
        f"| reason | {req['reason']} |",
        f"| received | {req['received']} |",
        f"| samples resolved | {req['samples']} |",
        f"| scope | {req['scope']} |",
        f"| status | {req['status']} ({req['state']}) |",
        f"| deadline | {req['deadline']} (received + {req['max_debt_days']:g} days) |",
        f"| became exact | {req['exact_since'] or 'not yet'} |",
        "",
    ]
    if facts["proof"] is not None:
        lines += proof_lines(facts["proof"])
    lines += ["## How it was honoured", ""]
    if resolution:
        r = resolution
        lines += [
            "| field | value |",
            "|---|---|",
            f"| stream step | `{r['step']}` |",
            f"| method | {r['method']} |",
            f"| exact | {'yes' if r['exact'] else 'no: approximate removal, recorded as deletion debt'} |",
            f"| samples in deletion debt | {r['debt_samples']} |",
            f"| version serving without them | {r['version']} (manifest `{r['manifest_hash'][:16]}`) |",
            f"| current champion | {r['current_champion']} |",
            "",
        ]
        if len(r["phases"]) > 1:  # a two-phase deletion: approximate at once, then exact
            lines += ["Phases:", "", "| phase | step | method | exact | version | debt samples | recorded |", "|---|---|---|---|---|---|---|"]
            for number, d in enumerate(r["phases"], start=1):
                lines.append(
                    f"| {number} | `{d['step']}` | {d['method']} | {'yes' if d['exact'] else 'no'} | v{d['version']} | {d['debt_samples']} | {d['recorded']} |"
                )
            lines.append("")
    else:
        lines += ["The request is received and its samples are excluded from all data use; the model step is pending.", ""]
    lines += ["## Components affected", "", "| component | kind | influenced by | covers | made by |", "|---|---|---|---|---|"]
    lines += [f"| `{c['id']}` | {c['kind']} | {c['influenced_by']} | {c['covers']} | {c['method']} |" for c in facts["components_affected"]]
    lines += ["", "## Versions revoked", "", ", ".join(f"v{v}" for v in facts["versions_revoked"]) or "none", ""]
    lines += erasure_lines(facts["erasure"])
    lines += ["## Evidence", ""]
    evidence = facts["evidence"]
    if evidence is not None:
        if evidence["first_attempt"]:
            first = evidence["first_attempt"]
            lines += [f"First attempt: {first['decision']} ({first['reason']}); the exact fallback decided.", ""]
        lines += evidence_lines(evidence, resolution)
    else:
        lines.append("No forget step has run for this request yet.")
    lines += ["", "## Ledger entries", "", "| seq | type | step | hash |", "|---|---|---|---|"]
    lines += [f"| {e['seq']} | {e['type']} | {e['step'] or ''} | `{e['hash']}` |" for e in facts["ledger"]["entries"]]
    head = facts["ledger"]["head"]
    lines += [
        "",
        f"Ledger head: entry {head['seq']}, `{head['hash']}`. Anyone holding this file can check that these entries are"
        " still in the ledger, unchanged and in order: `ume audit --certificate <this file>`. The same facts, as an in-toto"
        f" attestation: `{req['id']}{ATTESTATION_SUFFIX}`.",
        "",
        "## Hashed sample ids",
        "",
    ]
    block = certificate_anchor_block(_anchor_payload(facts["ledger"]))
    lines += ["```", *req["hashed_ids"], "```", "", block, ""]
    return "\n".join(lines)


def _anchor_payload(ledger: dict[str, Any]) -> dict[str, Any]:
    """The HTML comment's anchors, from the facts' ledger section."""
    payload: dict[str, Any] = {
        "model": ledger["model"],
        "entries": [[e["seq"], e["hash"]] for e in ledger["entries"]],
        "head": [ledger["head"]["seq"], ledger["head"]["hash"]],
    }
    if "head_signature" in ledger:
        payload["head_signature"] = ledger["head_signature"]
    return payload


def certificate_markdown(ws: Workspace, request_id: str) -> str:
    """The certificate as Markdown."""
    return render_markdown(certificate_facts(ws, request_id))


def attestation(ws: Workspace, facts: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The in-toto Statement of the facts, in a DSSE envelope signed with ``ledger.signing_key`` (else bare); and whether signed.

    Subjects: every weights file of the version that serves without the samples (the current champion
    while the request is pending), named as in the version's files (``<component id>.safetensors``,
    ``store/signed/v<N>/``) with their SHA-256. Predicate: the facts (:data:`PREDICATE_TYPE`).
    """
    from pipeline.core import attestation as intoto
    from pipeline.core import signing

    served = facts.get("served_version")
    if served is None:  # no champion yet: no weights to make the subject of a Statement
        return None, False
    body = intoto.statement([(w["name"], w["sha256"]) for w in served["weights"]], PREDICATE_TYPE, facts)
    key = ws.params.signing_key_path
    if key is None:
        return body, False
    return intoto.sign_envelope(signing.load_private_key(key), body), True


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_certificate(ws: Workspace, request_id: str, out_dir: Path) -> tuple[Path, Path, Path | None, bool]:
    """Write ``<id>.md``, ``<id>.html`` and ``<id>.intoto.json`` (none while no version is served) into ``out_dir``;
    the paths, and whether the attestation is signed."""
    facts = certificate_facts(ws, request_id)
    markdown = render_markdown(facts)
    document, signed = attestation(ws, facts)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path, intoto_path = out_dir / f"{request_id}.md", out_dir / f"{request_id}.html", out_dir / f"{request_id}{ATTESTATION_SUFFIX}"
    md_path.write_text(markdown)
    anchors = next(line for line in markdown.splitlines() if line.startswith(f"<!-- {CERTIFICATE_MARK}"))
    body = markdown_to_html("\n".join(line for line in markdown.splitlines() if line != anchors), f"Deletion certificate {request_id}")
    html_path.write_text(body.replace("</body>", f"{anchors}\n</body>", 1) if "</body>" in body else f"{body}\n{anchors}\n")
    if document is None:
        return md_path, html_path, None, False
    _write(intoto_path, json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return md_path, html_path, intoto_path, signed
