"""Where a measured figure comes from, and whether it still describes what ships.

Every ``bench/results/*.json`` carries a ``provenance`` record (:func:`record`): the benchmark and the
command that ran it, the commit (``+dirty`` when the tree had changes), the date, the machine (cores,
CPU, Python, torch) and a fingerprint of the shipped defaults that decide its figures, one short hash
per part (:data:`PARTS`): the data, the model, the base training recipe, the gate (thresholds, caps,
reference bank, the shipped behaviour specs), the deletion policy, the default methods and their
default settings, the demo stream. A benchmark declares the parts it depends on (:data:`BENCHES`).

``python -m bench.provenance --check`` (and ``tests/test_provenance.py``) recomputes the parts from
this checkout and names, for every results file whose record differs, the parts that changed and the
command to rerun. A result measured on a configuration other than the defaults says which in its
record's ``configuration`` (and in the caption of its Markdown).

Figures are only true for what they were measured on: this module never runs a benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _defaults_of(cls: type) -> dict[str, Any]:
    """The default value of every field of a config dataclass that has one (required fields left out)."""
    found: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            found[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            found[f.name] = f.default_factory()
    return found


SCOPE_FIELDS = ("scope",)  # where an approximate forget method runs on routed experts: its own part, "forget_scope"


def _method_defaults(keep: Callable[[str], bool]) -> dict[str, Any]:
    """Every built-in method's default settings, only the fields ``keep`` accepts."""
    from edits.registry import list_methods

    return {f"{m.kind}/{m.name}": {k: v for k, v in _defaults_of(m.config_cls).items() if keep(k)} for m in list_methods()}


def _methods(_params: Any) -> dict[str, Any]:
    """Every built-in method's default settings (the scope aside), and which method each step kind uses by default."""
    from edits.registry import DEFAULT_METHOD

    return {"default": DEFAULT_METHOD, **_method_defaults(lambda k: k not in SCOPE_FIELDS)}


def _forget_scope(_params: Any) -> dict[str, Any]:
    """Where each approximate forget method runs on routed experts (``scope``, ``edits/forget/common.py``): it decides
    only the figures of benchmarks that run such a method on a routed network."""
    return _method_defaults(lambda k: k in SCOPE_FIELDS)


DEMO_EDIT_SPEC = "edits/specs/tilted-field.yaml"


def _edit(_params: Any) -> dict[str, Any]:
    """An edit's training defaults (``EditTraining``: the scope among them) and the demo's edit spec by content: the
    stream names the spec by path only, and the families matrix reads the same file."""
    from edits.edit.spec import EditTraining

    spec = ROOT / DEMO_EDIT_SPEC
    return {"training": _defaults_of(EditTraining), "demo_spec_sha256": hashlib.sha256(spec.read_bytes()).hexdigest() if spec.is_file() else None}


def _quantize_backend() -> str:
    from pipeline.model.quantize import BACKEND

    return BACKEND


