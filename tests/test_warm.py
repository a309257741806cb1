"""The warm process (pipeline/launcher, docs/start-up.md): a command it runs behaves as the same command run cold.

Same standard output and error, same exit status, the same death by a signal; the ``ume`` script itself
imports nothing but the standard library. The session's warm process is started by tests/conftest.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.core import warm
from pipeline.launcher.entry import run_warm
from tests.projects import command_env, sh

pytestmark = pytest.mark.skipif(not warm.enabled(), reason="UME_WARM=0 or no pidfd/fd passing here: every command runs cold")


@pytest.fixture(scope="module")
def listening() -> None:
    """The session's warm process, up."""
    assert warm.start(wait=True), "the warm process did not start"


def test_the_ume_script_imports_only_the_standard_library() -> None:
    probe = "import sys, pipeline.launcher.entry; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'yaml', 'mlflow', 'lightning', 'numpy'}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.strip() == "[]"


def _both(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """``ume args`` run cold (``UME_WARM=0``) and warm."""
    cold = sh(cwd, "ume", *args, check=False, env={"UME_WARM": "0", **(env or {})})
    hot = sh(cwd, "ume", *args, check=False, env=env)
    return cold, hot


def test_a_warm_command_exits_and_prints_as_a_cold_one(project: Path, listening: None, capfd: pytest.CaptureFixture[str]) -> None:
    assert run_warm(["ume", "status", "--check"]) == 1  # pending steps; not None: the warm process ran it
    assert "pending" in capfd.readouterr().out
    cold, hot = _both(project, "status", "--check")
    assert (cold.returncode, cold.stdout, cold.stderr) == (hot.returncode, hot.stdout, hot.stderr)
    assert hot.returncode == 1 and "pending: base" in hot.stderr
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["train"]["lr"] = "fast"
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    cold, hot = _both(project, "status")
    assert cold.returncode == hot.returncode == 2
    assert cold.stderr == hot.stderr and "params.yaml" in hot.stderr and "lr" in hot.stderr


def test_a_command_killed_in_the_warm_process_dies_of_the_same_signal(project: Path, listening: None, monkeypatch: pytest.MonkeyPatch) -> None:
    log = project / "crash.log"
    crash = {"UME_CRASH_AT": "prepare.staged", "UME_CRASH_LOG": str(log)}
    cold, hot = _both(project, "prepare", env=crash)
    assert cold.returncode == hot.returncode == -9, hot.stderr[-3000:]
    for name, value in crash.items():
        monkeypatch.setenv(name, value)
    assert run_warm(["ume", "prepare"]) == -9  # not None: the warm process's child ran it, and died of SIGKILL
    assert log.read_text().count("prepare.staged") == 3
    for name in crash:
        monkeypatch.delenv(name)
    done = subprocess.run(["ume", "prepare"], cwd=project, env=command_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "prepared" in done.stdout, done.stderr


def test_a_command_waits_for_a_warm_process_that_is_still_importing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The demo's second stage used to import cold beside the warm process the first had started: now it waits for it."""
    import fcntl
    import socket
    import threading
    import time

    monkeypatch.setenv(warm.DIR_ENV, str(tmp_path))
    path = warm.socket_path()
    assert not warm.starting(path) and warm.wait_for(path, timeout=30) is None  # nothing starting: no wait
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def listen_later() -> None:
        time.sleep(0.5)  # the imports
        listener.bind(str(path))
        listener.listen(1)

    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held as a starting server holds it
        assert warm.starting(path)
        later = threading.Thread(target=listen_later)
        later.start()
        sock = warm.wait_for(path, timeout=30)  # the socket does not exist until the thread binds it: a connection means it waited
        later.join()
        assert sock is not None
        sock.close()
    listener.close()
    assert not warm.starting(path)  # the lock is free again: a probe never keeps it


def test_the_preload_holds_the_pytest_plugins_every_gate_loads() -> None:
    """pytest imports the plugins installed packages declare in each gate's pytest.main; the warm process imports
    them once (ume's own behaviour plugin is one of them)."""
    from pipeline.launcher.server import pytest_plugin_modules

    plugins = pytest_plugin_modules()
    assert "behaviors.plugin" in plugins
    assert plugins == sorted(set(plugins))


def test_precompile_writes_bytecode_for_every_file_under_its_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole directories, not a list of imports: a module imported only at run time gets its bytecode too."""
    import importlib.util

    from pipeline.launcher import precompile

    (tmp_path / "pkg" / "deep").mkdir(parents=True)
    sources = [tmp_path / "pkg" / "__init__.py", tmp_path / "pkg" / "deep" / "only_at_run_time.py"]
    for source in sources:
        source.write_text("VALUE = 1\n")
    (tmp_path / "pkg" / "python2.py").write_text("print 'left as it is'\n")
    monkeypatch.setattr(precompile, "directories", lambda: [tmp_path / "pkg"])
    assert precompile.main() == 0
    assert all(Path(importlib.util.cache_from_source(str(s))).exists() for s in sources)
    assert [p.name for p in precompile._without_bytecode(tmp_path / "pkg")] == ["python2.py"]
