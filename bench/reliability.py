"""Reliability figures: the bad-input corpus, the crash harness (bench/crash.py) and the state machine (bench/stream_machine.py).

The corpus (:data:`CASES`) is plain data. Each case names a template project (``empty``: only a
tiny ``params.yaml``; ``trained``: prepared data and a gated base; ``learned``: ``trained`` plus the
promoted LoRA step ``s01``), a setup that breaks exactly one thing in a fresh copy, the ``ume``
command to run, and the fragments its one error line must contain (file, field, expectation).
A case is *clean* when the command exits with the expected non-zero code, stderr holds exactly one
line (``ume: error: ...``, or ``FAIL: ...`` for ``ume audit``) with every fragment, and nothing
changed: the bytes of every file under ``store/`` and ``requests/``, ``params.yaml``, and the MLflow
registry (champion alias, versions and their tags) are the same before and after. The same table
drives ``tests/test_bad_inputs.py``.

    python -m bench.reliability [--out bench/results]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench import provenance

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "ume-digits"  # registry.model_name of the repo's params.yaml (and of the test projects)
MARKER = "UNPICKLED"  # a pickle payload in the corpus creates this file in the project if it is ever executed

Setup = Callable[[Path], None]


@dataclass(frozen=True)
class BadInput:
    """One bad input: what to break, which command to run, what its one error line must say."""

    name: str
    template: str  # "empty", "trained" or "learned"
    setup: Setup
    argv: tuple[str, ...]  # after ``--params <root>/params.yaml``; "{root}" is replaced by the project path
    expect: tuple[str, ...]  # fragments the single error line must contain ("{root}" replaced too)
    exit_code: int = 2  # 2: a user error (``ume: error:``); 1: ``ume audit`` found a problem (``FAIL:``)
    must_not_exist: tuple[str, ...] = ()  # paths (relative to the project) that must not appear
    recover: Setup | None = None  # undo the breakage; then ``recover_argv`` must succeed (exit 0)
    recover_argv: tuple[str, ...] = ()


@dataclass
class Outcome:
    """What one case did."""

    name: str
    exit_code: int | None
    stderr: list[str]
    problems: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    seconds: float = 0.0  # the whole case: copy, setup, command, snapshots (and recovery)
    command_seconds: float = 0.0  # the failing command alone
    recovered: bool | None = None

    @property
    def clean(self) -> bool:
        """Non-zero exit, one line naming file/field/expectation, nothing changed (and recovered, if asked)."""
        return not self.problems and not self.changed and self.recovered is not False

    def to_json(self) -> dict[str, Any]:
        """For ``reliability.json``."""
        return {
            "name": self.name,
            "clean": self.clean,
            "exit_code": self.exit_code,
            "error": self.stderr[0] if len(self.stderr) == 1 else self.stderr[:5],
            "problems": self.problems,
            "changed": self.changed[:10],
            "recovered": self.recovered,
            "seconds": round(self.seconds, 2),
            "command_seconds": round(self.command_seconds, 2),
        }


# ------------------------------------------------------------------------------ project helpers


def _read_params(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "params.yaml").read_text())


def _write_params(root: Path, raw: dict[str, Any]) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def copy_project(src: Path, dest: Path) -> Path:
    """A private copy of a template project, its params pointed at the copy (like ``trained_copy``)."""
    shutil.copytree(src, dest)
    raw = _read_params(dest)
    raw["paths"]["store"] = str(dest / "store")
    raw["registry"]["tracking_uri"] = f"sqlite:///{dest / 'mlflow.db'}"
    _write_params(dest, raw)
    return dest


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registry(root: Path):
    from pipeline.core.config import RegistryConfig
    from pipeline.records.registry import Registry

    return Registry(RegistryConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", model_name=MODEL_NAME))


def snapshot(root: Path, registry: Any = None) -> dict[str, Any]:
    """Everything a failed command must leave alone: store/, requests/, params.yaml and the registry."""
    files: dict[str, str | None] = {}
    for sub in ("store", "requests"):
        base = root / sub
        if base.exists():
            for path in sorted(base.rglob("*")):
                if path.is_file():
                    files[str(path.relative_to(root))] = _sha256(path)
    params = root / "params.yaml"
    files["params.yaml"] = _sha256(params) if params.exists() else None
    state: dict[str, Any] = {"files": files, "registry": None}
    if registry is not None:
        versions = registry.versions()
        state["registry"] = {
            "champion": registry.champion(),
            "versions": len(versions),
            "tags": {v.version: sorted(v.tags.items()) for v in versions},
        }
    return state


def diff(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed between two snapshots, one line per difference."""
    out = []
    old, new = before["files"], after["files"]
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(f"created {name}")
        elif name not in new:
            out.append(f"deleted {name}")
        elif old[name] != new[name]:
            out.append(f"modified {name}")
    if before["registry"] != after["registry"]:
        out.append(f"registry changed: {before['registry']} -> {after['registry']}")
    return out


