"""The README's "Bring your own images", followed literally: a folder of RGB images, a manifest CSV
without slices, params.yaml pointed at it, `dvc repro`; a blocked base is explained and rerun."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.projects import assert_decided_by_its_checks, project_audit, project_status, repo_copy, sh

pytestmark = pytest.mark.e2e

COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}


def write_image_folder(root: Path, per_owner: int = 5, owners: int = 30) -> Path:
    """``root/my-images``: tinted noise images (a learnable label), 5 per owner, two groups; no slice column."""
    folder = root / "my-images"
    (folder / "photos").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["path,label,owner,group"]
    names = list(COLOURS)
    for o in range(owners):
        for k in range(per_owner):
            label = names[(o + k) % len(names)]
            pixels = np.clip(rng.normal(COLOURS[label], 45, size=(20, 20, 3)), 0, 255).astype(np.uint8)
            path = f"photos/{o:02d}-{k}.png"
            Image.fromarray(pixels, "RGB").save(folder / path)
            lines.append(f"{path},{label},person{o:02d},{'indoor' if o % 3 else 'outdoor'}")
    (folder / "manifest.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_own_image_folder_runs_the_stream_and_a_blocked_base_says_how_to_rerun(tmp_path: Path) -> None:
    root = repo_copy(tmp_path / "project")
    write_image_folder(root)
    params_path = root / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"].update({"source": "folder", "folder": "my-images", "manifest": "my-images/manifest.csv", "image_size": 16, "channels": 3})
    params["model"].update({"arch": "test_resnet", "num_classes": 3})
    params["stream"] = {"s01-learn-u1": {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3}}
    params["behaviors"]["thresholds"]["min_test_accuracy"] = 1.01  # unreachable: the base is blocked
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))

    failed = sh(root, "dvc", "repro", check=False)
    assert failed.returncode != 0
    output = failed.stdout + failed.stderr
    assert "the base (v1) was blocked by test_test_accuracy_floor" in output, output[-3000:]
    assert "dvc repro --force --single-item base" in output

    params["behaviors"]["thresholds"]["min_test_accuracy"] = 0.5
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    sh(root, "dvc", "repro", "--force", "--single-item", "base")
    sh(root, "dvc", "repro")
    status = project_status(root)
    steps = {s["id"]: s for s in status["steps"]}
    assert steps["base"]["decision"] == "promoted"
    assert_decided_by_its_checks(steps["s01-learn-u1"])
    slices = {s for s in (root / "store" / "data" / "samples.csv").read_text().split() if s}
    assert any(",u1" in line for line in slices)  # the manifest had no slices: contributors were split into base and u1..u3
    assert project_audit(root) == []
