"""``ume``: the command line. Stages (``prepare``, ``base``, ``step``) are what ``dvc.yaml`` runs.

Every user-facing error is one line on stderr (``ume: error: <file>: field '<f>': <what>``) and
exit code 2; nothing is written before the whole of ``params.yaml`` validated.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from pipeline.core.errors import ConfigError, UmeError

if TYPE_CHECKING:
    from pipeline.records.workspace import Workspace
from pipeline.core.faults import crash_point

EXIT_USER_ERROR = 2
EXIT_CHECK_FAILED = 1


def _cmd_prepare(args: argparse.Namespace) -> int:
    from pipeline.steps import open_workspace, run_prepare

    ws = open_workspace(args.params)
    if not ws.primary:  # started on every rank by an external launcher (torchrun, srun): rank 0 prepares
        return 0
    info = run_prepare(ws)
    slices = ", ".join(f"{k} {v}" for k, v in info["slices"].items())
    groups = ", ".join(f"{k} {v}" for k, v in info["groups"].items())
    print(f"prepared {info['samples']} samples; slices: {slices}; groups: {groups}"[:160])
    return 0


def _cmd_base(args: argparse.Namespace) -> int:
    from pipeline.steps import open_workspace, run_base

    ws = open_workspace(args.params)
    outcome = run_base(ws)
    _finish(ws, outcome.record)
    return 0


def _cmd_step(args: argparse.Namespace) -> int:
    from pipeline.steps import open_workspace, run_step

    ws = open_workspace(args.params)
    ws.params.step(args.step_id)
    outcome = run_step(ws, args.step_id)
    _finish(ws, outcome.record)
    crash_point("dvc.between_stages")
    return 0


def _finish(ws: Workspace, record: dict) -> None:
    """Print the outcome (rank 0 only) and, in a DDP run, wait until every rank is done."""
    from pipeline.core import ranks

    if ws.primary:
        _print_outcome(record)
    ranks.finish()


def _inconclusive(record: dict) -> list[str]:
    """The forget checks of a step that could not tell (their control passed too), from the record's evidence."""
    names: list[str] = []
    for entry in (record.get("evidence") or {}).values():
        if isinstance(entry, dict):
            names += [str(c.get("behaviour") or c.get("check")) for c in entry.get("checks", []) if isinstance(c, dict) and c.get("verdict") == "inconclusive"]
    return list(dict.fromkeys(names))


def outcome_line(record: dict, width: int = 160) -> str:
    """One line per decision: step, decision, version, champion, seconds, what failed or could not tell."""
    decision = str(record["decision"])
    head = f"[{record['id']}] {decision} v{record['version']}, champion v{record['champion_after']}, {record['seconds']} s"
    parts = [head]
    failing = [str(f).split(" ")[0] for f in record.get("failing") or []]
    if failing:
        parts.append(f"failed: {', '.join(failing)}")
    elif decision != "promoted" and record.get("reason"):
        parts.append(str(record["reason"]))
    unsure = _inconclusive(record)
    if unsure:
        parts.append(f"inconclusive: {', '.join(unsure)}")
    line = "; ".join(parts)
    return line if len(line) <= width else line[: width - 1] + "…"


def _print_outcome(record: dict) -> None:
    from pipeline.core.console import verbose

    print(outcome_line(record))
    if verbose():
        print(f"[{record['id']}] {record['composition']}: {record['reason']}")
        print(f"[{record['id']}] " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(record["metrics"].items())))


def _as_of(text: str | None):
    """``--as-of``: judge deadlines at this time (an audit of the past, or a test's fake clock)."""
    if text is None:
        return None
    from pipeline.records.debt import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise ConfigError(f"expected an ISO 8601 time such as 2027-01-31T00:00:00Z, got {text!r}", field="--as-of") from None