def invoke(root: Path, argv: tuple[str, ...]) -> tuple[int | None, str, str]:
    """Run ``ume --params <root>/params.yaml <argv>`` in-process (cwd = root); exit code, stdout, stderr."""
    import pipeline.reports.audit
    import pipeline.reports.status  # noqa: F401  (imported outside the capture: torch logs to stderr on first import)
    from pipeline.cli import main

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(root)
    code: int | None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(["--params", str(root / "params.yaml"), *(a.replace("{root}", str(root)) for a in argv)])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # an uncaught exception is a traceback: never clean
                code = None
                err.write("uncaught: " + traceback.format_exc().strip().splitlines()[-1] + "\n")
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def run_case(case: BadInput, template: Path, workdir: Path) -> Outcome:
    """Copy the template, break it, run the command, judge the error and the before/after state."""
    started = time.time()
    root = copy_project(template, workdir / case.name)
    registry = _registry(root) if (root / "mlflow.db").exists() else None
    case.setup(root)
    before = snapshot(root, registry)
    command_started = time.time()
    code, _, stderr = invoke(root, case.argv)
    command_seconds = time.time() - command_started
    after = snapshot(root, registry)
    lines = [line for line in stderr.splitlines() if line.strip()]
    outcome = Outcome(case.name, code, lines, changed=diff(before, after), command_seconds=command_seconds)
    if code is None or code == 0:
        outcome.problems.append(f"exit code {code} (expected {case.exit_code})")
    elif code != case.exit_code:
        outcome.problems.append(f"exit code {code}, expected {case.exit_code}")
    prefix = "FAIL: " if case.exit_code == 1 else "ume: error: "
    if len(lines) != 1 or not lines[0].startswith(prefix):
        outcome.problems.append(f"expected one stderr line starting {prefix!r}, got {len(lines)}")
    line = lines[0] if lines else ""
    for fragment in case.expect:
        if fragment.replace("{root}", str(root)) not in line:
            outcome.problems.append(f"error line lacks {fragment!r}")
    for rel in case.must_not_exist:
        if (root / rel).exists():
            outcome.problems.append(f"{rel} exists")
    if case.recover is not None:
        case.recover(root)
        code, _, stderr = invoke(root, case.recover_argv)
        outcome.recovered = code == 0
        if code != 0:
            outcome.problems.append(f"after recovery, ume {' '.join(case.recover_argv)} exited {code}: {stderr.strip()[-300:]}")
    outcome.seconds = time.time() - started
    return outcome


# --------------------------------------------------------------------------------- setups: params


def edit_params(mutate: Callable[[dict[str, Any]], Any]) -> Setup:
    """Setup: change the parsed params.yaml and write it back."""

    def setup(root: Path) -> None:
        raw = _read_params(root)
        mutate(raw)
        _write_params(root, raw)

    return setup


def write_params_text(text: str) -> Setup:
    """Setup: replace params.yaml with raw text."""
    return lambda root: (root / "params.yaml").write_text(text)


def append_params_text(text: str) -> Setup:
    """Setup: append raw text to params.yaml (the stream is its last section)."""
    return lambda root: (root / "params.yaml").write_text((root / "params.yaml").read_text() + text)


def _remove_params(root: Path) -> None:
    (root / "params.yaml").unlink()


def _alias_bomb(root: Path) -> None:
    levels = "".join(f"  l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]\n" for i in range(1, 10))
    text = (root / "params.yaml").read_text()
    bomb = "  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol]\n" + levels
    (root / "params.yaml").write_text(text + "  s03:\n    kind: learn\n    parent: s02\n    slice: u3\n    extra:\n" + bomb.replace("  l", "      l"))


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for key in parents:
            node = node[key]
        node[last] = value

    return mutate


# ------------------------------------------------------------------------------- setups: requests


def _request_id(selector: Any) -> str:
    from pipeline.records.deletion import request_id_for

    try:
        return request_id_for(selector)
    except TypeError:
        return "del-000000000000"


def forget_request(body: dict[str, Any] | str, *, request_id: str | None = None, write: bool = True) -> Setup:
    """Setup: write ``requests/<id>.yaml`` (a mapping, or raw text) and append a forget step naming it."""

    def setup(root: Path) -> None:
        rid = request_id or (_request_id(body.get("selector")) if isinstance(body, dict) else "del-000000000000")
        if write:
            (root / "requests").mkdir(exist_ok=True)
            content = body if isinstance(body, str) else yaml.safe_dump({"id": rid, **body}, sort_keys=False)
            (root / "requests" / f"{rid}.yaml").write_text(content)
        raw = _read_params(root)
        raw["stream"]["forget-03"] = {"kind": "forget", "parent": "s02", "request": rid}
        _write_params(root, raw)

    return setup


def _forget_with_options(options: dict[str, Any]) -> Setup:
    """Setup: a valid request and a forget step naming it with ``options`` (a method and its settings)."""

    def setup(root: Path) -> None:
        selector = {"owner": "w040"}
        forget_request({"selector": selector, **OK_REQUEST})(root)
        raw = _read_params(root)
        raw["stream"]["forget-03"].update(options)
        _write_params(root, raw)

    return setup


def _edited_request(root: Path) -> None:
    selector = {"owner": "w040"}
    rid = _request_id(selector)
    forget_request({"selector": selector, "reason": "r", "received": "2026-01-01T00:00:00Z"})(root)
    path = root / "requests" / f"{rid}.yaml"
    path.write_text(path.read_text().replace("w040", "w041"))


def write_file(rel: str, content: str) -> Setup:
    """Setup: write a file in the project (e.g. a list of sample ids for ``ume forget --samples``)."""
    return lambda root: (root / rel).write_text(content)


# ----------------------------------------------------------------------------- setups: components


def _champion_manifest(root: Path) -> dict[str, Any]:
    """The champion's manifest according to the ledger (no MLflow needed)."""
    from pipeline.records.ledger import Ledger

    entries = Ledger(root / "store" / "ledger.jsonl").verify()
    version = next(e.data["alias"]["to"] for e in reversed(entries) if e.type == "decision" and e.data.get("alias"))
    return next(e.data["manifest"] for e in entries if e.type == "candidate" and e.data["version"] == version)


def _component(root: Path, which: str) -> tuple[Path, Path]:
    manifest = _champion_manifest(root)
    cid = manifest["base"] if which == "base" else manifest["overlays"][-1]
    folder = root / "store" / "components"
    return folder / f"{cid}.safetensors", folder / f"{cid}.json"


def _rehash(sidecar: Path, weights: Path) -> None:
    """Make the sidecar's sha256 match whatever now sits at the weights path."""
    raw = json.loads(sidecar.read_text())
    raw["sha256"] = _sha256(weights)
    sidecar.write_text(json.dumps(raw, indent=1, sort_keys=True))


