"""params.yaml validation: every bad input names the file and the field; nothing is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import load_params, parse_params
from pipeline.core.errors import ConfigError
from pipeline.steps import validate_params
from tests.projects import REPO, tiny_params_dict, write_params


def test_repo_params_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)  # paths in params.yaml (edit specs, requests) are relative to the project root
    params = load_params(REPO / "params.yaml")
    validate_params(params)
    assert params.model.arch == "test_resnet"
    assert len([s for s in params.stream.values() if s.kind == "learn"]) >= 3


@pytest.mark.parametrize(
    ("mutate", "field", "words"),
    [
        (lambda r: r.update(colour="blue"), "colour", "unknown key"),
        (lambda r: r["train"]["base"].update(epochs="ten"), "train.base.epochs", "expected an integer"),
        (lambda r: r["train"]["base"].update(lr=True), "train.base.lr", "expected a number"),
        (lambda r: r["data"].update(source="imagenet"), "data.source", "expected 'digits' or 'folder'"),
        (lambda r: r["data"].update(test_fraction=0.9), "data.test_fraction", "fraction"),
        (lambda r: r["model"].update(depth=3), "model.depth", "unknown key"),
        (lambda r: r["stream"]["s02"].update(parent="nope"), "stream.s02.parent", "unknown parent"),
        (lambda r: r["stream"]["s01"].update(kind="teleport"), "stream.s01.kind", "expected one of"),
        (lambda r: r["stream"].update({"base": {"kind": "learn", "parent": "base"}}), "stream.base", "not 'base'"),
        (lambda r: r.setdefault("behaviors", {}).setdefault("references", {}).update(score="tarot"), "behaviors.references.score", "lira, rmia"),
        (lambda r: r.setdefault("behaviors", {}).setdefault("references", {}).update(offline_a=2.0), "behaviors.references.offline_a", "[0, 1]"),
    ],
)
def test_bad_params_name_the_field(tmp_path: Path, mutate, field: str, words: str) -> None:
    raw = tiny_params_dict(tmp_path)
    mutate(raw)
    with pytest.raises(ConfigError) as info:
        parse_params(raw, file="params.yaml")
    assert f"field '{field}'" in str(info.value)
    assert words in str(info.value)
    assert str(info.value).startswith("params.yaml")


def test_unknown_arch_and_method_options_are_rejected(tmp_path: Path) -> None:
    raw = tiny_params_dict(tmp_path)
    raw["model"]["arch"] = "resnet_does_not_exist"
    with pytest.raises(ConfigError, match="model.arch"):
        validate_params(parse_params(raw))
    raw = tiny_params_dict(tmp_path)
    raw["stream"]["s01"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"stream\.s01\.learning_rate"):
        validate_params(parse_params(raw))
    raw = tiny_params_dict(tmp_path)
    raw["stream"]["s01"]["method"] = "magic"
    with pytest.raises(ConfigError, match=r"unknown learn method 'magic'"):
        validate_params(parse_params(raw))
    raw = tiny_params_dict(tmp_path)
    raw["stream"]["s01"]["epochs"] = "3"
    with pytest.raises(ConfigError, match=r"stream\.s01\.epochs"):
        validate_params(parse_params(raw))


def test_not_yaml_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(path)


@pytest.mark.parametrize(
    ("command", "subprocess_run"),
    [(["prepare"], True), (["base"], False), (["step", "s01"], False), (["rollback", "--to", "1"], False)],
)
def test_cli_bad_params_exit_nonzero_and_write_nothing(
    tmp_path: Path, command: list[str], subprocess_run: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One command through the real console entry point, the others in-process (same code, no interpreter start)."""
    raw = tiny_params_dict(tmp_path)
    raw["model"]["arch"] = "no_such_arch"
    write_params(tmp_path, raw)
    if subprocess_run:
        proc = subprocess.run([sys.executable, "-m", "pipeline.cli", *command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        code, stderr = proc.returncode, proc.stderr
    else:
        from pipeline.cli import main

        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as info:
            main(command)
        code, stderr = info.value.code, capsys.readouterr().err
    assert code == 2, stderr
    assert "field 'model.arch'" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "store").exists()
    assert not (tmp_path / "mlflow.db").exists()
    assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == raw