def _cmd_status(args: argparse.Namespace) -> int:
    from pipeline.records.workspace import Workspace
    from pipeline.reports.status import collect_status, render_status

    ws = Workspace.open(args.params)
    status = collect_status(ws, now=_as_of(args.as_of))
    print(json.dumps(status, indent=1) if args.json else render_status(status))
    if args.check:
        blocked = [s["id"] for s in status["steps"] if s["decision"] == "blocked"]
        pending = [s["id"] for s in status["steps"] if s["decision"] == "pending"]
        requests = status["pending_requests"]
        overdue = status["overdue_requests"]
        debt = status["deletion_debt"]
        unsynced = status["ui_requests"]["unsynced"]
        unerased = status["overdue_erasures"]
        if blocked or pending or requests or overdue or debt["over_sample_limit"] or unsynced or unerased:
            parts = (
                f"blocked: {', '.join(blocked)}" if blocked else "",
                f"pending: {', '.join(pending)}" if pending else "",
                f"deletion requests not yet honoured: {', '.join(requests)}" if requests else "",
                f"deletion deadline passed (received + {debt['max_days']:g} days): {', '.join(overdue)}" if overdue else "",
                f"deletion debt {debt['samples']} samples > deletion.max_debt_samples {debt['max_samples']}" if debt["over_sample_limit"] else "",
                f"not synced from the MLflow UI: {'; '.join(unsynced)}" if unsynced else "",
                f"erasure overdue (received + {status['max_erasure_days']:g} days; run `ume erase`): {', '.join(unerased)}" if unerased else "",
            )
            what = "; ".join(p for p in parts if p)
            print(f"ume status --check: {what}", file=sys.stderr)
            return EXIT_CHECK_FAILED
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from pipeline.records.workspace import Workspace
    from pipeline.reports.audit import audit_workspace

    ws = Workspace.open(args.params)
    report = audit_workspace(ws, certificates=[Path(p) for p in args.certificate], require_signatures=args.require_signatures, compose=args.compose)
    for line in report.checked:
        print(f"ok: {line}")
    for line in report.problems:
        print(f"FAIL: {line}", file=sys.stderr)
    print("audit passed" if report.ok else f"audit failed: {len(report.problems)} problem(s)")
    return 0 if report.ok else EXIT_CHECK_FAILED


def _cmd_erase(args: argparse.Namespace) -> int:
    from pipeline.records.workspace import Workspace
    from pipeline.steps.erase import erase_on_remote, run_erasure

    ws = Workspace.open(args.params)
    if not ws.primary:
        return 0
    for outcome in run_erasure(ws):
        e = outcome.entry
        print(
            f"erased {', '.join(e['requests'])} at {e['erased_at']}: {e['rows_shredded']} row key(s) destroyed, "
            f"{len(e['components'])} component(s)' weights in {len(e['versions'])} version(s), {len(e['reports'])} report image(s), "
            f"{e['dvc_cache_objects_removed']} DVC cache object(s), {e['mlflow_artifacts_deleted']} MLflow artifact(s), "
            f"{e['reference_shadows']} reference shadow(s), {e['cache_files']} row-cache file(s)"
        )
    if args.remote is not None:
        name, removed, known = erase_on_remote(ws, args.remote or None)
        print(f"DVC remote {name!r}: {removed} erased object(s) deleted ({known - removed} of the {known} the ledger lists were not there)")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from pipeline.core.signing import generate_keypair

    private, public = generate_keypair(args.out)
    print(f"wrote {private} (EC P-256, private: keep it out of the repository; point UME_SIGNING_KEY or ledger.signing_key at it)")
    print(f"wrote {public} (public: set ledger.public_key to it; anyone with it can check signed anchors, models and certificates)")
    return 0


def _cmd_warm(args: argparse.Namespace) -> int:
    from pipeline.core import warm

    if not warm.enabled():
        print("warm process: off (UME_WARM=0, or no pidfd/fd passing on this platform); every command runs cold")
        return 0 if args.action != "start" else EXIT_CHECK_FAILED
    if args.action == "start":
        if not warm.start(wait=True):
            print(f"ume: error: the warm process did not start; see {warm.socket_path().with_suffix('.log')}", file=sys.stderr)
            return EXIT_CHECK_FAILED
    elif args.action == "stop":
        print("warm process: stopped" if warm.stop() else "warm process: none was running")
        return 0
    info = warm.state()
    print(f"warm process: pid {info['pid']}, socket {info['socket']}" if info["listening"] else f"warm process: not running ({info['socket']})")
    return 0


def append_stream_step(params_path: Path, key: str, entry: dict) -> None:
    """Append one step to ``stream:`` keeping the file's comments; ``stream`` must be the last section."""
    from pipeline.core.streamfile import stream_text_with, write_stream_text

    write_stream_text(params_path, stream_text_with(params_path, {key: entry}))