def _shipped_specs(root: Path) -> list[str]:
    """The names of the behaviour specs in ``behaviors/`` (a new or removed spec changes gate decisions)."""
    import ast

    names: list[str] = []
    for path in sorted((root / "behaviors").glob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names += [f"{path.stem}::{node.name}" for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]
    return names


def _behaviors(params: Any) -> dict[str, Any]:
    behaviors = params.behaviors
    return {
        "thresholds": behaviors.thresholds,
        "max_check_samples": behaviors.max_check_samples,
        "max_reference_pool": behaviors.max_reference_pool,
        "max_property_samples": behaviors.max_property_samples,
        "references": dataclasses.asdict(behaviors.references),
        "specs": _shipped_specs(ROOT),
    }


PARTS: dict[str, Callable[[Any], Any]] = {
    "data": lambda p: {"seed": p.seed, **dataclasses.asdict(p.data)},
    "model": lambda p: {"arch": p.model.arch, "num_classes": p.model.num_classes, "checkpoint": p.model.checkpoint},
    "train": lambda p: {"base": dataclasses.asdict(p.train.base), "precision": p.train.precision},
    "behaviors": _behaviors,
    "deletion": lambda p: dataclasses.asdict(p.deletion),
    "methods": _methods,
    "forget_scope": _forget_scope,
    "int8": lambda _p: {"engine": _quantize_backend()},  # the engine new int8 transforms are made for (code, not params)
    "stream": lambda p: {key: {"kind": s.kind, "parent": s.parent, "method": s.method, **s.options} for key, s in p.stream.items()},
    "edit": _edit,
}


@dataclass(frozen=True)
class Bench:
    """A benchmark: the command that measures it, the results files it writes, the default parts it measures."""

    command: str
    files: tuple[str, ...]
    parts: tuple[str, ...]
    pages: tuple[str, ...] = ()  # the Markdown results it writes (pasted into the docs by bench.tables)


_TRAINING = ("data", "model", "train", "methods")
_RELIABILITY = ("data", "model", "behaviors", "deletion", "methods")
_ROUTED_FORGET = ("forget_scope",)  # runs an approximate forget method on routed experts
BENCHES: dict[str, Bench] = {
    "demo": Bench("make clean && make demo (timed), then python -m bench.demo --wall-seconds S", ("demo.json",), tuple(PARTS), ("demo.md",)),
    "lifelong": Bench("ume bench lifelong", ("lifelong.json",), _TRAINING, ("lifelong.md",)),
    "forget": Bench("ume bench forget", ("forget.json", "forget_sequential.json"), _TRAINING, ("forget.md",)),
    "forget-exact": Bench("ume bench forget-exact", ("forget_exact.json",), (*_TRAINING, "behaviors"), ("forget_exact.md",)),
    "forget-evidence": Bench("ume bench forget-evidence", ("forget_evidence.json",), (*_TRAINING, "behaviors"), ("forget_evidence.md",)),
    "compress": Bench("ume bench compress", ("compress.json",), (*_TRAINING, "int8"), ("compress.md",)),
    "overlays": Bench("ume bench overlays", ("overlays.json",), ("model", "methods"), ("overlays.md",)),
    "families": Bench("ume bench families", ("families.json",), (*_TRAINING, "behaviors", *_ROUTED_FORGET, "edit"), ("families.md",)),
    "scale": Bench("ume bench scale", ("scale.json",), (*_TRAINING, "behaviors", "deletion"), ("scale.md",)),
    "startup": Bench("ume bench startup", ("startup.json",), _TRAINING, ("startup.md",)),
    "erasure": Bench("make demo, then ume bench erasure", ("erasure.json",), tuple(PARTS), ("erasure.md",)),
    "speed": Bench("ume bench speed", ("speed.json",), tuple(PARTS), ("speed.md",)),  # the demo stream decides it: every part
    **{
        f"reliability-{part}": Bench(f"python -m bench.reliability --only {part}", ("reliability.json",), _RELIABILITY + extra)
        for part, extra in (("bad-inputs", ()), ("crash", ()), ("machine", (*_ROUTED_FORGET, "edit")))
    },
    "tamper": Bench("python -m bench.tamper", ("reliability.json",), _RELIABILITY, ("tamper.md",)),
    "ci": Bench("python -m bench.ci", ("ci.json",), (), ("ci.md",)),  # the test suite's own cost: no default decides it
}

# Benchmarks whose results were measured before this record existed, or on older defaults, and are not
# rerun yet: each says why. The test suite accepts exactly these (and fails once one is fresh, so the
# list only shrinks); the README and docs mark their figures stale. Empty: every benchmark was rerun on
# the shipped defaults (2026-12-05, after the reference bank became two complementary pairs).
RERUN_PENDING: dict[str, str] = {}


def fingerprint(parts: Sequence[str], params_file: Path = ROOT / "params.yaml") -> dict[str, str]:
    """A 12-hex hash per part of the shipped defaults, read from ``params_file`` and the code's defaults."""
    stat = Path(params_file).stat()
    return dict(_fingerprint(tuple(parts), str(Path(params_file).resolve()), stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=64)
def _fingerprint(parts: tuple[str, ...], params_file: str, _mtime_ns: int, _size: int) -> tuple[tuple[str, str], ...]:
    from pipeline.core.config import load_params

    params = load_params(params_file)
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown default part(s) {unknown} (known: {', '.join(PARTS)})")
    hashes = {}
    for part in parts:
        canonical = json.dumps(PARTS[part](params), sort_keys=True, default=repr)
        hashes[part] = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return tuple(hashes.items())


def commit(root: Path = ROOT) -> str:
    """The short commit of ``root``, with ``+dirty`` when tracked files have changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}+dirty" if dirty.strip() else head


def machine() -> dict[str, Any]:
    """The machine a figure was measured on."""
    import torch

    return {
        "cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def record(bench: str, argv: Sequence[str] | None = None, *, configuration: str = "default", root: Path = ROOT, **extra: Any) -> dict[str, Any]:
    """The provenance record of a run of ``bench`` (a key of :data:`BENCHES`) started with ``argv``.

    ``configuration`` is ``"default"`` or a sentence saying how the measured setup differs from the
    shipped defaults (e.g. "a 3-epoch base instead of 30"). ``root`` is the checkout that was measured
    (its commit and its ``params.yaml``). ``extra`` adds the benchmark's own fields.
    """
    spec = BENCHES[bench]
    args = list(sys.argv[1:] if argv is None else argv)
    return {
        "benchmark": bench,
        "command": spec.command + "".join(f" {a}" for a in args),
        "commit": commit(root),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "configuration": configuration,
        "defaults": fingerprint(spec.parts, root / "params.yaml"),
        **extra,
    }


def caption(prov: dict[str, Any]) -> str:
    """One line for a results Markdown: where and on what its figures were measured."""
    m = prov["machine"]
    setup = "the shipped defaults" if prov["configuration"] == "default" else f"**not the shipped defaults**: {prov['configuration']}"
    return f"Measured by `{prov['command']}` at commit {prov['commit']}, {prov['date'][:10]}, on {m['cores']} cores ({m['arch']}, torch {m['torch']}); {setup}."


def page_caption(page: str, results: Path = RESULTS) -> str | None:
    """For a results Markdown (``forget.md``), the caption of the record behind it (None without one)."""
    for name, bench in BENCHES.items():
        if page not in bench.pages:
            continue
        for file in bench.files:
            path = results / file
            recs = records_of(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else []
            for rec in recs:
                if rec.get("benchmark") == name and {"command", "machine", "configuration"} <= set(rec):
                    return caption(rec)
    return None


def stale_note(page: str, results: Path = RESULTS) -> str | None:
    """For a results Markdown (``forget.md``), why its figures are stale, or ``None`` when they are current."""
    notes = [p.why for p in problems(results) if p.bench is not None and page in BENCHES[p.bench].pages]
    return "; ".join(dict.fromkeys(notes)) or None


def records_of(data: Any) -> list[dict[str, Any]]:
    """The provenance records of a results file: ``provenance`` and any ``provenance_<bench>`` key."""
    if not isinstance(data, dict):
        return []
    return [v for k, v in sorted(data.items()) if (k == "provenance" or k.startswith("provenance_")) and isinstance(v, dict)]


@dataclass(frozen=True)
class Problem:
    """A results file whose figures do not describe the shipped defaults (or cannot say)."""

    file: str
    bench: str | None  # the benchmark that reruns it (None: no benchmark writes this file)
    why: str

    def __str__(self) -> str:
        return f"{self.file}: {self.why}"


def problems(results: Path = RESULTS, params_file: Path = ROOT / "params.yaml") -> list[Problem]:
    """Every results file that lacks a record or was measured on other defaults, naming the rerun."""
    found: list[Problem] = []
    writers: dict[str, list[str]] = {}
    for name, bench in BENCHES.items():
        for file in bench.files:
            writers.setdefault(file, []).append(name)
    for path in sorted(results.glob("*.json")):
        if path.name not in writers:
            found.append(Problem(path.name, None, "no benchmark in bench.provenance.BENCHES writes it"))
            continue
        recs = {r.get("benchmark"): r for r in records_of(json.loads(path.read_text(encoding="utf-8")))}
        for name in writers[path.name]:
            bench = BENCHES[name]
            rec = recs.get(name)
            if rec is None or not isinstance(rec.get("defaults"), dict):
                found.append(Problem(path.name, name, f"no provenance record of {name}: rerun `{bench.command}`"))
                continue
            now = fingerprint(bench.parts, params_file)  # cached per parts and params file
            changed = [part for part in bench.parts if rec["defaults"].get(part) != now[part]]
            if changed:
                why = f"measured on other defaults ({', '.join(changed)} changed since commit {rec.get('commit')}): rerun `{bench.command}`"
                found.append(Problem(path.name, name, why))
    return found


def unexpected(results: Path = RESULTS) -> tuple[list[Problem], list[str]]:
    """The problems :data:`RERUN_PENDING` does not excuse, and the pending benchmarks that are fresh now."""
    found = problems(results)
    stale = {p.bench for p in found}
    return [p for p in found if p.bench not in RERUN_PENDING], sorted(b for b in RERUN_PENDING if b not in stale)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.provenance [--check]``: print the current fingerprints, or check every results file."""
    parser = argparse.ArgumentParser(prog="python -m bench.provenance", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a results file lacks provenance or was measured on other defaults (except RERUN_PENDING)"
    )
    args = parser.parse_args(argv)
    if not args.check:
        print(json.dumps(fingerprint(tuple(PARTS)), indent=1))
        return 0
    bad, fresh = unexpected()
    for problem in problems():
        print(f"{problem}{'' if problem.bench not in RERUN_PENDING else ' (pending: ' + RERUN_PENDING[problem.bench] + ')'}")
    for bench in fresh:
        print(f"{bench}: fresh now: remove it from bench.provenance.RERUN_PENDING")
    return 1 if bad or fresh else 0


if __name__ == "__main__":
    sys.exit(main())
