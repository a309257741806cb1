"""Scale: step time and peak memory against data size and history length, the gate against the forward floor.

    python -m bench.scale [--base-size 1800] [--arch test_resnet] [--history 20] [--out bench/results]
    python -m bench.scale --quick --out /tmp/scale      # a small smoke run of every measurement

Every number is measured on a generated RGB image folder (sklearn's digits, upsampled into 32 px
colour images with a random shift, colours and noise; 10 classes) run as a user's own data
(``data.source: folder``, README "Bring your own images"), each stage as its own ``ume`` process, as
``dvc repro`` runs it:

1. **Data size.** Projects of 1x, 4x and 16x ``--base-size`` images (40% licensed base, 15% test, 5%
   canary, 40% one update slice ``u1``): ``ume prepare``, ``ume base``, then one ``learn`` step of
   ``--epochs`` epochs on ``u1``. The step's wall time and peak resident memory are its process's
   (``os.wait4``: ``ru_maxrss`` of that child alone); the training-sample count is the overlay's own
   (new plus replayed samples, from its sidecar).
2. **History length.** One project of ``--base-size`` images whose update data is split by the
   manifest's ``slice`` column into ``u1..u<--history>``, learned by a stream of that many steps,
   each its own ``ume step`` process: all times, the last over the first, and the median of the
   last three over the median of the first three.
3. **Gate against the forward floor.** After each size's step, a probe process rebuilds the step's
   behaviour context and runs the suite as the step did (candidate and champion composed, the
   suite over every split), twice: the first run pays pytest's collection and the specs' imports
   (the fixed start-up), the second is the suite's own cost. The floor is one forward pass of the
   candidate over every sample the suite evaluates (test, canary, retain, forget and edit cases): the
   champion's rows are cached from its own promotion, so evaluating the candidate once is the least a
   gate can do. The same pass of the champion is reported beside it (a step's candidate carries one
   more overlay than its champion, so it costs more per sample).
4. **No-change ``dvc repro`` and start-up.** The history project is a DVC project: after its stream
   ``dvc commit -f`` records it, ``dvc repro`` runs twice and the second is timed (it must say that
   nothing changed). Start-up: the median of ``--repeats`` runs of an empty interpreter, ``import
   pipeline.cli``, ``import pipeline.steps`` (what every stage imports), ``ume --help``, ``ume status``.
5. **Families.** The step-kind matrix of ``ume bench families`` (``bench/results/families.json``),
   copied as ``ok`` / ``refused: <reason>`` / ``failed: <error>``.

Results: ``<out>/scale.{json,md,png}``. Nothing is asserted: the goals are reported met or not met.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bench import provenance

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
MULTIPLES = (1, 4, 16)
IMAGE_SIZE = 32
OWNER_SIZE = 5  # update images per data subject
# One cycle of 20 manifest rows: 40% licensed base, 15% test, 5% canary, 40% update data.
SLICE_CYCLE = ("base",) * 8 + ("test",) * 3 + ("canary",) + ("update",) * 8
GATE_COLUMNS = ("evaluated_samples", "gate_seconds_cold", "gate_seconds_warm", "fixed_startup_seconds", "forward_floor_seconds", "gate_over_forward_floor")
NOTHING_CHANGED = "Data and pipelines are up to date."
STARTUP_COMMANDS: dict[str, list[str]] = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "import pipeline.cli": [sys.executable, "-c", "import pipeline.cli"],
    "import pipeline.steps": [sys.executable, "-c", "import pipeline.steps"],
    "ume --help": [str(BIN / "ume"), "--help"],
    "ume status": [str(BIN / "ume"), "status"],
}
BINDING_CAP = 100  # the smallest behaviors.max_check_samples and max_property_samples the config allows
GOALS = {
    "memory": "peak memory of a step <= 1.2x from 1x to 16x data",
    "time": "step time linear or better in data (16x/1x time <= 16x/1x training samples)",
    "history": "step {n} <= 1.3x step 1 (median of the last {head} over the first {head})",
    "gate": "gate <= 2x the forward floor at 16x with the default caps (the warm suite; the floor: one forward pass of the candidate over what it evaluates)",
    "repro": "no-change `dvc repro` <= 10 s (and nothing reruns)",
}


class BenchError(RuntimeError):
    """A measured command failed: the benchmark stops and says which, with its output."""


# ---------------------------------------------------------------------------------------------- data


def draw_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """``folder/img/NNNNNN.png``: ``count`` 32 px RGB digits (labels ``"0"``..``"9"``); reuses a folder drawn before."""
    labels_file = folder / "labels.txt"
    if labels_file.exists():
        labels = labels_file.read_text().split()
        if len(labels) >= count:
            return labels
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    (folder / "img").mkdir(parents=True, exist_ok=True)
    labels = []
    glyph_size = IMAGE_SIZE * 3 // 4
    for i in range(count):
        k = i % len(digits.images)
        glyph = Image.fromarray((digits.images[k] * 255 / 16).astype(np.uint8)).resize((glyph_size, glyph_size), Image.Resampling.BILINEAR)
        canvas = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        dy, dx = rng.integers(0, IMAGE_SIZE - glyph_size + 1, size=2)
        canvas[dy : dy + glyph_size, dx : dx + glyph_size] = np.asarray(glyph, dtype=np.float32) / 255
        fg, bg = rng.uniform(150, 255, size=3), rng.uniform(0, 100, size=3)
        rgb = bg + canvas[..., None] * (fg - bg) + rng.normal(0, 12, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(folder / "img" / f"{i:06d}.png")
        labels.append(str(int(digits.target[k])))
    labels_file.write_text("\n".join(labels) + "\n")
    return labels


def manifest_rows(labels: Sequence[str], count: int, update_slices: int) -> list[dict[str, str]]:
    """The manifest of the first ``count`` images: every row has a slice (:data:`SLICE_CYCLE`).

    Base, test and canary images carry no data subject (``-``); update images belong to owners of
    :data:`OWNER_SIZE` images each, whole owners dealt round-robin over ``u1..u<update_slices>``.
    """
    rows, updates = [], 0
    for i in range(count):
        kind = SLICE_CYCLE[i % len(SLICE_CYCLE)]
        if kind == "update":
            owner_index = updates // OWNER_SIZE
            slice_name, owner = f"u{owner_index % update_slices + 1}", f"p{owner_index:05d}"
            updates += 1
        else:
            slice_name, owner = kind, "-"
        group = "minority" if i % 4 == 0 else "majority"
        rows.append({"path": f"img/{i:06d}.png", "label": labels[i], "owner": owner, "group": group, "slice": slice_name})
    return rows


def _write_manifest(path: Path, rows: list[dict[str, str]]) -> None:
    header = ("path", "label", "owner", "group", "slice")
    path.write_text("\n".join([",".join(header), *(",".join(r[c] for c in header) for r in rows)]) + "\n")


def _loose_thresholds() -> dict[str, float]:
    """Bounds no healthy or unhealthy step reaches: this bench times steps, it does not judge them."""
    from behaviors.context import DEFAULT_THRESHOLDS

    loose = {k: 0.0 if k.startswith("min_") else 1e9 for k in DEFAULT_THRESHOLDS if k.startswith(("min_", "max_"))}
    loose["forget_accuracy_tolerance"] = 1e9
    return loose


def make_project(root: Path, images: Path, labels: Sequence[str], count: int, update_slices: int, *, arch: str, base_epochs: int, dvc: bool) -> Path:
    """A user's project on an image folder: params.yaml, manifest.csv (and with ``dvc``: dvc.yaml and a git repository)."""
    root.mkdir(parents=True)
    _write_manifest(root / "manifest.csv", manifest_rows(labels, count, update_slices))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update({"source": "folder", "folder": str(images), "manifest": "manifest.csv", "image_size": IMAGE_SIZE, "channels": 3})
    raw["data"]["corrupt_labels"] = {}
    raw["model"].update({"arch": arch, "num_classes": len(set(labels[:count]))})
    raw["train"]["progress_bar"] = False
    raw["train"]["base"]["epochs"] = base_epochs
    raw["behaviors"]["path"] = str(REPO / "behaviors")
    raw["behaviors"]["thresholds"] = _loose_thresholds()
    raw["stream"] = {}
    write_params(root, raw)
    if dvc:
        shutil.copy2(REPO / "dvc.yaml", root / "dvc.yaml")
        shutil.copy2(REPO / ".dvcignore", root / ".dvcignore")
        (root / ".dvc").mkdir()
        for name in ("config", ".gitignore"):
            shutil.copy2(REPO / ".dvc" / name, root / ".dvc" / name)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    return root


