"""End to end: the real `dvc repro` and the real `ume` CLI on a copy of this repository.

The stream (a good and a bad learn step) runs once per module into a template nobody changes; every test
works on its own copy of it (issue 29, item 4), so any one runs alone and in any order
(`pytest tests/test_e2e.py -p randomly`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.projects import BAD_DROP, BAD_DROP_FAILS, assert_decided_by_its_checks, base_template, clone_project, command_env, project_audit, project_status
from tests.projects import sh as run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stream_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's base template (prepare + base by `dvc repro`), then `dvc repro` of a good and a bad slice; read-only."""
    stream = {
        "s01-learn-u1": {"kind": "learn", "parent": "base", "slice": "u1", "epochs": 3},
        "s02-learn-u2": {**BAD_DROP, "parent": "s01-learn-u1"},  # every label wrong: blocked by a wide margin
    }
    dest = clone_project(base_template(tmp_path_factory), tmp_path_factory.mktemp("e2e") / "repo", stream=stream)
    run(dest, "dvc", "repro")
    return dest


@pytest.fixture
def repo_copy(stream_template: Path, tmp_path: Path) -> Path:
    """This test's own copy of the stream (git, DVC state, registry and store): nothing it does reaches another test."""
    return clone_project(stream_template, tmp_path / "repo")


def forget_with_certificate(repo: Path, owner: str) -> str:
    """``ume forget`` of ``owner``, ``dvc repro``, ``ume certificate``: the request id."""
    filed = run(repo, "ume", "forget", "--owner", owner, "--reason", "GDPR art. 17").stdout
    run(repo, "dvc", "repro")
    request_id = re.search(r"deletion request (del-[0-9a-f]+)", filed).group(1)
    run(repo, "ume", "certificate", request_id)
    return request_id


def owner_in(repo: Path, slice_name: str, index: int = 0) -> str:
    """A data subject of ``slice_name`` in the prepared sample table."""
    import pandas as pd

    rows = pd.read_csv(repo / "store" / "data" / "samples.csv").fillna({"owner": ""})
    return str(rows.loc[rows["slice"] == slice_name, "owner"].iloc[index])


def ran(repro_stdout: str) -> list[str]:
    """The stages a `dvc repro` ran, in order."""
    return re.findall(r"^Running stage '([^']+)'", repro_stdout, flags=re.M)


def status(cwd: Path) -> dict:
    """`ume status --json`, in-process: the console script itself is exercised by `ume status --check` below."""
    return project_status(cwd)


def test_stream_runs_gates_and_blocks_the_bad_slice(repo_copy: Path) -> None:
    st = status(repo_copy)
    assert {"champion", "steps", "deleted_samples"} <= set(st)
    steps = {s["id"]: s for s in st["steps"]}
    assert steps["base"]["decision"] == "promoted"
    assert steps["s02-learn-u2"]["decision"] == "blocked"
    assert st["champion"]["version"] == steps["s01-learn-u1"]["champion_after"]
    assert all({"id", "kind", "decision"} <= set(s) for s in st["steps"])
    assert st["deleted_samples"] == 0
    assert project_audit(repo_copy) == []
    assert run(repo_copy, "ume", "status", "--check", check=False).returncode == 1
    # seal's `ume references --ahead` trained the champion's reference bank: a later deletion's gate finds it
    assert len(list((repo_copy / "store" / "references").rglob("shadow-*.safetensors"))) == 4  # two complementary pairs