def _dvc_stages() -> tuple[str | None, dict | None]:
    """The ``dvc`` command on PATH and the stages of ``./dvc.yaml`` (None when either is missing)."""
    if not Path("dvc.yaml").exists():
        return shutil.which("dvc"), None
    return shutil.which("dvc"), (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("stages") or {}


def _run_appended_step(params_path: Path, key: str) -> int:
    """Run a freshly appended step through DVC (so dvc.lock records it), or in-process without DVC.

    Through DVC the ``seal`` stage (when ``dvc.yaml`` has one) runs right after the step, in the same
    ``dvc repro`` and in that order, so that ``dvc.lock`` records the shared state too.
    """
    dvc, stages = _dvc_stages()
    if dvc and stages is not None and params_path.resolve() == Path("params.yaml").resolve():
        return subprocess.call([dvc, "repro", "--single-item", f"step@{key}", *(["seal"] if "seal" in stages else [])])
    from pipeline.steps import open_workspace, run_step

    outcome = run_step(open_workspace(params_path), key)
    _print_outcome(outcome.record)
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline.steps import check_rollback_drop, check_rollback_to, open_workspace, validate_params

    params_path = Path(args.params)
    ws = open_workspace(params_path)
    stream = ws.params.stream
    parent = list(stream)[-1] if stream else "base"
    if args.to is not None:
        check_rollback_to(ws, args.to, field="--to")
        entry: dict = {"kind": "rollback", "parent": parent, "to": args.to}
    else:
        if args.drop not in stream:
            raise ConfigError(f"unknown step {args.drop!r} (stream: {', '.join(stream) or 'empty'})", field="--drop")
        check_rollback_drop(ws, args.drop, field="--drop")
        entry = {"kind": "rollback", "parent": parent, "drop": args.drop}
    if args.reason:
        entry["reason"] = args.reason
    key = f"rollback-{len(stream) + 1:02d}"
    while key in stream:
        key += "x"
    original = params_path.read_text()
    append_stream_step(params_path, key, entry)
    try:
        validate_params(open_workspace(params_path).params)
    except UmeError:
        params_path.write_text(original)
        raise
    print(f"appended stream step {key}: {entry}")
    try:
        code = _run_appended_step(params_path, key)
    except UmeError:
        code = EXIT_USER_ERROR
        if not ws.ledger.of_type("step_started") or ws.ledger.of_type("step_started")[-1].step != key:
            params_path.write_text(original)
        raise
    started = any(e.step == key for e in ws.ledger.of_type("step_started"))
    if code != 0 and not started:
        params_path.write_text(original)
        print(f"removed stream step {key} again: it was refused before anything was written", file=sys.stderr)
        return EXIT_USER_ERROR
    return code


def _reseal() -> None:
    """Record the shared state in ``dvc.lock`` again (the ``seal`` stage) after a sync wrote the ledger and MLflow only."""
    dvc, stages = _dvc_stages()
    if dvc and stages and "seal" in stages:
        subprocess.call([dvc, "repro", "--single-item", "seal"], stdout=subprocess.DEVNULL)


def _cmd_sync(args: argparse.Namespace) -> int:
    from pipeline.records.story import publish_story
    from pipeline.records.ui_requests import QUEUED, ui_history
    from pipeline.steps import announce_sync, open_workspace, take_ui_requests

    params_path = Path(args.params)
    ws = open_workspace(params_path)
    result = take_ui_requests(ws, seen_by="ume sync")
    announce_sync(result, run_hint=False)
    queued = [e.data["step"] for e in ui_history(ws) if e.data["outcome"] == QUEUED and ws.step_record(e.data["step"]) is None]
    for key in queued:
        crash_point("sync.before_run")
        code = _run_appended_step(params_path, key)
        if code != 0:
            return code
    if not queued:
        publish_story(ws)
        if result.changed:
            _reseal()
    if not result.changed and not queued:
        print(f"in sync: the champion alias is where the ledger put it (v{ws.registry.champion()}), and no version carries a ume.drop tag")
    return EXIT_CHECK_FAILED if result.refused else 0


def _cmd_forget(args: argparse.Namespace) -> int:
    from pipeline.data.table import SampleTable
    from pipeline.model.lineage import version_lineage
    from pipeline.records.deletion import REPEAT_ENTRY, check_leaves_data, ingest, make_request, request_path, resolve, write_request
    from pipeline.steps import open_workspace

    params_path = Path(args.params)
    ws = open_workspace(params_path)
    if args.samples:
        path = Path(args.samples)
        if not path.is_file():
            raise ConfigError("sample id file not found", file=str(path), field="--samples")
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        if not ids:
            raise ConfigError("no sample ids in the file", file=str(path), field="--samples")
        selector: dict = {"samples": sorted(set(ids))}
    else:
        kind = next(k for k in ("owner", "label", "group") if getattr(args, k) is not None)
        selector = {kind: getattr(args, kind)}
    request = make_request(selector, args.reason, args.method)
    if args.method:
        from edits import get_method

        get_method("forget", args.method, file="command line", where="--method")
    table = SampleTable.load(ws.data_dir)
    sample_ids = resolve(request, table, file=args.samples or "command line")
    from pipeline.records.deletion import DeletionLog

    existing = request_path(request.id, ws.params.requests_dir)
    log = DeletionLog.read(ws.ledger)
    received = request.id in log.requests
    steps = [k for k, s in ws.params.stream.items() if s.kind == "forget" and s.options.get("request") == request.id]
    if not received:
        check_leaves_data(table, log.hashed_ids(), sample_ids, file=args.samples or "command line")
    if received and steps:
        ws.ledger.append(REPEAT_ENTRY, {"request_id": request.id, "reason": request.reason}, step=None)
        print(f"request {request.id} ({request.describe()}) was already received; recorded the repeat (stream step: {', '.join(steps)})")
        return 0
    champion = ws.registry.champion()  # read before any write: an unreachable registry changes nothing
    served = version_lineage(ws.manifest_of(champion), ws.components) if champion is not None else None
    key = steps[0] if steps else None
    new_text = None
    if key is None:
        from edits.forget import EXACT_METHODS
        from pipeline.core.streamfile import new_step_key, stream_text_with

        stream = ws.params.stream
        key = new_step_key(stream, "forget")
        entries: dict = {key: {"kind": "forget", "parent": list(stream)[-1] if stream else "base", "request": request.id}}
        if args.method:
            entries[key]["method"] = args.method
        if args.method and args.method not in EXACT_METHODS and not args.defer_exact:
            # Two-phase deletion: the approximate step serves a forgotten model at once, the exact step
            # right after it (same `dvc repro`) replaces its overlay and pays the deletion debt.
            # Phase 1 needs no fallback of its own: if its candidate is blocked, phase 2 is the exact path.
            entries[key]["fallback"] = "none"
            entries[f"{key}-exact"] = {"kind": "forget", "parent": key, "request": request.id, "method": "exact"}
        new_text = stream_text_with(params_path, entries)  # validated before anything is written
    # Write-ahead: the ledger first. From here on no consumer reads the samples, and a crash before the
    # request file or the stream step is written leaves the request visible (`ume status --check`);
    # running the same `ume forget` again finishes it.
    ingest(ws.ledger, request, sample_ids, served, champion)
    crash_point("forget.ingested")
    if not existing.exists():
        write_request(request, ws.params.requests_dir)
    crash_point("forget.request_written")
    if new_text is not None:
        from pipeline.core.streamfile import write_stream_text

        write_stream_text(params_path, new_text)
    print(f"received deletion request {request.id}: {request.describe()} -> {len(sample_ids)} samples, now excluded from all data use")
    phases = f"stream steps {key} ({args.method}) then {key}-exact (exact)" if new_text and f"{key}-exact:" in new_text else f"stream step {key}"
    print(f"request file {existing}; {phases}; run `dvc repro` to honour it")
    return 0


def _cmd_certificate(args: argparse.Namespace) -> int:
    from pipeline.records.workspace import Workspace
    from pipeline.reports.certificate import write_certificate

    ws = Workspace.open(args.params)
    md, html_path, intoto, signed = write_certificate(ws, args.request_id, Path(args.out))
    print(f"wrote {md} and {html_path}")
    if intoto is None:
        print("no in-toto attestation: no version is served yet, so there are no weights to attest")
    elif signed:
        print(f"wrote {intoto} (in-toto attestation: a DSSE envelope signed with ledger.signing_key; `ume audit --certificate {intoto}`)")
    else:
        print(f"wrote {intoto} (an unsigned in-toto Statement: no ledger.signing_key or UME_SIGNING_KEY is set)")
    return 0


def _cmd_references(args: argparse.Namespace) -> int:
    from pipeline.records.workspace import Workspace
    from pipeline.steps.references import prepare_references

    ws = Workspace.open(args.params)
    if not ws.primary:
        return 0
    report = prepare_references(ws, args.version, ahead=args.ahead)
    if report.note:
        print(f"v{report.version}: {report.note}" if report.version is not None else report.note)
        return 0
    print(
        f"reference bank of v{report.version}: {report.shadows} shadow(s), {report.trained} trained now, {report.purged} purged "
        f"(trained on a deleted sample), {report.stale} stale (never saw a slice the version learned since), in {report.seconds:.1f} s: {report.path}"
    )
    return 0


BENCH_MODULES = {
    "forget": "bench.forget",
    "forget-exact": "bench.forget_exact",
    "forget-evidence": "bench.forget_evidence",
    "overlays": "bench.overlays",
    "compress": "bench.compress",
    "families": "bench.families",
    "scale": "bench.scale",
    "gpu-demo": "bench.gpu_demo",
    "lifelong": "bench.lifelong",
    "startup": "bench.startup",
    "erasure": "bench.erasure",
    "speed": "bench.speed",
}


def _cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark module as its own program: the package never imports ``bench/`` (imports only go down)."""
    return subprocess.call([sys.executable, "-m", BENCH_MODULES[args.suite], *args.rest])


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used for ``--help`` in the README)."""
    parser = argparse.ArgumentParser(prog="ume", description="Change a deployed image classifier safely.")
    parser.add_argument("--params", default="params.yaml", help="path of params.yaml (default: ./params.yaml)")
    parser.add_argument("--verbose", action="store_true", help="every metric and every library message on the terminal (or UME_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("prepare", help="build the sample table into store/data (DVC stage 'prepare')").set_defaults(fn=_cmd_prepare)
    sub.add_parser("base", help="train, gate and register the clean base (DVC stage 'base')").set_defaults(fn=_cmd_base)
    p = sub.add_parser("step", help="run one stream step: operator, behaviours, gate (DVC stage 'step@ID')")
    p.add_argument("step_id")
    p.set_defaults(fn=_cmd_step)
    p = sub.add_parser("status", help="champion, steps and decisions, deleted samples")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any stream step is blocked or pending, a deletion request is not yet honoured, "
        "a deletion deadline has passed, the deletion debt exceeds deletion.max_debt_samples, "
        "or a change made in the MLflow UI is not synced yet",
    )
    p.add_argument("--as-of", help="judge deletion deadlines at this UTC time (ISO 8601) instead of now")
    p.set_defaults(fn=_cmd_status)
    p = sub.add_parser("audit", help="verify the ledger's hash chain, that the registry agrees, and every anchor of the ledger written outside it")
    p.add_argument(
        "--certificate",
        action="append",
        default=[],
        metavar="FILE",
        help="a deletion certificate (.md, .html, or the .intoto.json attestation, whose DSSE signature is verified with ledger.public_key):"
        " check its ledger entries are still in the ledger, unchanged, in order (repeatable)",
    )
    p.add_argument(
        "--require-signatures",
        action="store_true",
        help="fail on an anchor, a promoted version or an attestation without a signature (with ledger.public_key set)",
    )
    p.add_argument(
        "--compose",
        action="store_true",
        help="compose the champion even where this code composed the same components before (store/cache/<manifest>/composed.json)",
    )
    p.set_defaults(fn=_cmd_audit)
    p = sub.add_parser(
        "keygen",
        help="write an EC P-256 key pair that signs ledger anchors, promoted models (OpenSSF model signing) and certificates"
        " (ledger.signing_key / ledger.public_key)",
    )
    p.add_argument("--out", default=".", help="directory for ume-ledger.key (private, mode 0600) and ume-ledger.pub")
    p.set_defaults(fn=_cmd_keygen)
    p = sub.add_parser(
        "sync",
        help="read a champion alias moved (or a ume.drop tag set) in the MLflow UI as a rollback: run it through the gate "
        "and the ledger, or refuse it (alias moved back, reason tagged on the version); exit 1 when refused",
    )
    p.set_defaults(fn=_cmd_sync)
    p = sub.add_parser(
        "references", help="train a version's reference bank now, so a later deletion's gate does not (off the deletion's critical path)"
    )
    p.add_argument("--version", type=int, help="the version (default: the champion)")
    p.add_argument("--ahead", action="store_true", help="as the seal stage runs it: no champion yet is a note, not an error")
    p.set_defaults(fn=_cmd_references)
    p = sub.add_parser("erase", help="erase exact deletion requests' pixels and weights from every store (the DVC stage seal runs it)")
    p.add_argument(
        "--remote",
        nargs="?",
        const="",
        help="also delete every erased object from this DVC remote (no name: the default remote); run after `dvc push` elsewhere",
    )
    p.set_defaults(fn=_cmd_erase)
    p = sub.add_parser("rollback", help="append a rollback step to the stream and run it now")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--to", type=int, help="an earlier promoted version to make champion again")
    group.add_argument("--drop", help="a step id whose overlay to remove (the result goes through the gate)")
    p.add_argument("--reason", help="why (recorded in params.yaml and the ledger)")
    p.set_defaults(fn=_cmd_rollback)
    p = sub.add_parser("forget", help="file a deletion request and append a forget step to the stream")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--owner", help="every sample of this data subject")
    group.add_argument("--samples", help="a file with one sample id per line")
    group.add_argument("--label", help="a whole class (class name)")
    group.add_argument("--group", help="every sample of this group")
    p.add_argument("--reason", required=True, help="legal basis or ticket, e.g. 'GDPR art. 17'")
    p.add_argument("--method", help="unlearning method (default: exact; see docs/deletion.md)")
    p.add_argument(
        "--defer-exact",
        action="store_true",
        help="with an approximate --method: do not append the exact step now; it is appended when a deletion-debt limit is reached",
    )
    p.set_defaults(fn=_cmd_forget)
    p = sub.add_parser(
        "bench",
        help="run a benchmark: forget, forget-exact, forget-evidence (power and false positives of the forget checks), "
        "overlays (serving latency), compress (quantize and prune the champion), families (every step kind per timm family), "
        "scale (step time and memory against data size and history length, the gate against the forward floor), "
        "gpu-demo (the demo stream with resnet18 on a GPU in bf16-mixed, timed per stage), lifelong (compositions on "
        "streams that bring something new), startup (commands cold against the warm process), erasure (after make demo) or speed "
        "(issue 31 in one run: the demo pipeline, one all-at-once training as the reference, deletion and learn steps against it, "
        "start-up, compression)",
    )
    p.add_argument("suite", choices=list(BENCH_MODULES))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the benchmark (see --help of each)")
    p.set_defaults(fn=_cmd_bench)
    p = sub.add_parser(
        "warm",
        help="the warm process that runs every command with torch, Lightning and MLflow imported already "
        "(started by the first command, exits after UME_WARM_IDLE s idle; UME_WARM=0: off; docs/start-up.md)",
    )
    p.add_argument("action", choices=["start", "stop", "status"])
    p.set_defaults(fn=_cmd_warm)
    p = sub.add_parser("certificate", help="write a deletion certificate (Markdown and HTML)")
    p.add_argument("request_id")
    p.add_argument("--out", default="certificates", help="output directory (default: certificates/)")
    p.set_defaults(fn=_cmd_certificate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ume`` console script."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        os.environ["UME_VERBOSE"] = "1"
    try:
        code = args.fn(args)
    except UmeError as exc:
        print(f"ume: error: {exc}", file=sys.stderr)
        code = EXIT_USER_ERROR
    except Exception as exc:  # MLflow unreachable from code that does not go through the registry (Lightning's logger)
        from pipeline.records.registry import unreachable_error

        error = unreachable_error(exc, _tracking_uri(args.params))
        if error is None:
            raise
        print(f"ume: error: {error}", file=sys.stderr)
        code = EXIT_USER_ERROR
    sys.exit(code)


def _tracking_uri(params: str) -> str:
    """``registry.tracking_uri`` of ``params``, for an error message (the path itself when it cannot be read)."""
    try:
        return str(yaml.safe_load(Path(params).read_text())["registry"]["tracking_uri"])
    except Exception:  # noqa: BLE001 - only for the message
        return f"the tracking server of {params}"


if __name__ == "__main__":
    main()