def write_params(root: Path, raw: dict[str, Any]) -> None:
    """``root/params.yaml`` (``stream`` last, as ``ume`` appends to it)."""
    ordered = {k: v for k, v in raw.items() if k != "stream"} | {"stream": raw.get("stream") or {}}
    (root / "params.yaml").write_text(yaml.safe_dump(ordered, sort_keys=False))


def append_learn_step(root: Path, key: str, parent: str, slice_name: str, epochs: int) -> None:
    """Append one ``learn`` step to the project's stream."""
    raw = yaml.safe_load((root / "params.yaml").read_text())
    stream = raw.get("stream") or {}
    stream[key] = {"kind": "learn", "parent": parent, "slice": slice_name, "epochs": epochs}
    raw["stream"] = stream
    write_params(root, raw)


# ------------------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Measured:
    """One process: wall seconds, peak resident memory (MiB) of that process, its output."""

    seconds: float
    peak_mib: float
    output: str


def command_env() -> dict[str, str]:
    """This environment with this interpreter's ``bin`` first on PATH and the repository importable.

    Every ``ume`` runs cold (``UME_WARM=0``): a stage is then its own process, so its ``ru_maxrss`` is
    the stage's memory (a warm command is a fork of the warm process, not a child of this one) and its
    wall time includes the interpreter's start-up (measured on its own by ``ume bench startup``).
    """
    env = dict(os.environ)
    env["UME_WARM"] = "0"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = f"{REPO}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else str(REPO)
    return env


