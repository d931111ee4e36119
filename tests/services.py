"""Real shared services on loopback, for tests marked `services`: PostgreSQL, Redis, an S3 endpoint (moto_server)
and an MLflow tracking server backed by the first and third.

Each server runs as a child process on a free 127.0.0.1 port with its data in a temporary folder, and stops when
its fixture ends. The binaries come from Debian's packages (`postgresql`, `redis-server`; `scripts/setup.sh`
installs them) and the virtual environment (`moto_server`, `mlflow`). PostgreSQL refuses to run as root, so under
root it runs as the `postgres` user the Debian package creates.

    with postgres() as pg:        pg.url  -> "postgresql://narrator@127.0.0.1:PORT/narrator"
    with redis() as r:            r.url   -> "redis://127.0.0.1:PORT/0"
    with s3() as s:               s.url   -> "http://127.0.0.1:PORT" (bucket `narrator` made)
    with mlflow_server(pg, s) as m: m.url -> "http://127.0.0.1:PORT"
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

POSTGRES_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
S3_BUCKET = "narrator"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
START_TIMEOUT_S = 90.0


class ServiceUnavailable(RuntimeError):
    """A server binary is missing or did not come up; the message says how to install it."""


@dataclass
class Service:
    """One running server: `url` to reach it, `env` to hand to clients (e.g. S3 credentials)."""

    name: str
    url: str
    process: subprocess.Popen
    env: dict[str, str] = field(default_factory=dict)
    workdir: Path | None = None

    def stop(self) -> None:
        """SIGTERM to the server's process group (it was started in its own session), SIGKILL after 20 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Callable[[], bool], process: subprocess.Popen, name: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceUnavailable(f"{name} exited with {process.returncode}: {log_tail(log)}")
        try:
            if ready():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    process.kill()
    raise ServiceUnavailable(f"{name} did not come up in {START_TIMEOUT_S:.0f} s: {log_tail(log)}")


def log_tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def venv_tool(name: str) -> str:
    """A console script of this virtual environment (moto_server, mlflow), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise ServiceUnavailable(f"{name} not found: run `make setup` (it installs requirements.txt)")
    return found


def _as_postgres_user() -> list[str]:
    if os.geteuid() != 0:
        return []
    runuser = shutil.which("runuser")
    if not runuser:
        raise ServiceUnavailable("running as root and runuser is missing: PostgreSQL refuses to run as root")
    return [runuser, "-u", "postgres", "--"]


@contextmanager
def postgres() -> Iterator[Service]:
    """A fresh PostgreSQL cluster with a database `narrator` owned by user `narrator` (trust auth, loopback)."""
    if not POSTGRES_BIN_DIRS:
        raise ServiceUnavailable("PostgreSQL is not installed: `apt-get install postgresql` (scripts/setup.sh does)")
    bin_dir = POSTGRES_BIN_DIRS[0]
    workdir = Path(tempfile.mkdtemp(prefix="narrator-pg-"))
    data, log = workdir / "data", workdir / "postgres.log"
    prefix = _as_postgres_user()
    if prefix:
        shutil.chown(workdir, user="postgres", group="postgres")
    subprocess.run([*prefix, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "narrator",
                    "--encoding=UTF8", "--no-sync"], check=True, capture_output=True)
    port = free_port()
    with open(log, "wb") as log_handle:
        process = subprocess.Popen(
            [*prefix, str(bin_dir / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(port),
             "-k", str(workdir), "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"postgresql://narrator@127.0.0.1:{port}"

    def ready() -> bool:
        import psycopg

        psycopg.connect(f"{base}/postgres", connect_timeout=2).close()
        return True

    service = Service("postgres", f"{base}/narrator", process, workdir=workdir)
    try:
        wait_until(ready, process, "postgres", log)
        import psycopg

        connection = psycopg.connect(f"{base}/postgres", autocommit=True)
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE narrator")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def create_database(pg: Service, name: str) -> str:
    """A new empty database on `pg`; returns its URL (one per test keeps tests apart)."""
    import psycopg

    base = pg.url.rsplit("/", 1)[0]
    connection = psycopg.connect(f"{base}/postgres", autocommit=True)
    with connection.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    connection.close()
    return f"{base}/{name}"


@contextmanager
def redis() -> Iterator[Service]:
    """A Redis server with no persistence."""
    binary = shutil.which("redis-server")
    if not binary:
        raise ServiceUnavailable("redis-server is not installed: `apt-get install redis-server` (scripts/setup.sh does)")
    workdir = Path(tempfile.mkdtemp(prefix="narrator-redis-"))
    port, log = free_port(), workdir / "redis.log"
    with open(log, "wb") as log_handle:
        process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                    "--appendonly", "no", "--dir", str(workdir)],
                                   stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    service = Service("redis", f"redis://127.0.0.1:{port}/0", process, workdir=workdir)
    try:
        wait_until(lambda: port_open(port), process, "redis-server", log)
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def s3() -> Iterator[Service]:
    """moto_server as an S3 endpoint, with the bucket `narrator` made; `env` holds the credentials and endpoint."""
    workdir = Path(tempfile.mkdtemp(prefix="narrator-s3-"))
    port, log = free_port(), workdir / "moto.log"
    with open(log, "wb") as log_handle:
        process = subprocess.Popen([venv_tool("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=log_handle, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    env = {**S3_CREDENTIALS, "AWS_ENDPOINT_URL_S3": url, "MLFLOW_S3_ENDPOINT_URL": url}
    service = Service("s3", url, process, env=env, workdir=workdir)
    try:
        wait_until(lambda: port_open(port), process, "moto_server", log)
        import boto3

        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=S3_BUCKET)
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def mlflow_server(pg: Service, store: Service, database: str = "mlflow") -> Iterator[Service]:
    """`mlflow server` with its tracking and registry in PostgreSQL (`database` on `pg`) and artifacts in S3
    (`s3://narrator/mlflow` on `store`), proxied by the server (clients need no S3 credentials for artifacts)."""
    workdir = Path(tempfile.mkdtemp(prefix="narrator-mlflow-"))
    port, log = free_port(), workdir / "mlflow.log"
    backend = pg.url.rsplit("/", 1)[0] + f"/{database}"
    env = {**os.environ, **store.env, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    with open(log, "wb") as log_handle:
        process = subprocess.Popen(
            [venv_tool("mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend, "--artifacts-destination", f"s3://{S3_BUCKET}/mlflow"],
            stdout=log_handle, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        import urllib.request

        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200

    service = Service("mlflow", url, process, env={"MLFLOW_TRACKING_URI": url}, workdir=workdir)
    try:
        wait_until(ready, process, "mlflow server", log)
        yield service
    finally:
        service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
