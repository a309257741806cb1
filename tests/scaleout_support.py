"""Real engines for the ``scaleout`` tests: a throwaway PostgreSQL cluster, an MLflow server on it, headless Chromium.

Nothing here is downloaded or installed: the tools come from Debian packages (``postgresql``,
``chromium``; ``.ci/run`` installs them) and from the ``postgres``/``dev`` extras (``psycopg2-binary``,
``playwright``). :func:`missing_tools` names what is absent so a test can ``pytest.skip`` with the
reason. Everything listens on 127.0.0.1 only and lives in temporary directories removed at shutdown.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PG_USER = "postgres"  # the system user the server runs as when the tests run as root (initdb refuses root)
DB_USER = "ume"
DB_NAME = "mlflow"


def pg_binary(name: str) -> Path | None:
    """A PostgreSQL server binary (``initdb``, ``pg_ctl``) on PATH, else the newest /usr/lib/postgresql/*/bin one."""
    found = shutil.which(name)
    if found:
        return Path(found)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]) if candidates else None


def _as_server_user() -> list[str]:
    """The command prefix that runs a PostgreSQL binary as a non-root user (empty when we are not root)."""
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if runuser is None:
        raise RuntimeError("running as root and `runuser` is missing: cannot start PostgreSQL as a non-root user")
    return [runuser, "-u", PG_USER, "--"]


def missing_tools(*, browser: bool = False) -> list[str]:
    """What the PostgreSQL (and, with ``browser``, Chromium) tests need and this machine lacks; empty when all is there."""
    missing = [f"PostgreSQL `{name}` (Debian package postgresql)" for name in ("initdb", "pg_ctl") if pg_binary(name) is None]
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            missing.append(f"system user {PG_USER!r} to run PostgreSQL as (tests run as root; Debian package postgresql creates it)")
        if shutil.which("runuser") is None:
            missing.append("`runuser` (util-linux)")
    if shutil.which("mlflow", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}") is None:
        missing.append("the `mlflow` command")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        missing.append('psycopg2 (pip install -e ".[postgres]")')
    if browser:
        if not CHROMIUM.exists():
            missing.append(f"{CHROMIUM} (Debian package chromium)")
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            missing.append('playwright (pip install -e ".[dev]")')
    return missing


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], what: str, timeout: float = 120) -> None:
    """Run a setup command; a failure raises with its output."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster."""

    port: int
    root: Path

    @property
    def uri(self) -> str:
        """The SQLAlchemy URI of the MLflow database (trust auth on loopback).

        ``+psycopg2`` names the driver: SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, which the
        ``postgres`` extra does not install.
        """
        return f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{self.port}/{DB_NAME}"


def _server_owned_tempdir() -> Path:
    """A fresh directory in /tmp that the server user owns (pytest's tmp dirs are 0700 root: postgres cannot enter)."""
    root = Path(tempfile.mkdtemp(prefix="ume-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    return root


def _create_database(port: int) -> None:
    """CREATE DATABASE for MLflow (through psycopg2, the driver MLflow itself will use)."""
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user=DB_USER, dbname="postgres", connect_timeout=10)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB_NAME}")
    finally:
        conn.close()


@contextmanager
def postgres_cluster() -> Iterator[Postgres]:
    """``initdb`` a cluster in a temp dir, start it with ``pg_ctl`` on a free loopback port, stop and remove it afterwards.

    Durability is switched off (``fsync``, ``synchronous_commit``, ``full_page_writes``): a test cluster, not a store.
    """
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise RuntimeError("PostgreSQL binaries initdb/pg_ctl not found on PATH or in /usr/lib/postgresql/*/bin")
    prefix = _as_server_user()
    root = _server_owned_tempdir()
    data, port = root / "data", free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    try:
        _run([*prefix, str(initdb), "-D", str(data), "-U", DB_USER, "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"], "initdb")
        _run([*prefix, str(pg_ctl), "-D", str(data), "-l", str(root / "server.log"), "-o", options, "-w", "-t", "60", "start"], "pg_ctl start")
        try:
            _create_database(port)
            yield Postgres(port=port, root=root)
        finally:
            _run([*prefix, str(pg_ctl), "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"], "pg_ctl stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class MlflowServer:
    """A running ``mlflow server``; :meth:`restart` kills it (SIGKILL) and starts it again on the same port."""

    url: str
    log: Path
    _start: Any = None
    _proc: Any = None

    def kill(self) -> None:
        """SIGKILL the server's process group, as a crash or an OOM kill would."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)

    def start(self) -> None:
        """Start it again on the same port and backend; returns once ``/health`` answers."""
        self._proc = self._start()


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``/health`` until it answers OK; raise with the server's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited {proc.returncode} before answering /health:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s:\n{log.read_text()[-4000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (uvicorn and its workers), SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextmanager
def mlflow_server(backend_uri: str, workdir: Path, *, workers: int = 2, timeout: float = 180) -> Iterator[MlflowServer]:
    """``mlflow server`` on ``backend_uri`` (tracking and registry), artifacts proxied into ``workdir/artifacts``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "mlflow-server.log"
    artifacts = workdir / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    bindir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "1",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # no huey job workers: ume runs no server-side jobs
    }
    cmd = [
        str(bindir / "mlflow") if (bindir / "mlflow").exists() else "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]

    def start() -> subprocess.Popen:
        with log.open("a") as out:
            proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_healthy(url, proc, log, timeout)
        return proc

    server = MlflowServer(url=url, log=log, _start=start)
    try:
        server.start()
        yield server
    finally:
        if server._proc is not None:
            _stop(server._proc)


@contextmanager
def chromium_page(user_data_dir: Path, *, timeout_ms: int = 60_000) -> Iterator[object]:
    """A Playwright page in the system's headless Chromium with a fresh profile (never ``playwright install``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            context.set_default_timeout(timeout_ms)
            page = context.pages[0] if context.pages else context.new_page()
            yield page
        finally:
            context.close()