def measured(cmd: Sequence[str], cwd: Path, log_file: Path, *, check: bool = True) -> Measured:
    """Run ``cmd`` as a child process; its wall time and its own ``ru_maxrss`` (``os.wait4``)."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as fh:
        started = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=command_env(), stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    output = log_file.read_text(errors="replace")
    if check and proc.returncode != 0:
        raise BenchError(f"{' '.join(cmd)} exited {proc.returncode} in {cwd} (log: {log_file})\n{output[-4000:]}")
    return Measured(seconds, usage.ru_maxrss / 1024, output)  # ru_maxrss is in KiB on Linux


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is zero."""
    return None if a is None or b is None or b == 0 else a / b


def _step_record(root: Path, key: str) -> dict[str, Any]:
    return json.loads((root / "store" / "steps" / f"{key}.json").read_text())


def _junit_seconds(root: Path, key: str) -> float | None:
    """The behaviour suite's own time in the step's process (pytest's JUnit report of the step)."""
    import xml.etree.ElementTree as ET

    path = root / "store" / "reports" / key / "junit.xml"
    if not path.exists():
        return None
    suites = ET.parse(path).getroot().iter("testsuite")
    return round(sum(float(s.get("time", 0.0)) for s in suites), 3)


def _step_row(root: Path, key: str, run: Measured) -> dict[str, Any]:
    record = _step_record(root, key)
    return {
        "wall_seconds": round(run.seconds, 3),
        "peak_mib": round(run.peak_mib, 1),
        "stage_seconds": record.get("seconds"),
        "operator_seconds": (record.get("notes") or {}).get("operator_seconds"),
        "suite_seconds_in_step": _junit_seconds(root, key),
        "decision": record.get("decision"),
    }