def break_weights(which: str, how: str, *, rehash: bool = False) -> Setup:
    """Setup: damage the champion's base (or top overlay) weights file."""

    def setup(root: Path) -> None:
        weights, sidecar = _component(root, which)
        blob = weights.read_bytes()
        if how == "truncate":
            weights.write_bytes(blob[: len(blob) // 2])
        elif how == "flip":
            i = len(blob) - 17
            weights.write_bytes(blob[:i] + bytes([blob[i] ^ 0xFF]) + blob[i + 1 :])
        elif how == "delete":
            weights.unlink()
        elif how == "pickle":
            weights.write_bytes(pickle.dumps(PicklePayload(str(root / MARKER))))
        elif how == "torch-save":
            import torch

            torch.save({"weight": torch.zeros(2), "payload": PicklePayload(str(root / MARKER))}, weights)
        elif how == "wrong-shape":
            from safetensors.torch import load_file, save_file

            tensors = load_file(str(weights))
            for name in sorted(tensors):
                if tensors[name].ndim >= 2:
                    tensors[name] = tensors[name][..., :-1].contiguous()  # one column short
            save_file(tensors, str(weights), metadata={"kind": json.loads(sidecar.read_text())["kind"]})
        if rehash:
            _rehash(sidecar, weights)

    return setup


class PicklePayload:
    """Pickles to a call of ``open(path, 'w')``: unpickling it creates the marker file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def break_sidecar(which: str, how: str) -> Setup:
    """Setup: damage the champion's base (or top overlay) sidecar."""

    def setup(root: Path) -> None:
        _, sidecar = _component(root, which)
        if how == "not-json":
            sidecar.write_text('{"id": "base-')
        elif how == "delete":
            sidecar.unlink()
        elif how == "sha256":
            raw = json.loads(sidecar.read_text())
            raw["sha256"] = "0" * 64
            sidecar.write_text(json.dumps(raw, indent=1, sort_keys=True))

    return setup


# ---------------------------------------------------------------------------- setups: ledger, MLflow


def tamper_ledger(how: str) -> Setup:
    """Setup: change one ledger line by hand."""

    def setup(root: Path) -> None:
        path = root / "store" / "ledger.jsonl"
        lines = path.read_text().splitlines()
        if how == "edit":
            lines[1] = lines[1].replace('"type":"', '"type":"x', 1)
        elif how == "drop":
            del lines[1]
        elif how == "rehash":  # an edit with a recomputed hash: the next line no longer chains
            from pipeline.records.ledger import canonical_json, entry_hash

            raw = json.loads(lines[0])
            raw["data"]["tampered"] = True
            raw["hash"] = entry_hash(raw)
            lines[0] = canonical_json(raw)
        elif how == "truncate":
            lines[-1] = lines[-1][: len(lines[-1]) // 2]
        path.write_text("\n".join(lines) + "\n")

    return setup


def move_alias(to: int | None) -> Setup:
    """Setup: move (or delete) the ``champion`` alias by hand, outside ume."""

    def setup(root: Path) -> None:
        client = _registry(root).client
        if to is None:
            client.delete_registered_model_alias(MODEL_NAME, "champion")
        else:
            client.set_registered_model_alias(MODEL_NAME, "champion", str(to))

    return setup


def _retag_version(root: Path) -> None:
    _registry(root).client.set_model_version_tag(MODEL_NAME, "1", "ume.decision", "blocked")


def _foreign_version(root: Path) -> None:
    _registry(root).client.create_model_version(MODEL_NAME, source=str(root / "elsewhere"), tags={"ume.manifest_hash": "0" * 64})


def free_port() -> int:
    """A local TCP port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _mlflow_down(root: Path) -> None:
    edit_params(_set("registry.tracking_uri", f"http://127.0.0.1:{free_port()}"))(root)


def _mlflow_back(root: Path) -> None:
    edit_params(_set("registry.tracking_uri", f"sqlite:///{root / 'mlflow.db'}"))(root)


# ------------------------------------------------------------------------------ setups: data


def _png(path: Path, size: tuple[int, int] = (10, 10), seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    arr = (np.random.default_rng(seed).random(size) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


def user_folder(edit: Callable[[Path, list[str]], list[str] | None] | None = None, n: int = 40) -> Setup:
    """Setup: an image folder plus manifest CSV (two classes), the project's data source; ``edit`` breaks it."""

    def setup(root: Path) -> None:
        folder = root / "images"
        folder.mkdir()
        lines = ["path,label,group,owner"]
        for i in range(n):
            _png(folder / f"{i}.png", seed=i)
            lines.append(f"{i}.png,{'cat' if i % 2 else 'dog'},g{i % 3},o{i // 4}")
        if edit is not None:
            lines = edit(folder, lines) or lines
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
        raw = _read_params(root)
        raw["data"].update(source="folder", folder=str(folder), manifest=str(root / "manifest.csv"))
        raw["model"]["num_classes"] = 2
        _write_params(root, raw)

    return setup


def _nan_image(folder: Path, lines: list[str]) -> None:
    import numpy as np
    from PIL import Image

    arr = np.full((10, 10), 0.5, dtype=np.float32)
    arr[3, 3] = np.nan
    Image.fromarray(arr, mode="F").save(folder / "7.tiff")
    lines[8] = lines[8].replace("7.png", "7.tiff")


def _truncated_image(folder: Path, lines: list[str]) -> None:
    blob = (folder / "7.png").read_bytes()
    (folder / "7.png").write_bytes(blob[: len(blob) // 2])


def _huge_image(folder: Path, lines: list[str]) -> None:
    """A 30000 x 30000 PNG header (a decompression bomb): must be refused before it is decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)
    (folder / "7.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _replace_line(index: int, old: str, new: str) -> Callable[[Path, list[str]], None]:
    def edit(folder: Path, lines: list[str]) -> None:
        lines[index] = lines[index].replace(old, new)

    return edit


def _outside_image(folder: Path) -> Path:
    """A readable image beside the folder, not in it: what an escaping path would ingest."""
    outside = folder.parent / "outside"
    outside.mkdir(exist_ok=True)
    _png(outside / "secret.png", seed=99)
    return outside / "secret.png"


def _escape(how: str) -> Callable[[Path, list[str]], None]:
    """Line 6 names a real image outside the folder: by an absolute path, by climbing with ``..``, or through a symlink."""

    def edit(folder: Path, lines: list[str]) -> None:
        target = _outside_image(folder)
        if how == "absolute":
            name = str(target)
        elif how == "climbing":
            name = "../outside/secret.png"
        else:
            (folder / "link.png").symlink_to(target)
            name = "link.png"
        lines[5] = lines[5].replace("4.png", name)

    return edit


def _checkpoint_outside(root: Path) -> None:
    """``model.checkpoint`` given relative to the project but climbing out of it, to a real safetensors file."""
    import torch
    from safetensors.torch import save_file

    outside = root.parent / f"{root.name}-elsewhere.safetensors"
    save_file({"w": torch.zeros(1)}, str(outside))
    raw = _read_params(root)
    raw["model"]["checkpoint"] = f"../{outside.name}"
    _write_params(root, raw)


def _duplicate_ids(folder: Path, lines: list[str]) -> list[str]:
    out = [lines[0] + ",sample_id"]
    out += [f"{line},id{min(i, 5)}" for i, line in enumerate(lines[1:])]
    return out


def prepared_images(kind: str) -> Setup:
    """Setup: replace ``store/data/images.safetensors`` with images of the wrong shape or with NaN."""

    def setup(root: Path) -> None:
        from safetensors.torch import load_file, save_file

        path = root / "store" / "data" / "images.safetensors"
        images = load_file(str(path))["images"]
        if kind == "shape":
            images = images[:, :, :8, :8].contiguous()
        else:
            images = images.float()
            images[0, 0, 0, 0] = float("nan")
        save_file({"images": images}, str(path))

    return setup


# ------------------------------------------------------------------------------------- the corpus

P = "params.yaml"
REQ = "requests/del-"
OK_REQUEST = {"reason": "GDPR art. 17", "received": "2026-01-01T00:00:00Z"}
STEP = ("step", "s01")
AUDIT = ("audit",)

CASES: list[BadInput] = [
    # params.yaml: malformed or wrong-typed, unknown parent, cycles
    BadInput("params-not-yaml", "trained", write_params_text("seed: [unclosed\nstream: {}\n"), STEP, (P, "not valid YAML", "line ")),
    BadInput("params-empty-file", "trained", write_params_text(""), STEP, (P, "expected a mapping at the top level")),
    BadInput("params-top-level-list", "trained", write_params_text("- seed\n- 0\n"), STEP, (P, "expected a mapping at the top level")),
    BadInput("params-missing-file", "trained", _remove_params, STEP, (P, "file not found")),
    BadInput("params-unknown-section", "trained", edit_params(lambda r: r.update(colour="blue")), STEP, (P, "field 'colour'", "unknown key")),
    BadInput("params-unknown-key", "trained", edit_params(_set("data.colour", 1)), STEP, (P, "field 'data.colour'", "unknown key")),
    BadInput("params-wrong-type-int", "trained", edit_params(_set("train.base.epochs", "ten")), STEP, (P, "field 'train.base.epochs'", "expected an integer")),
    BadInput("params-bool-for-int", "trained", edit_params(_set("seed", True)), STEP, (P, "field 'seed'", "expected an integer")),
    BadInput(
        "params-wrong-type-str", "trained", edit_params(_set("registry.tracking_uri", 5)), STEP, (P, "field 'registry.tracking_uri'", "expected a string")
    ),
    BadInput("params-section-not-mapping", "trained", edit_params(_set("train", 5)), STEP, (P, "field 'train'", "expected a mapping")),
    BadInput("params-nan-fraction", "trained", edit_params(_set("data.test_fraction", float("nan"))), STEP, (P, "field 'data.test_fraction'", "finite")),
    BadInput("params-out-of-range", "trained", edit_params(_set("data.test_fraction", 0.9)), STEP, (P, "field 'data.test_fraction'", "fraction")),
    BadInput("params-zero-epochs", "trained", edit_params(_set("train.base.epochs", 0)), STEP, (P, "field 'train.base.epochs'", "positive")),
    BadInput("params-unknown-arch", "trained", edit_params(_set("model.arch", "no_such_net")), STEP, (P, "field 'model.arch'", "unknown timm architecture")),
    BadInput("params-stream-not-mapping", "trained", edit_params(_set("stream", ["s01", "s02"])), STEP, (P, "field 'stream'", "expected a mapping")),
    BadInput("params-step-not-mapping", "trained", edit_params(_set("stream.s02", "learn")), STEP, (P, "field 'stream.s02'", "expected a mapping")),
    BadInput("params-unknown-kind", "trained", edit_params(_set("stream.s01.kind", "teleport")), STEP, (P, "field 'stream.s01.kind'", "expected one of")),
    BadInput(
        "params-bad-step-id",
        "trained",
        edit_params(lambda r: r["stream"].update({"s 3!": {"kind": "learn", "parent": "s02"}})),
        STEP,
        (P, "field 'stream.s 3!'", "step ids"),
    ),
    BadInput(
        "params-missing-parent", "trained", edit_params(lambda r: r["stream"]["s02"].pop("parent")), STEP, (P, "field 'stream.s02.parent'", "names its parent")
    ),
    BadInput("params-unknown-parent", "trained", edit_params(_set("stream.s02.parent", "s99")), STEP, (P, "field 'stream.s02.parent'", "unknown parent 's99'")),
    BadInput(
        "params-cycle",
        "trained",
        edit_params(_set("stream.s01.parent", "s02")),
        STEP,
        (P, "field 'stream.s01.parent'", "unknown parent 's02'", "listed before"),
    ),
    BadInput("params-self-parent", "trained", edit_params(_set("stream.s01.parent", "s01")), STEP, (P, "field 'stream.s01.parent'", "unknown parent 's01'")),
    BadInput(
        "params-duplicate-step",
        "trained",
        append_params_text("  s01:\n    kind: learn\n    parent: base\n    slice: u3\n"),
        STEP,
        (P, "duplicate key 's01'", "line "),
    ),
    BadInput("params-step-option-type", "trained", edit_params(_set("stream.s01.epochs", "3")), STEP, (P, "field 'stream.s01.epochs'", "expected an integer")),
    BadInput(
        "params-step-unknown-option",
        "trained",
        edit_params(_set("stream.s01.learning_rate", 0.1)),
        STEP,
        (P, "field 'stream.s01.learning_rate'", "unknown key"),
    ),
    BadInput("params-unknown-method", "trained", edit_params(_set("stream.s01.method", "magic")), STEP, (P, "field 'stream.s01.method'", "magic")),
    BadInput("params-yaml-alias-bomb", "trained", _alias_bomb, STEP, (P, "field 'stream.s03.extra'", "unknown key")),
    BadInput("step-not-in-stream", "trained", lambda root: None, ("step", "s09"), (P, "field 'stream.s09'", "no such step")),
    # deletion request files: unknown ids, empty selector, wrong types, huge lists
    BadInput(
        "request-unknown-owner",
        "trained",
        forget_request({"selector": {"owner": "nobody"}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'owner'", "unknown owner 'nobody'"),
    ),
    BadInput(
        "request-unknown-ids",
        "trained",
        forget_request({"selector": {"samples": ["nope-1", "nope-2"]}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'samples'", "2 unknown sample id(s)"),
    ),
    BadInput(
        "request-unknown-label",
        "trained",
        forget_request({"selector": {"label": "11"}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'label'", "unknown label '11'"),
    ),
    BadInput(
        "request-empty-selector",
        "trained",
        forget_request({"selector": {}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'selector'", "expected exactly one of"),
    ),
    BadInput(
        "request-two-selectors",
        "trained",
        forget_request({"selector": {"owner": "w040", "label": "3"}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'selector'", "expected exactly one of"),
    ),
    BadInput(
        "request-empty-samples",
        "trained",
        forget_request({"selector": {"samples": []}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'selector.samples'", "non-empty list"),
    ),
    BadInput(
        "request-owner-not-string",
        "trained",
        forget_request({"selector": {"owner": 17}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'selector.owner'", "non-empty string"),
    ),
    BadInput(
        "request-ids-not-strings",
        "trained",
        forget_request({"selector": {"samples": [1, 2]}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'selector.samples'", "list of sample ids"),
    ),
    BadInput(
        "request-reason-not-string",
        "trained",
        forget_request({"selector": {"owner": "w040"}, "reason": 5, "received": "2026-01-01T00:00:00Z"}),
        ("step", "forget-03"),
        (REQ, "field 'reason'", "expected a non-empty string"),
    ),
    BadInput(
        "request-unknown-key",
        "trained",
        forget_request({"selector": {"owner": "w040"}, "colour": "red", **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'colour'", "unknown key"),
    ),
    BadInput(
        "request-huge-list",
        "trained",
        forget_request({"selector": {"samples": [f"x{i:06d}" for i in range(20000)]}, **OK_REQUEST}),
        ("step", "forget-03"),
        (REQ, "field 'samples'", "20000 unknown sample id(s)"),
    ),
    BadInput(
        "forget-method-unknown-scope",
        "trained",
        _forget_with_options({"method": "neggrad", "scope": "everywhere"}),
        ("step", "forget-03"),
        (P, "field 'stream.forget-03.scope'", "expected one of owner, network"),
    ),
    BadInput("request-not-yaml", "trained", forget_request("selector: [unclosed\n"), ("step", "forget-03"), (REQ, "not valid YAML")),
    BadInput("request-not-mapping", "trained", forget_request("- owner\n"), ("step", "forget-03"), (REQ, "expected a mapping")),
    BadInput("request-file-missing", "trained", forget_request({}, write=False), ("step", "forget-03"), (REQ, "deletion request file not found")),
    BadInput("request-edited-selector", "trained", _edited_request, ("step", "forget-03"), (REQ, "field 'selector'", "does not match the request id")),
    BadInput(
        "request-step-without-id",
        "trained",
        edit_params(lambda r: r["stream"].update({"forget-03": {"kind": "forget", "parent": "s02"}})),
        ("step", "forget-03"),
        (P, "field 'stream.forget-03.request'", "names its request id"),
    ),
    # ume forget / ume rollback on the command line
    BadInput(
        "forget-unknown-owner",
        "trained",
        lambda root: None,
        ("forget", "--owner", "nobody", "--reason", "r"),
        ("command line", "field 'owner'", "unknown owner 'nobody'"),
    ),
    BadInput(
        "forget-unknown-label",
        "trained",
        lambda root: None,
        ("forget", "--label", "11", "--reason", "r"),
        ("command line", "field 'label'", "unknown label '11'"),
    ),
    BadInput(
        "forget-unknown-group",
        "trained",
        lambda root: None,
        ("forget", "--group", "scanner_z", "--reason", "r"),
        ("command line", "field 'group'", "unknown group"),
    ),
    BadInput("forget-blank-reason", "trained", lambda root: None, ("forget", "--owner", "w040", "--reason", "  "), ("field '--reason'", "needs a reason")),
    BadInput(
        "forget-unknown-method",
        "trained",
        lambda root: None,
        ("forget", "--owner", "w040", "--reason", "r", "--method", "magic"),
        ("field '--method'", "magic"),
    ),
    BadInput(
        "forget-unknown-ids-file",
        "trained",
        write_file("ids.txt", "nope-1\nnope-2\n"),
        ("forget", "--samples", "{root}/ids.txt", "--reason", "r"),
        ("{root}/ids.txt", "field 'samples'", "2 unknown sample id(s)"),
    ),
    BadInput(
        "forget-empty-ids-file",
        "trained",
        write_file("ids.txt", "# nothing\n"),
        ("forget", "--samples", "{root}/ids.txt", "--reason", "r"),
        ("{root}/ids.txt", "field '--samples'", "no sample ids"),
    ),
    BadInput(
        "forget-missing-ids-file",
        "trained",
        lambda root: None,
        ("forget", "--samples", "{root}/ids.txt", "--reason", "r"),
        ("{root}/ids.txt", "field '--samples'", "not found"),
    ),
    BadInput("rollback-never-promoted", "trained", lambda root: None, ("rollback", "--to", "7"), (P, "field '--to'", "never promoted")),
    BadInput("rollback-unknown-step", "trained", lambda root: None, ("rollback", "--drop", "s99"), ("field '--drop'", "unknown step 's99'")),
    BadInput("rollback-drop-not-served", "trained", lambda root: None, ("rollback", "--drop", "s01"), (P, "field '--drop'", "from step 's01'")),
    # components: corrupt or truncated safetensors, hash vs sidecar, pickle payloads, shapes
    BadInput("weights-truncated", "trained", break_weights("base", "truncate"), AUDIT, ("store/components/base-", "sha256"), exit_code=1),
    BadInput("weights-byte-flipped", "trained", break_weights("base", "flip"), AUDIT, ("store/components/base-", "sha256"), exit_code=1),
    BadInput("weights-missing", "trained", break_weights("base", "delete"), AUDIT, ("store/components/base-", "weights not found"), exit_code=1),
    BadInput("sidecar-hash-mismatch", "trained", break_sidecar("base", "sha256"), AUDIT, ("store/components/base-", "sha256"), exit_code=1),
    BadInput("sidecar-not-json", "trained", break_sidecar("base", "not-json"), AUDIT, ("store/components/base-", ".json", "malformed sidecar"), exit_code=1),
    BadInput("sidecar-missing", "trained", break_sidecar("base", "delete"), AUDIT, ("store/components/base-", "sidecar not found"), exit_code=1),
    BadInput(
        "weights-truncated-rehashed",
        "trained",
        break_weights("base", "truncate", rehash=True),
        AUDIT,
        ("store/components/base-", "not a valid safetensors file"),
        exit_code=1,
    ),
    BadInput(
        "weights-pickle-payload",
        "trained",
        break_weights("base", "pickle", rehash=True),
        AUDIT,
        ("store/components/base-", "not a valid safetensors file"),
        exit_code=1,
        must_not_exist=(MARKER,),
    ),
    BadInput(
        "weights-torch-save-payload",
        "trained",
        break_weights("base", "torch-save", rehash=True),
        AUDIT,
        ("store/components/base-", "not a valid safetensors file"),
        exit_code=1,
        must_not_exist=(MARKER,),
    ),
    BadInput(
        "weights-wrong-shapes",
        "trained",
        break_weights("base", "wrong-shape", rehash=True),
        AUDIT,
        ("store/components/base-", "were both replaced", "content address"),
        exit_code=1,
    ),
    BadInput(
        "adapter-wrong-shapes",
        "learned",
        break_weights("overlay", "wrong-shape", rehash=True),
        AUDIT,
        ("store/components/lora-", "were both replaced", "content address"),
        exit_code=1,
    ),
    BadInput("weights-truncated-step", "trained", break_weights("base", "truncate"), STEP, ("store/components/base-", "sha256")),
    BadInput(
        "weights-pickle-payload-step",
        "trained",
        break_weights("base", "pickle", rehash=True),
        STEP,
        ("store/components/base-", "never unpickles"),
        must_not_exist=(MARKER,),
    ),
    BadInput("adapter-truncated", "learned", break_weights("overlay", "truncate"), AUDIT, ("store/components/lora-", "sha256"), exit_code=1),
    # the ledger and the registry changed by hand
    BadInput("ledger-line-edited", "trained", tamper_ledger("edit"), AUDIT, ("store/ledger.jsonl", "line 2", "modified"), exit_code=1),
    BadInput("ledger-line-dropped", "trained", tamper_ledger("drop"), AUDIT, ("store/ledger.jsonl", "line 2", "expected 2"), exit_code=1),
    BadInput("ledger-line-rehashed", "trained", tamper_ledger("rehash"), AUDIT, ("store/ledger.jsonl", "line 2", "does not chain"), exit_code=1),
    BadInput("ledger-line-truncated", "trained", tamper_ledger("truncate"), AUDIT, ("store/ledger.jsonl", "is not JSON"), exit_code=1),
    BadInput("ledger-tampered-step", "trained", tamper_ledger("edit"), STEP, ("store/ledger.jsonl", "line 2", "modified")),
    BadInput("ledger-tampered-status", "trained", tamper_ledger("edit"), ("status",), ("store/ledger.jsonl", "line 2", "modified")),
    BadInput("alias-moved-by-hand", "learned", move_alias(1), AUDIT, ("champion alias", "version 1", "version 2"), exit_code=1),
    BadInput("alias-deleted-by-hand", "trained", move_alias(None), AUDIT, ("champion alias", "not set", "version 1"), exit_code=1),
    BadInput("version-retagged-by-hand", "trained", _retag_version, AUDIT, ("registry version 1", "'blocked'", "'promoted'"), exit_code=1),
    BadInput("version-registered-by-hand", "trained", _foreign_version, AUDIT, ("registry version 2", "no candidate entry"), exit_code=1),
    # prepared data and a user's image folder
    BadInput(
        "prepared-images-wrong-shape",
        "trained",
        prepared_images("shape"),
        ("forget", "--label", "3", "--reason", "r"),
        ("store/data/images.safetensors", "1x16x16"),
    ),
    BadInput("prepared-images-nan", "trained", prepared_images("nan"), ("forget", "--label", "3", "--reason", "r"), ("store/data/images.safetensors", "uint8")),
    BadInput(
        "manifest-missing-image",
        "empty",
        user_folder(_replace_line(5, "4.png", "missing.png")),
        ("prepare",),
        ("manifest.csv", "field 'path'", "line 6", "image not found"),
    ),
    BadInput(
        "manifest-truncated-image", "empty", user_folder(_truncated_image), ("prepare",), ("manifest.csv", "field 'path'", "line 9", "not a readable image")
    ),
    BadInput("manifest-nan-image", "empty", user_folder(_nan_image), ("prepare",), ("manifest.csv", "field 'path'", "line 9", "finite")),
    BadInput("manifest-huge-image", "empty", user_folder(_huge_image), ("prepare",), ("manifest.csv", "field 'path'", "line 9", "too large to decode safely")),
    BadInput(
        "manifest-missing-column",
        "empty",
        user_folder(_replace_line(0, "label", "klass")),
        ("prepare",),
        ("manifest.csv", "field 'label'", "missing required column"),
    ),
    BadInput(
        "manifest-unknown-column", "empty", user_folder(_replace_line(0, "owner", "colour")), ("prepare",), ("manifest.csv", "field 'colour'", "unknown column")
    ),
    BadInput("manifest-empty-label", "empty", user_folder(_replace_line(3, ",dog,", ",,")), ("prepare",), ("manifest.csv", "field 'label'", "line 4")),
    BadInput("manifest-no-rows", "empty", user_folder(lambda folder, lines: lines[:1]), ("prepare",), ("manifest.csv", "no rows")),
    BadInput("manifest-duplicate-ids", "empty", user_folder(_duplicate_ids), ("prepare",), ("manifest.csv", "field 'sample_id'", "duplicate", "line ")),
    BadInput(
        "manifest-missing-image-reprepare",
        "trained",
        user_folder(_replace_line(5, "4.png", "missing.png")),
        ("prepare",),
        ("manifest.csv", "field 'path'", "line 6", "image not found"),
    ),
    BadInput("manifest-absolute-path", "empty", user_folder(_escape("absolute")), ("prepare",), ("manifest.csv", "field 'path'", "line 6", "path is absolute")),
    BadInput("manifest-climbing-path", "empty", user_folder(_escape("climbing")), ("prepare",), ("manifest.csv", "field 'path'", "line 6", "outside")),
    BadInput("manifest-symlink-escape", "empty", user_folder(_escape("symlink")), ("prepare",), ("manifest.csv", "field 'path'", "line 6", "outside")),
    BadInput("checkpoint-outside-project", "empty", _checkpoint_outside, ("prepare",), (P, "field 'model.checkpoint'", "leads outside the project")),
    BadInput("manifest-class-count", "empty", user_folder(_replace_line(3, ",dog,", ",bird,")), ("prepare",), (P, "field 'model.num_classes'", "3 classes")),
    # MLflow unreachable: fail closed, say why; once it is back the same step completes
    BadInput(
        "mlflow-unreachable",
        "trained",
        _mlflow_down,
        STEP,
        ("field 'registry.tracking_uri'", "cannot reach the MLflow tracking server", "http://127.0.0.1:"),
        recover=_mlflow_back,
        recover_argv=STEP,
    ),
    BadInput(
        "mlflow-unreachable-forget",
        "trained",
        _mlflow_down,
        ("forget", "--owner", "w040", "--reason", "r"),
        ("field 'registry.tracking_uri'", "cannot reach the MLflow tracking server"),
    ),
    BadInput(
        "mlflow-unreachable-audit", "trained", _mlflow_down, AUDIT, ("field 'registry.tracking_uri'", "cannot reach the MLflow tracking server"), exit_code=2
    ),
]


# --------------------------------------------------------------------------------------- figures


def require_champion(root: Path) -> None:
    """The trained template must have a promoted base: most cases break or read the champion."""
    record = root / "store" / "steps" / "base.json"
    base = json.loads(record.read_text()) if record.exists() else {"decision": "missing", "reason": "no step record"}
    if base["decision"] != "promoted":
        raise RuntimeError(f"the template project at {root} has no champion: its base was {base['decision']} ({base['reason']})")


def build_templates(workdir: Path, thresholds: dict[str, float] | None = None) -> dict[str, Path]:
    """The ``empty`` and ``trained`` templates, built with the real runner (about a minute on two cores).

    ``thresholds`` overrides behaviour thresholds of the templates: the corpus needs a promoted base,
    not any particular gate outcome.
    """
    from pipeline.steps import open_workspace, run_base, run_prepare
    from tests.projects import tiny_params_dict, write_params

    templates = {}
    empty = workdir / "template-empty"
    empty.mkdir(parents=True)
    write_params(empty, tiny_params_dict(empty))
    templates["empty"] = empty
    trained = workdir / "template-trained"
    trained.mkdir()
    raw = tiny_params_dict(trained)
    raw["behaviors"]["thresholds"].update(thresholds or {})
    write_params(trained, raw)
    old = os.getcwd()
    os.chdir(trained)
    try:
        ws = open_workspace(trained / "params.yaml")
        run_prepare(ws)
        run_base(ws)
    finally:
        os.chdir(old)
    require_champion(trained)
    templates["trained"] = trained
    return templates


def run_corpus(workdir: Path, templates: dict[str, Path], cases: list[BadInput] = CASES) -> list[Outcome]:
    """Every case; the MLflow case (which trains ``s01`` once it recovers) also yields the ``learned`` template."""
    outcomes = {}
    first = [c for c in cases if c.recover is not None]
    for case in first:
        outcomes[case.name] = run_case(case, templates["trained"], workdir / "cases")
        if "learned" not in templates and outcomes[case.name].recovered:
            templates["learned"] = workdir / "cases" / case.name
    for case in cases:
        if case.name not in outcomes:
            template = templates.get(case.template)
            if template is None:
                outcomes[case.name] = Outcome(case.name, None, [], problems=[f"no {case.template} template"])
                continue
            outcomes[case.name] = run_case(case, template, workdir / "cases")
    return [outcomes[c.name] for c in cases]


PARTS = ("bad-inputs", "crash", "machine")
# How each part's setup differs from what ships (bench.provenance: the record says so).
CONFIGURATION = {
    "bad-inputs": "template projects (a tiny params.yaml; a trained base; a learned step) with one thing broken per case",
    "crash": "the crash harness's small project (bench.crash), killed at every named point",
    "machine": "random streams of every operation kind on a small trained project (bench.stream_machine)",
}


def _bad_inputs_part(workdir: Path, overrides: dict[str, float]) -> dict[str, Any]:
    started = time.time()
    templates = build_templates(workdir, overrides)
    outcomes = run_corpus(workdir, templates)
    for o in outcomes:
        print(
            f"{'clean    ' if o.clean else 'NOT CLEAN'} {o.name}: {o.stderr[0] if len(o.stderr) == 1 else o.stderr[:3]}"
            + (f"  problems={o.problems} changed={o.changed[:3]}" if not o.clean else "")
        )
    return {
        "bad_inputs_tried": len(outcomes),
        "bad_inputs_clean": sum(o.clean for o in outcomes),
        "bad_inputs": [o.to_json() for o in outcomes],
        "template_threshold_overrides": overrides,
        "bad_inputs_seconds": round(time.time() - started, 1),
    }


def _crash_part(workdir: Path, jobs: int) -> dict[str, Any]:
    from bench.crash import CASES as CRASH_CASES
    from bench.crash import run_cases

    started = time.time()
    outcomes = run_cases(list(CRASH_CASES), workdir / "crash", jobs=jobs, log=lambda line: print(line, flush=True))
    return {
        "crash_points_tried": len(outcomes),
        "crash_points_survived": sum(o.survived for o in outcomes),
        "crash_cases": [o.to_json() for o in outcomes],
        "crash_seconds": round(time.time() - started, 1),
    }


def _machine_part(workdir: Path, examples: int, steps: int) -> dict[str, Any]:
    from bench.stream_machine import run_machine
    from pipeline.steps import open_workspace, run_base, run_prepare

    started = time.time()
    from tests.projects import tiny_params_dict, write_params

    template = workdir / "machine-template"
    template.mkdir(parents=True)
    write_params(template, tiny_params_dict(template))
    ws = open_workspace(template / "params.yaml")
    run_prepare(ws)
    run_base(ws)
    result = run_machine(template, workdir / "machine", examples=examples, steps=steps)
    print(f"state machine: {result}", flush=True)
    return {
        "state_machine_examples": result["examples"],
        "state_machine_operations": result["operations"],
        "state_machine_operations_per_example": result["operations_per_example"],
        "state_machine_outcomes": result["outcomes"],
        "invariant_violations": len(result["violations"]),
        "state_machine_violations": result["violations"],
        "state_machine_seconds": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the bad-input corpus, the crash harness and the state machine; write ``reliability.json``."""
    parser = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "results"))
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable); the others keep their recorded figures")
    parser.add_argument("--jobs", type=int, default=2, help="crash cases run at once (default 2)")
    parser.add_argument("--examples", type=int, default=6, help="state-machine examples (default 6)")
    parser.add_argument("--steps", type=int, default=6, help="operations per state-machine example (default 6)")
    parser.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a behaviour threshold of the template projects (when the gate blocks the tiny base)",
    )
    args = parser.parse_args(argv)
    parts = args.only or list(PARTS)
    overrides = {name: float(value) for name, value in (item.split("=", 1) for item in args.threshold)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "reliability.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory(prefix="ume-reliability-") as tmp:
        workdir = Path(tmp)
        if "bad-inputs" in parts:
            result.update(_bad_inputs_part(workdir, overrides))
        if "crash" in parts:
            result.update(_crash_part(workdir, args.jobs))
        if "machine" in parts:
            result.update(_machine_part(workdir, args.examples, args.steps))
    result["notes"] = {
        "bad_inputs": (
            "the corpus bench.reliability.CASES (also tests/test_bad_inputs.py); clean = expected non-zero exit, exactly one stderr "
            "line naming file/field/expectation, and store/, requests/, params.yaml and the MLflow registry (alias, versions, tags) unchanged"
        ),
        "crash_points": (
            "bench.crash.CASES (CI runs bench.crash.CI_CASES in tests/test_crash.py): SIGKILL at a named point of pipeline.core.faults, "
            "recover with `dvc repro`, survived = audit passes, champion/steps/requests equal the crash-free run, components verify, "
            "no temporary file left, dvc status clean"
        ),
        "state_machine": (
            "bench.stream_machine (CI: tests/test_stateful.py): random learn/forget(owner, samples, label, group)/edit/compress/merge/"
            "rollback --to/--drop/a champion alias moved in the MLflow UI then `ume sync`; invariants 1-4 and 6 after every operation"
        ),
    }
    result["machine"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0]}
    given = list(sys.argv[1:] if argv is None else argv)
    # Each part's recorded command already says `--only <part>`: the other arguments follow it (not `--only` twice).
    rest = [a for i, a in enumerate(given) if a != "--only" and (i == 0 or given[i - 1] != "--only") and not a.startswith("--only=")]
    for part in parts:  # a part run alone keeps the other parts' figures and their records
        result[f"provenance_reliability-{part}"] = provenance.record(f"reliability-{part}", rest, configuration=CONFIGURATION[part])
    ordered = {k: result.get(k) for k in ("crash_points_tried", "crash_points_survived", "bad_inputs_tried", "bad_inputs_clean",
                                          "state_machine_examples", "invariant_violations")}
    path.write_text(json.dumps({**ordered, **result}, indent=1) + "\n")
    print(f"figures: {ordered}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