def test_history_metrics_plots_and_standalone_specs(repo_copy: Path) -> None:
    metrics = run(repo_copy, "dvc", "metrics", "show").stdout
    assert "store/metrics/base.json" in metrics and "s02-learn-u2" in metrics and "blocked" in metrics
    history = json.loads((repo_copy / "store" / "history.json").read_text())
    assert [row["step"] for row in history] == ["base", "s01-learn-u1", "s02-learn-u2"]
    shown = run(repo_copy, "dvc", "plots", "show")
    assert "WARNING" not in shown.stderr, shown.stderr
    page = (repo_copy / "dvc_plots" / "index.html").read_text()
    assert "test_accuracy" in page and "agreement" in page
    report = repo_copy / "store" / "reports" / "s02-learn-u2"
    assert (report / "report.html").exists() and (report / "confusion_matrix.png").exists()
    specs = run(repo_copy, sys.executable, "-m", "pytest", "behaviors/", "-q", "--import-mode=importlib", "-p", "no:cacheprovider", check=False)
    assert specs.returncode == 0, specs.stdout[-3000:]
    on_the_blocked_version = ("--ume-version", "3", "-k", BAD_DROP_FAILS)  # only the spec it must fail
    blocked = run(repo_copy, sys.executable, "-m", "pytest", "behaviors/", "-q", "--import-mode=importlib", *on_the_blocked_version, check=False)
    assert blocked.returncode == 1 and BAD_DROP_FAILS in blocked.stdout


def test_no_change_repro_runs_nothing_and_appended_step_runs_alone(repo_copy: Path) -> None:
    again = run(repo_copy, "dvc", "repro")
    assert "Running stage" not in again.stdout
    params = repo_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    raw["stream"]["s03-learn-u3"] = {"kind": "learn", "parent": "s02-learn-u2", "slice": "u3", "epochs": 3}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = run(repo_copy, "dvc", "repro").stdout
    assert ran(out) == ["step@s03-learn-u3", "seal"], out
    steps = {s["id"]: s for s in status(repo_copy)["steps"]}
    assert_decided_by_its_checks(steps["s03-learn-u3"])
    assert project_audit(repo_copy) == []


def test_rollback_refusals_and_rollback_to(repo_copy: Path) -> None:
    before = (repo_copy / "params.yaml").read_text()
    refused = run(repo_copy, "ume", "rollback", "--to", "3", check=False)  # v3 was blocked
    assert refused.returncode == 2 and "never promoted" in refused.stderr
    assert (repo_copy / "params.yaml").read_text() == before
    done = run(repo_copy, "ume", "rollback", "--to", "1")
    assert "rollback" in done.stdout and ran(done.stdout) == ["step@rollback-03", "seal"], done.stdout  # the stream's third step
    st = status(repo_copy)
    assert st["champion"]["version"] == 1
    assert st["steps"][-1]["kind"] == "rollback" and st["steps"][-1]["decision"] == "promoted"
    assert project_audit(repo_copy) == []
    assert "Running stage" not in run(repo_copy, "dvc", "repro").stdout


def test_forget_request_runs_alone_and_blocks_unsafe_rollback(repo_copy: Path) -> None:
    owner = owner_in(repo_copy, "u1")
    bad = run(repo_copy, "ume", "forget", "--owner", "w999", "--reason", "x", check=False)
    assert bad.returncode == 2 and "unknown owner" in bad.stderr
    run(repo_copy, "ume", "forget", "--owner", owner, "--reason", "GDPR art. 17")
    out = run(repo_copy, "dvc", "repro").stdout
    assert len(ran(out)) == 2 and ran(out)[0].startswith("step@forget-") and ran(out)[1] == "seal", out
    st = status(repo_copy)
    assert st["deleted_samples"] > 0 and st["pending_requests"] == []
    assert st["steps"][-1]["kind"] == "forget" and st["steps"][-1]["decision"] == "promoted"
    bank = json.loads((repo_copy / "store" / "steps" / f"{st['steps'][-1]['id']}.json").read_text())["reference_bank"]
    # kept full by seal: the gate purged one shadow of each pair that saw the owner and trained none; seal trained them back
    assert bank["trained"] == 0 and bank["shadows"] >= 2 and bank["shadows"] + bank["purged"] == 4, bank
    assert len(list((repo_copy / "store" / "references").rglob("shadow-*.safetensors"))) == 4
    refused = run(repo_copy, "ume", "rollback", "--to", "2", check=False)  # v2 = base + s01 still carries the owner
    assert refused.returncode == 2 and "del-" in refused.stderr
    assert project_audit(repo_copy) == []
    request_id = next(iter(st["requests"]))
    run(repo_copy, "ume", "certificate", request_id)
    text = (repo_copy / "certificates" / f"{request_id}.md").read_text()
    assert "Deletion certificate" in text and owner not in text.split("## Hashed")[0].replace(f"owner {owner}", "")
    proof = text.index("## Proof by construction")  # an exact deletion's certificate leads with its construction (issue 32)
    assert proof < text.index("## Evidence") and "the deletion is exact by construction" in text[proof:]