def run_size(work: Path, images: Path, labels: Sequence[str], multiple: int, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """One project of ``multiple`` x ``--base-size`` images: prepare, base, one learn step, the gate probe."""
    count = args.base_size * multiple
    root = make_project(work / f"size-{multiple}x", images, labels, count, 1, arch=args.arch, base_epochs=args.base_epochs, dvc=False)
    ume = str(BIN / "ume")
    prepare = measured([ume, "prepare"], root, root / "logs" / "prepare.log")
    log(f"{multiple:>2}x: prepare {prepare.seconds:.1f} s, {prepare.peak_mib:.0f} MiB")
    base = measured([ume, "base"], root, root / "logs" / "base.log")
    log(f"{multiple:>2}x: base {base.seconds:.1f} s, {base.peak_mib:.0f} MiB")
    append_learn_step(root, "s01", "base", "u1", args.epochs)
    step = measured([ume, "step", "s01"], root, root / "logs" / "s01.log")
    row = _step_row(root, "s01", step)
    log(f"{multiple:>2}x: learn step {step.seconds:.1f} s, {step.peak_mib:.0f} MiB ({row['decision']})")
    probe_file = root / "logs" / "gate.json"
    probe = [sys.executable, "-m", "bench.scale", "--probe-gate", "s01", "--probe-out", str(probe_file), "--repeats", str(args.repeats)]
    measured(probe, root, root / "logs" / "gate.log")
    gate = json.loads(probe_file.read_text())
    warm, cold, floor = gate["gate_seconds_warm"], gate["gate_seconds_cold"], gate["forward_floor_seconds"]
    log(f"{multiple:>2}x: gate {warm:.2f} s warm ({cold:.2f} s cold), forward floor {floor:.2f} s")
    gate["binding_cap"] = probe_binding_cap(root, args.repeats)
    log(f"{multiple:>2}x: gate with caps at {BINDING_CAP}: {gate['binding_cap']['gate_seconds_warm']:.2f} s warm")
    return {
        "images": count,
        "training_samples": gate["training_samples"],
        "prepare": {"wall_seconds": round(prepare.seconds, 3), "peak_mib": round(prepare.peak_mib, 1)},
        "base": {"wall_seconds": round(base.seconds, 3), "peak_mib": round(base.peak_mib, 1)},
        "step": row,
        "gate": gate,
    }


def probe_binding_cap(root: Path, repeats: int) -> dict[str, Any]:
    """The gate probe again with the smallest allowed cap, which binds at every size: the capped checks
    (hypothesis properties, membership tests) are then the same work at 1x and 16x."""
    out = root / "logs" / "gate-capped.json"
    probe = [sys.executable, "-m", "bench.scale", "--probe-gate", "s01", "--probe-out", str(out), "--repeats", str(repeats), "--probe-cap", str(BINDING_CAP)]
    measured(probe, root, root / "logs" / "gate-capped.log")
    return {"max_check_samples": BINDING_CAP, "max_property_samples": BINDING_CAP, **json.loads(out.read_text())}


def regate(work: Path, out: Path, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    """``--regate``: the binding-cap gate probe on the size projects a ``--workdir`` run kept, merged into ``out/scale.json``."""
    result = json.loads((out / "scale.json").read_text())
    for size, row in result["sizes"].items():
        row["gate"]["binding_cap"] = probe_binding_cap(work / f"size-{size}", repeats)
        log(f"{size:>3}: gate with caps at {BINDING_CAP}: {row['gate']['binding_cap']['gate_seconds_warm']:.2f} s warm")
    result.update(summarize(result["sizes"], result["history"]))
    result["meta"]["regated"] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "load": [round(x, 2) for x in os.getloadavg()]}
    result["goals"] = goals(result)
    return result


def run_history(work: Path, images: Path, labels: Sequence[str], args: argparse.Namespace, log: Callable[[str], None]) -> tuple[Path, list[dict[str, Any]]]:
    """A stream of ``--history`` learn steps (slices ``u1..uN``), each step its own timed process."""
    root = make_project(work / "history", images, labels, args.base_size, args.history, arch=args.arch, base_epochs=args.base_epochs, dvc=True)
    ume = str(BIN / "ume")
    measured([ume, "prepare"], root, root / "logs" / "prepare.log")
    measured([ume, "base"], root, root / "logs" / "base.log")
    rows, parent = [], "base"
    for index in range(1, args.history + 1):
        key = f"s{index:02d}-learn-u{index}"
        append_learn_step(root, key, parent, f"u{index}", args.epochs)
        run = measured([ume, "step", key], root, root / "logs" / f"{key}.log")
        rows.append({"index": index, "step": key, **_step_row(root, key, run)})
        log(f"history: step {index:2d} {run.seconds:.1f} s ({rows[-1]['decision']})")
        parent = key
    return root, rows


def nochange_repro(root: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run the seal stage's command (its outputs exist only once it ran), record the stream with ``dvc commit -f``,
    run ``dvc repro`` once, then time a second one."""
    dvc = str(BIN / "dvc")
    seal = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]["seal"]["cmd"]
    try:
        measured(["sh", "-c", seal], root, root / "logs" / "seal.log")
    except BenchError as exc:
        return {"seconds": None, "nothing_changed": False, "message": f"the seal stage's command failed: {str(exc)[-500:]}"}
    commit = measured([dvc, "commit", "-f"], root, root / "logs" / "dvc-commit.log", check=False)
    if "error" in commit.output.lower():
        return {"seconds": None, "nothing_changed": False, "message": f"dvc commit -f failed: {commit.output.strip()[-500:]}"}
    first = measured([dvc, "repro"], root, root / "logs" / "dvc-repro-1.log")
    second = measured([dvc, "repro"], root, root / "logs" / "dvc-repro-2.log")
    last = second.output.strip().splitlines()[-1] if second.output.strip() else ""
    log(f"no-change dvc repro: {second.seconds:.1f} s ({last})")
    return {
        "seconds": round(second.seconds, 3),
        "first_seconds": round(first.seconds, 3),
        "nothing_changed": NOTHING_CHANGED in second.output and "Running stage" not in second.output,
        "first_nothing_changed": NOTHING_CHANGED in first.output and "Running stage" not in first.output,
        "message": last,
    }


def startup(root: Path, repeats: int, log: Callable[[str], None]) -> dict[str, float]:
    """Median wall seconds of each :data:`STARTUP_COMMANDS` entry, run in ``root``."""
    out = {}
    for name, cmd in STARTUP_COMMANDS.items():
        times = [measured(cmd, root, root / "logs" / "startup.log").seconds for _ in range(repeats)]
        out[name] = round(statistics.median(times), 3)
        log(f"start-up: {name} {out[name]:.2f} s")
    return out


def probe_gate(params_path: Path, key: str, repeats: int = 3, cap: int | None = None) -> dict[str, Any]:
    """In this process: the step's behaviour suite twice (cold, warm), and one forward pass of the champion over
    every sample it evaluates (after a warm-up pass; the median of ``repeats``). ``cap`` overrides
    ``behaviors.max_check_samples`` (a cap that binds at every size makes the capped checks the fixed part)."""
    import dataclasses
    import logging

    import torch

    from behaviors.build import build_context, model_under_test, row_cache
    from behaviors.suite import run_suite
    from pipeline.data import open_data
    from pipeline.model.compose import compose
    from pipeline.model.net import predict_logits
    from pipeline.steps import open_workspace

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ws = open_workspace(params_path)
    if cap is not None:
        ws.params = dataclasses.replace(ws.params, behaviors=dataclasses.replace(ws.params.behaviors, max_check_samples=cap, max_property_samples=cap))
    record = json.loads(ws.step_record_path(key).read_text())
    candidate_manifest = ws.versions.load(record["manifest_hash"])
    champion_version = record["champion_before"]
    champion_manifest = ws.manifest_of(champion_version)
    data = open_data(ws.data_dir, ws.ledger, seed=ws.params.seed)
    meta = ws.components.sidecar(candidate_manifest.overlays[-1]).meta
    step_info = {
        "id": key,
        "kind": record["kind"],
        "candidate": candidate_manifest.describe(),
        "champion": f"v{champion_version}: {champion_manifest.describe()}",
        "request": None,
        "attempt": 1,
    }

    def gate(report_dir: Path) -> tuple[float, Any]:
        # The candidate is new at its gate: nothing of it is cached (the champion's rows are, from its own promotion)
        row_cache(ws).drop(candidate_manifest.hash)
        started = time.perf_counter()
        context = build_context(
            ws,
            candidate=model_under_test(ws, "candidate", candidate_manifest, record["version"]),
            candidate_manifest=candidate_manifest,
            champion=model_under_test(ws, "champion", champion_manifest, champion_version),
            champion_manifest=champion_manifest,
            step=step_info,
            data=data,
        )
        context.report_dir = report_dir
        results = run_suite([ws.params.behaviors.path], context)
        if any(r.name == "behaviour-suite" for r in results):
            raise BenchError(f"the behaviour suite did not run: {results[-1].message}")
        return time.perf_counter() - started, context

    with tempfile.TemporaryDirectory(prefix="ume-scale-gate-") as tmp:
        cold, _ = gate(Path(tmp) / "cold")
        warm, context = gate(Path(tmp) / "warm")
    sets = [context.splits.test, context.splits.canary, context.splits.retain, *context.splits.extra.values()]
    for case in context.forget_cases:
        sets += [case.forgotten, case.unseen]
    for edit in context.edits:
        sets += [edit.cases, edit.holdout]
    def forward_pass(net: torch.nn.Module) -> float:
        started = time.perf_counter()
        for samples in sets:
            for batch in samples.batches(512):
                predict_logits(net, batch)
        return time.perf_counter() - started

    floors = {}
    with torch.inference_mode():
        for name, manifest in (("candidate", candidate_manifest), ("champion", champion_manifest)):
            net = compose(manifest, ws.components)
            forward_pass(net)  # warm-up: kernels chosen per batch shape, pages of the image store read once
            floors[name] = statistics.median(forward_pass(net) for _ in range(repeats))
    floor = floors["candidate"]
    return {
        "gate_seconds_cold": round(cold, 3),
        "gate_seconds_warm": round(warm, 3),
        "fixed_startup_seconds": round(cold - warm, 3),
        "forward_floor_seconds": round(floor, 4),
        "champion_forward_seconds": round(floors["champion"], 4),
        "forward_floor_repeats": repeats,
        "evaluated_samples": sum(len(s) for s in sets),
        "gate_over_forward_floor": round(warm / floor, 3) if floor > 0 else None,
        "gate_over_champion_forward": round(warm / floors["champion"], 3) if floors["champion"] > 0 else None,
        "training_samples": int(meta.get("new_samples", 0)) + int(meta.get("replayed_samples", 0)),
        "torch_threads": torch.get_num_threads(),
    }


# -------------------------------------------------------------------------------------- reporting


def families_matrix(raw: dict[str, Any]) -> dict[str, dict[str, str]]:
    """``ume bench families``'s cells as ``ok`` / ``refused: <reason>`` / ``failed: <error>`` (the decision dropped)."""
    out: dict[str, dict[str, str]] = {}
    for arch, row in (raw.get("families") or {}).items():
        out[arch] = {step: "ok" if cell.startswith("ok") else cell for step, cell in row.items()}
    return out


def _head(steps: int) -> int:
    """How many first and last history steps are compared by their medians: 3, fewer so that they never overlap."""
    return min(3, steps // 2)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(sizes: dict[str, dict[str, Any]], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The headline numbers from the raw rows (ratios are None where a measurement is missing)."""
    first, last = f"{MULTIPLES[0]}x", f"{MULTIPLES[-1]}x"

    def growth(*path: str) -> float | None:
        """The value at ``path`` of the largest size over the smallest's."""
        ends = []
        for size in (last, first):
            value: Any = sizes.get(size, {})
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            ends.append(value)
        return _round(ratio(*ends))

    times = [h["wall_seconds"] for h in history]
    head = _head(len(times))
    largest = sizes.get(last, {}).get("gate", {})
    out: dict[str, Any] = {
        "step_time_by_size": {k: v["step"]["wall_seconds"] for k, v in sizes.items()},
        "training_samples_by_size": {k: v["training_samples"] for k, v in sizes.items()},
        "images_by_size": {k: v["images"] for k, v in sizes.items()},
        "peak_memory_mib_by_size": {k: v["step"]["peak_mib"] for k, v in sizes.items()},
        "memory_ratio_16x_over_1x": growth("step", "peak_mib"),
        "step_time_ratio_16x_over_1x": growth("step", "wall_seconds"),
        "operator_time_ratio_16x_over_1x": growth("step", "operator_seconds"),
        "training_samples_ratio_16x_over_1x": growth("training_samples"),
        "history_step_seconds": times,
        f"step{len(times)}_over_step1": _round(ratio(times[-1], times[0]) if times else None),
        f"median_last{head}_over_first{head}": _round(ratio(_median(times[-head:]), _median(times[:head])) if head else None),
        "gate_seconds": largest.get("gate_seconds_warm"),
        "gate_seconds_cold": largest.get("gate_seconds_cold"),
        "forward_floor_seconds": largest.get("forward_floor_seconds"),
        "gate_over_forward_floor": largest.get("gate_over_forward_floor"),
        "champion_forward_seconds": largest.get("champion_forward_seconds"),
        "gate_over_champion_forward": largest.get("gate_over_champion_forward"),
        # gate(n) = fixed + k * floor(n): the fixed part (collection, hypothesis properties, latency timing) does not
        # grow with the data, so k, the gate's growth over the floor's growth between the smallest and largest size, is the goal's ratio
        "gate_growth_over_floor_growth": _round(
            ratio(
                _delta(sizes, last, first, "gate_seconds_warm"),
                _delta(sizes, last, first, "forward_floor_seconds"),
            )
        ),
        # the same with max_check_samples at its smallest value, binding at every size
        "gate_growth_over_floor_growth_binding_cap": _round(
            ratio(
                _delta(sizes, last, first, "gate_seconds_warm", "binding_cap"),
                _delta(sizes, last, first, "forward_floor_seconds", "binding_cap"),
            )
        ),
    }
    return out


def _delta(sizes: dict[str, dict[str, Any]], last: str, first: str, key: str, within: str | None = None) -> float | None:
    """``sizes[last].gate[key] - sizes[first].gate[key]`` (in ``gate[within]`` when given; None where either is missing)."""

    def value(size: str) -> Any:
        gate = sizes.get(size, {}).get("gate", {})
        return (gate.get(within) or {}).get(key) if within else gate.get(key)

    a, b = value(last), value(first)
    return None if a is None or b is None else a - b


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def goals(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of the issue with its measured value and whether it is met (None: not measured)."""
    n = len(result.get("history_step_seconds", []))
    head = _head(n)
    hist = result.get(f"median_last{head}_over_first{head}")
    mem = result.get("memory_ratio_16x_over_1x")
    time_ratio, samples_ratio = result.get("step_time_ratio_16x_over_1x"), result.get("training_samples_ratio_16x_over_1x")
    default_gate, repro = result.get("gate_growth_over_floor_growth"), result.get("nochange_repro") or {}
    binding = result.get("gate_growth_over_floor_growth_binding_cap")
    gate = result.get("gate_over_forward_floor")
    cold, warm = result.get("gate_seconds_cold"), result.get("gate_seconds")
    startup = None if cold is None or warm is None else cold - warm

    def fmt(value: float | None, unit: str = "x") -> str:
        return "not measured" if value is None else f"{value:.2f}{unit}"

    rows = [
        {"goal": GOALS["memory"], "measured": fmt(mem), "met": None if mem is None else mem <= 1.2},
        {
            "goal": GOALS["time"],
            "measured": f"{fmt(time_ratio)} time for {fmt(samples_ratio)} samples (training alone: {fmt(result.get('operator_time_ratio_16x_over_1x'))})",
            "met": None if time_ratio is None or samples_ratio is None else time_ratio <= samples_ratio,
        },
        {
            "goal": GOALS["history"].format(n=n, head=head),
            "measured": f"{fmt(hist)} (step {n} / step 1: {fmt(result.get(f'step{n}_over_step1'))})",
            "met": None if hist is None else hist <= 1.3,
        },
        {
            "goal": GOALS["gate"],
            "measured": f"{fmt(gate)}: at 16x {fmt(result.get('gate_seconds'), ' s')} warm against a floor of "
            f"{fmt(result.get('forward_floor_seconds'), ' s')} (the champion's pass: {fmt(result.get('champion_forward_seconds'), ' s')}, "
            f"{fmt(result.get('gate_over_champion_forward'))}); the gate's growth from 1x over the floor's: {fmt(default_gate)} with the "
            f"default caps, {fmt(binding)} with both caps at {BINDING_CAP}; collection start-up {fmt(startup, ' s')}",
            "met": None if gate is None else gate <= 2.0,
        },
        {
            "goal": GOALS["repro"],
            "measured": fmt(repro.get("seconds"), " s") + ("" if repro.get("nothing_changed") else " (something reran or it failed)"),
            "met": None if repro.get("seconds") is None else repro["seconds"] <= 10.0 and bool(repro.get("nothing_changed")),
        },
    ]
    return rows


def _met(value: bool | None) -> str:
    return "not measured" if value is None else "met" if value else "not met"


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    cell = lambda v: "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v).replace("|", "/")  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)]


def markdown(result: dict[str, Any]) -> str:
    """Every measurement as a table, then the goals, then the families matrix."""
    meta = result["meta"]
    sizes = result["sizes"]
    lines = [
        "# Scale: data size, history length, the gate, start-up",
        "",
        f"{meta['machine']}; {meta['date']}; load average {meta['load_before']} before, {meta['load_after']} after; "
        f"`{meta['arch']}` on {IMAGE_SIZE} px RGB images drawn from sklearn's digits (a generated image folder with a manifest); "
        f"base {meta['base_size']} images; learn steps of {meta['epochs']} epoch(s); {meta['wall_seconds']:.0f} s in all"
        + (f"; the cap {BINDING_CAP} gate probes rerun on the kept projects {meta['regated']['date']} (`--regate`, load {meta['regated']['load']})"
           if meta.get("regated") else "")
        + (" (`--quick`: a smoke run, not a measurement)" if meta.get("quick") else "")
        + ".",
        "",
        "## Goals",
        "",
        *_table(["goal", "measured", "result"], [(g["goal"], g["measured"], _met(g["met"])) for g in result["goals"]]),
        "",
        "## Step time and peak memory against data size",
        "",
        "One `learn` step on `u1` (40% of the images; replay adds as many licensed base images), its own process: wall",
        "seconds, the stage's own seconds (record), the operator's (training), and the process's peak resident memory.",
        "",
        *_table(
            ["size", "images", "training samples", "step wall s", "stage s", "operator s", "step peak MiB"]
            + ["prepare s", "prepare peak MiB", "base s", "base peak MiB"],
            [
                (k, v["images"], v["training_samples"], *(v["step"][c] for c in ("wall_seconds", "stage_seconds", "operator_seconds", "peak_mib")))
                + (v["prepare"]["wall_seconds"], v["prepare"]["peak_mib"], v["base"]["wall_seconds"], v["base"]["peak_mib"])
                for k, v in sizes.items()
            ],
        ),
        "",
        "## Step time against history length",
        "",
        f"A stream of {len(result['history'])} learn steps on slices of the same project, each its own `ume step` process.",
        "",
        *_table(
            ["step", "wall s", "stage s", "operator s", "suite s (in step)", "peak MiB"],
            [(h["index"], h["wall_seconds"], h["stage_seconds"], h["operator_seconds"], h["suite_seconds_in_step"], h["peak_mib"]) for h in result["history"]],
        ),
        "",
        "## The gate against the forward floor",
        "",
        "The step's behaviour suite rebuilt in a probe process (candidate and champion composed, context built, every spec",
        "run): cold (pytest's collection and the specs' imports: the fixed start-up) and warm; the floor is one forward",
        "pass of the candidate over every sample the suite evaluates (the champion's rows are cached from its promotion);",
        "`champion pass s` is the same pass of the champion, one overlay fewer. `suite s (in step)`: pytest's own time in the step.",
        f"`cap {BINDING_CAP}`: the warm gate again with `behaviors.max_check_samples` and `max_property_samples` at {BINDING_CAP}, caps that",
        "bind at every size, so the capped checks (hypothesis properties over the canary set, membership tests) are the same work at every size.",
        "",
        *_table(
            ["size", "evaluated samples", "gate cold s", "gate warm s", "fixed start-up s", "forward floor s", "gate / floor", "champion pass s",
             "suite s (in step)",
             f"gate warm s (cap {BINDING_CAP})", f"floor s (cap {BINDING_CAP})"],
            [
                (k, *(v["gate"][c] for c in GATE_COLUMNS), v["gate"].get("champion_forward_seconds"), v["step"]["suite_seconds_in_step"],
                 (v["gate"].get("binding_cap") or {}).get("gate_seconds_warm"), (v["gate"].get("binding_cap") or {}).get("forward_floor_seconds"))
                for k, v in sizes.items()
            ],
        ),
        "",
        "## No-change `dvc repro` and start-up",
        "",
        f"The history project ({len(result['history'])} steps + prepare, base, seal) recorded with `dvc commit -f`; the second of two",
        f"`dvc repro` timed. Start-up: median of {meta['repeats']} run(s) of each command.",
        "",
        *_table(
            ["command", "seconds", "note"],
            [
                ("dvc repro (nothing changed)", result["nochange_repro"].get("seconds"), result["nochange_repro"].get("message", "")),
                *((name, seconds, "") for name, seconds in result["stage_startup_seconds"].items()),
            ],
        ),
        "",
        "## Step kinds by timm family",
        "",
    ]
    families = result.get("families") or {}
    if families:
        columns = list(dict.fromkeys(step for row in families.values() for step in row))
        lines += [
            f"Copied from `ume bench families` (`bench/results/families.json`, {result.get('families_meta', {}).get('date', 'date unknown')}).",
            "",
            *_table(["arch", *columns], [(f"`{arch}`", *(row.get(c, "not run") for c in columns)) for arch, row in families.items()]),
        ]
    else:
        lines.append("Not measured: run `ume bench families` first (`bench/results/families.json`).")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Step time and peak memory against training samples; step time against history index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = result["sizes"]
    samples = [v["training_samples"] for v in sizes.values()]
    seconds = [v["step"]["wall_seconds"] for v in sizes.values()]
    memory = [v["step"]["peak_mib"] for v in sizes.values()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(samples, seconds, "o-", color="tab:blue", label="step wall s")
    left.plot(samples, [v["step"]["operator_seconds"] or 0 for v in sizes.values()], "^-", color="tab:cyan", label="operator s (training)")
    if samples and samples[0] and seconds:
        left.plot(samples, [seconds[0] * s / samples[0] for s in samples], ":", color="tab:blue", alpha=0.6, label="linear from 1x")
    left.set_xscale("log", base=2)
    left.set_yscale("log", base=2)
    left.set_xlabel("training samples of the learn step")
    left.set_ylabel("seconds", color="tab:blue")
    twin = left.twinx()
    twin.plot(samples, memory, "s--", color="tab:red", label="peak MiB")
    twin.set_ylabel("peak resident memory (MiB)", color="tab:red")
    twin.set_ylim(bottom=0)
    handles = [h for axis in (left, twin) for h in axis.get_legend_handles_labels()[0]]
    left.legend(handles, [h.get_label() for h in handles], loc="center right", fontsize=8)
    left.set_title("one learn step against data size")
    index = [h["index"] for h in result["history"]]
    right.plot(index, [h["wall_seconds"] for h in result["history"]], "o-", label="step wall s")
    right.plot(index, [h["operator_seconds"] or 0 for h in result["history"]], "^-", label="operator s (training)")
    right.set_xlabel("step index in the stream")
    right.xaxis.get_major_locator().set_params(integer=True)
    right.set_ylabel("seconds")
    right.set_ylim(bottom=0)
    right.legend(fontsize=8)
    right.set_title("step time against history length")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement; the result dictionary written to scale.json."""
    started = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    images = work / "images"
    labels = draw_images(images, args.base_size * max(MULTIPLES))
    log(f"drew {len(labels)} images in {time.perf_counter() - started:.0f} s")
    sizes = {f"{m}x": run_size(work, images, labels, m, args, log) for m in MULTIPLES}
    history_root, history = run_history(work, images, labels, args, log)
    repro = nochange_repro(history_root, log)
    startup_seconds = startup(history_root, args.repeats, log)
    families_file = args.families
    families_raw = json.loads(families_file.read_text()) if families_file.exists() else {}
    result: dict[str, Any] = {
        "meta": {
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "arch": args.arch,
            "base_size": args.base_size,
            "multiples": list(MULTIPLES),
            "epochs": args.epochs,
            "base_epochs": args.base_epochs,
            "history_steps": args.history,
            "repeats": args.repeats,
            "quick": args.quick,
            "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()],
            "wall_seconds": round(time.perf_counter() - started, 1),
        },
        "sizes": sizes,
        "history": history,
        **summarize(sizes, history),
        "nochange_repro_seconds": repro.get("seconds"),
        "nochange_repro": repro,
        "stage_startup_seconds": startup_seconds,
        "families": families_matrix(families_raw),
        "families_meta": families_raw.get("meta", {}),
    }
    result["goals"] = goals(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``ume bench scale``."""
    parser = argparse.ArgumentParser(prog="ume bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-size", type=int, default=1800, help="images at 1x (default 1800; sizes are 1x, 4x, 16x)")
    parser.add_argument("--arch", default="test_resnet", help="timm model (default test_resnet; e.g. resnet18)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every measured learn step (fixed: time should scale with data)")
    parser.add_argument("--base-epochs", type=int, default=2, help="epochs of each project's clean base")
    parser.add_argument("--history", type=int, default=20, help="learn steps in the history stream (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each start-up command and of the forward floor (median)")
    parser.add_argument("--families", type=Path, default=REPO / "bench" / "results" / "families.json", help="the matrix of `ume bench families`")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated projects here (default: a temporary directory, removed)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 60 images at 1x, 3 history steps, base 1 epoch, 1 start-up repeat")
    parser.add_argument("--regate", action="store_true", help="only the binding-cap gate probe, on the projects an earlier --workdir run kept")
    parser.add_argument("--probe-gate", metavar="STEP", help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--probe-cap", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe_gate:
        payload = json.dumps(probe_gate(Path("params.yaml"), args.probe_gate, args.repeats, args.probe_cap), indent=1)
        args.probe_out.write_text(payload) if args.probe_out else print(payload)
        return 0
    if args.quick:
        args.base_size, args.history, args.base_epochs, args.repeats = 60, 3, 1, 1

    def log(message: str) -> None:
        print(message, flush=True)

    if args.regate:
        if args.workdir is None:
            parser.error("--regate needs the --workdir of an earlier run")
        result = regate(args.workdir.resolve(), args.out, args.repeats, log)
    elif args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args, args.workdir.resolve(), log)
    else:
        with tempfile.TemporaryDirectory(prefix="ume-scale-") as tmp:
            result = run(args, Path(tmp), log)
    args.out.mkdir(parents=True, exist_ok=True)
    result["provenance"] = provenance.record(
        "scale",
        argv,
        configuration=f"a generated 32 px RGB folder ({args.base_size} images at 1x), {args.arch}, {args.epochs}-epoch steps, {args.base_epochs}-epoch bases",
    )
    (args.out / "scale.json").write_text(json.dumps(result, indent=1))
    (args.out / "scale.md").write_text(markdown(result))
    plot(result, args.out / "scale.png")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