def test_two_phase_deletion_runs_both_phases_in_one_dvc_repro(repo_copy: Path) -> None:
    """Issue 15: an approximate `ume forget` appends its exact phase; one `dvc repro` runs both and pays the debt."""
    # Drift is not what this test checks (tests/test_specs_bite.py shows that check blocking): the exact phase
    # retrains a 3-epoch expert, which may disagree with the approximate champion on half the canaries of a tiny
    # model, near any threshold. Thresholds are no stage's DVC parameter: nothing reruns for this.
    raw = yaml.safe_load((repo_copy / "params.yaml").read_text())
    raw["behaviors"]["thresholds"]["min_canary_agreement"] = 0.0
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    owner = owner_in(repo_copy, "u1", -1)
    forgot = run(repo_copy, "ume", "forget", "--owner", owner, "--method", "finetune", "--reason", "GDPR art. 17").stdout
    assert "-exact (exact)" in forgot, forgot
    out = run(repo_copy, "dvc", "repro").stdout
    stages = ran(out)
    assert len(stages) == 3 and stages[1] == f"{stages[0]}-exact" and stages[2] == "seal", out
    st = status(repo_copy)
    request = st["requests"][re.search(r"deletion request (del-[0-9a-f]+)", forgot).group(1)]
    assert request["state"] == "exact" and request["exact_since"] and st["deletion_debt"]["samples"] == 0
    assert project_audit(repo_copy) == []
    assert "Running stage" not in run(repo_copy, "dvc", "repro").stdout


def test_two_repro_at_once_wait_or_refuse_and_stay_consistent(repo_copy: Path) -> None:
    """Two `dvc repro` started together: DVC's lock lets one run; the other waits or refuses cleanly."""
    params = repo_copy / "params.yaml"
    raw = yaml.safe_load(params.read_text())
    key = "s-concurrent"
    raw["stream"][key] = {"kind": "learn", "parent": list(raw["stream"])[-1], "slice": "u3", "epochs": 3}
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = command_env()
    procs = [subprocess.Popen(["dvc", "repro"], cwd=repo_copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes, outputs
    for code, out in zip(codes, outputs, strict=True):
        assert code == 0 or "lock" in out.lower(), out[-2000:]
    entries = [json.loads(line) for line in (repo_copy / "store" / "ledger.jsonl").read_text().splitlines() if line]
    assert [e["type"] for e in entries if e["step"] == key].count("candidate") == 1
    assert [e["type"] for e in entries if e["step"] == key].count("decision") == 1
    assert project_audit(repo_copy) == []
    assert "Running stage" not in run(repo_copy, "dvc", "repro").stdout


@pytest.mark.scaleout
def test_dvc_push_to_a_local_remote_and_pull_into_a_fresh_clone(repo_copy: Path, tmp_path: Path) -> None:
    """Issue 8: `dvc push`, then `git clone` + `dvc pull` elsewhere gives the same champion, and repro there runs nothing."""
    assert "Data and pipelines are up to date" in run(repo_copy, "dvc", "status").stdout
    remote = tmp_path / "remote"
    run(repo_copy, "dvc", "remote", "add", "-d", "storage", str(remote))
    run(repo_copy, "git", "add", "-A")
    run(repo_copy, "git", "-c", "user.name=ume", "-c", "user.email=ume@example.invalid", "commit", "-q", "-m", "stream")
    pushed = run(repo_copy, "dvc", "push")
    assert "pushed" in pushed.stdout and not (remote / "runs").exists()  # every stage is persistent: no run-cache entries
    clone = tmp_path / "clone"
    run(tmp_path, "git", "clone", "-q", str(repo_copy), str(clone))
    assert not (clone / "store").exists() and not (clone / "mlflow.db").exists()
    run(clone, "dvc", "pull")
    assert status(clone) == status(repo_copy)
    assert project_audit(clone) == []
    assert "Data and pipelines are up to date" in run(clone, "dvc", "status").stdout
    again = run(clone, "dvc", "repro")
    assert "Running stage" not in again.stdout and "is cached" not in again.stdout, again.stdout
    for path in [clone / "mlflow.db", *(clone / "store").rglob("*"), *(clone / "mlruns").rglob("*")]:
        if path.is_file():  # cache type copy: later steps write here, so nothing may be a link into the cache
            assert not path.is_symlink() and path.stat().st_nlink == 1 and os.access(path, os.W_OK), path


def test_every_tamper_case_is_caught_and_named(repo_copy: Path, tmp_path: Path) -> None:
    """Issue 18: history rewritten with recomputed hashes, with the registry, the runs and the DVC state made to match.

    Runs five cases of ``bench.tamper`` (all ten make the figures in bench/results/reliability.json) on this test's
    copy of the stream after an owner's deletion and its certificate, with dvc.lock committed to git (the anchor an
    insider cannot quietly rewrite).
    """
    from bench.tamper import CASES, run_case

    forget_with_certificate(repo_copy, owner_in(repo_copy, "u1"))
    run(repo_copy, "git", "add", "-A")
    run(repo_copy, "git", "-c", "user.name=ume", "-c", "user.email=ume@example.invalid", "commit", "-q", "--allow-empty", "-m", "tamper")
    (certificate,) = sorted((repo_copy / "certificates").glob("*.md"))
    # The cases that each add one more rewritten anchor; `python -m bench.tamper` runs all ten (reliability.json).
    ci_cases = (
        "history-rewritten",
        "rewrite-and-registry-tags",
        "rewrite-registry-runs-and-dvc",
        "ledger-replaced-from-first-entry",
        "certificate-vs-rewritten-ledger",
    )
    outcomes = {case.name: run_case(case, repo_copy, certificate, tmp_path) for case in CASES if case.name in ci_cases}
    missed = [name for name, o in outcomes.items() if not o.caught]
    assert not missed, {name: outcomes[name].problems for name in missed}
    rewritten = " ".join(outcomes["history-rewritten"].problems)
    assert "history diverges at entry" in rewritten and "the ledger DVC cached" in rewritten, rewritten
    assert "no longer in the ledger as certified" in outcomes["certificate-vs-rewritten-ledger"].problems[0]
    hidden = " ".join(outcomes["rewrite-registry-runs-and-dvc"].problems)
    assert "dvc.lock at git commit" in hidden and "history diverges at entry" in hidden, hidden
    replaced = " ".join(outcomes["ledger-replaced-from-first-entry"].problems)
    assert "replaced from its first entry" in replaced and "dvc.lock at git commit" in replaced, replaced


def test_audit_fails_on_tampering_and_hand_moved_alias(repo_copy: Path, tmp_path: Path) -> None:
    ledger = repo_copy / "store" / "ledger.jsonl"
    original = ledger.read_text()
    try:
        ledger.write_text(original.replace('"decision":"blocked"', '"decision":"promoted"', 1))
        bad = run(repo_copy, "ume", "audit", check=False)
        assert bad.returncode != 0 and "ledger chain broken" in bad.stderr
    finally:
        ledger.write_text(original)
    script = (
        "from mlflow import MlflowClient; c = MlflowClient('sqlite:///mlflow.db', 'sqlite:///mlflow.db');"
        "c.set_registered_model_alias('ume-digits', 'champion', '3')"
    )
    run(repo_copy, sys.executable, "-c", script)
    bad = run(repo_copy, "ume", "audit", check=False)
    assert bad.returncode != 0 and "champion alias points at version 3" in bad.stderr
