"""A cluster whose machines share nothing but the network, on this one machine (#14).

- **PostgreSQL** (Debian's server binaries, run as the `postgres` user) in a temporary data
  folder on a free port: the MLflow server's database.
- **An S3-compatible object store**: moto's standalone server on a free loopback port, one
  bucket.
- **An MLflow tracking server** on that database with proxied artifacts
  (`--artifacts-destination s3://…`): clients reach artifacts through the server.
- **A Ray head and two worker nodes**, each `ray start` in mount and UTS namespaces of its
  own (`unshare --mount --uts`): a private tmpfs over /tmp, /home (its $HOME), /dev/shm and
  ~/.ray, a hostname of its own and a loopback address of its own (127.0.0.2-4), so that a
  file one node writes cannot be read by another node or by the test, and a node is "not
  this machine" by everything Ray reports about it. The head has no CPUs (as on a real
  cluster, jobs' drivers run there and the work on the workers); each worker has one.
  Token authentication is on, with a token the fixture generates and hands to the nodes.
- **The laptop** is the test process: it reaches the cluster only through the job API
  (http://127.0.0.1:<port>), the MLflow server's URI and the object store.

Every process is started in a session of its own and stopped by its PID (never `ray
stop`). The nodes' software is this virtual environment, as a cluster's image would be.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from raymlops.core.processes import session_processes, stop_session
from tests.ports import free_port

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")
RAYMLOPS = str(BIN / "raymlops")
REPO = Path(__file__).resolve().parents[2]

#: Where Debian keeps PostgreSQL's server binaries (postgres, initdb).
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
BUCKET = "raymlops-ci"
#: Object-store credentials of the moto server (it accepts any).
S3_KEYS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: Run inside `unshare --mount --uts --propagation private`: a node's private folders and
#: name, then its command. The working directory moves into the private $HOME: a process
#: that Ray spawns (multiprocessing's spawn) changes into its parent's working directory,
#: which must exist in this namespace.
_NODE_SH = r"""
set -e
name=$1; shift
# The software (this checkout, its virtual environment) may itself live under /tmp: keep it
# at its path, as an image would have it, and hide everything else there.
keep=/run/rmo-keep/$name; i=0
for path in $(echo "$KEEP_PATHS" | tr ':' ' '); do
  mkdir -p "$keep/$i" && mount --bind "$path" "$keep/$i"; i=$((i+1))
done
mount -t tmpfs -o size=2g,mode=1777 tmpfs /tmp
i=0
for path in $(echo "$KEEP_PATHS" | tr ':' ' '); do
  mkdir -p "$path" && mount --move "$keep/$i" "$path"; i=$((i+1))
done
mount -t tmpfs -o mode=755 tmpfs /home
mount -t tmpfs -o size=3g,mode=1777 tmpfs /dev/shm
if [ -d "$REAL_HOME/.ray" ]; then mount -t tmpfs tmpfs "$REAL_HOME/.ray"; fi
hostname "$name"
mkdir -p /tmp/ray /home/node
export HOME=/home/node
cd /home/node
exec "$@"
"""


def can_isolate() -> str | None:
    """Why this machine cannot run the cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces, the postgres user)"
    if not PG_BIN:
        return "needs Debian's PostgreSQL server binaries (apt-get install postgresql)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    try:
        import boto3  # noqa: F401
        import moto  # noqa: F401
        import psycopg  # noqa: F401
    except ImportError as exc:
        return f"needs the cluster and test extras ({exc.name}): pip install -e '.[dev]'"
    return None


@dataclass
class Service:
    """One process (and its session) the fixture started."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        stop_session(self.process.pid, term_s=10.0, kill_s=10.0)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _start(
    name: str,
    command: list[str],
    folder: Path,
    env: dict[str, str],
    ready: Callable[[], bool],
    timeout_s: float = 180.0,
    user: str | None = None,
) -> Service:
    log = folder / f"{name}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder,
            start_new_session=True, user=user,
        )  # fmt: skip
    service = Service(name, process, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(Exception):
            if ready():
                return service
        time.sleep(0.5)
    service.stop()
    pytest.fail(f"{name} did not come up in {timeout_s:.0f} s:\n{service.tail()}")


def _http_ok(url: str, headers: dict[str, str] | None = None) -> bool:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=3):
            return True
    except urllib.error.HTTPError:
        return True  # it answers


def _base_env() -> dict[str, str]:
    """This process's environment without anything that points at a Ray, a registry, a
    raymlops home or credentials; the object store's keys and this virtual environment's
    `python` first on PATH (what a job's `python` resolves to)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_ADDRESS", "MLFLOW_", "RAY_AUTH_", "RAYMLOPS_", "AWS_"))
    }
    env.update(S3_KEYS)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass
class SharedNothingCluster:
    """What the laptop knows of the cluster: addresses, URIs and credentials."""

    api: str
    gcs: str
    tracking_uri: str
    s3_endpoint: str
    bucket: str
    token: str
    folder: Path
    services: list[Service] = field(default_factory=list)
    node_ips: dict[str, str] = field(default_factory=dict)
    node_args: dict[str, list[str]] = field(default_factory=dict)

    def uri(self, *parts: str) -> str:
        """An s3:// URI in the cluster's bucket."""
        return "/".join([f"s3://{self.bucket}", *(p.strip("/") for p in parts)])

    def laptop_env(self, home: Path) -> dict[str, str]:
        """The environment of a `raymlops` command on the laptop: this cluster's registry,
        object store and token, and a home of its own that no node can see."""
        env = _base_env()
        env.update(
            RAYMLOPS_HOME=str(home),
            MLFLOW_TRACKING_URI=self.tracking_uri,
            AWS_ENDPOINT_URL=self.s3_endpoint,
            MLFLOW_S3_ENDPOINT_URL=self.s3_endpoint,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
        )
        return env

    def raymlops(
        self, *args: str, home: Path, timeout: float = 900, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`raymlops ARGS` on the laptop."""
        home.mkdir(parents=True, exist_ok=True)
        return subprocess.run(
            [RAYMLOPS, *args], env=self.laptop_env(home), cwd=cwd or home,
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def alive_nodes(self) -> set[str]:
        """The addresses of the nodes the cluster reports alive (its dashboard's view)."""
        import json

        request = urllib.request.Request(
            f"{self.api}/nodes?view=summary", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            summary = json.load(answer)["data"]["summary"]
        return {n["ip"] for n in summary if n.get("raylet", {}).get("state") == "ALIVE"}

    def kill_node(self, name: str) -> None:
        """SIGKILL every process of node `name` at once (raylet, object store, its workers
        and actors): a machine that dies, not one that shuts down."""
        (service,) = [s for s in self.services if s.name == name]
        stop_session(service.process.pid, term_s=0.0, kill_s=20.0)
        service.process.wait(timeout=10)
        self.services.remove(service)
        deadline = time.monotonic() + 120
        while self.node_ips[name] in self.alive_nodes():
            assert time.monotonic() < deadline, f"the cluster still reports {name} alive"
            time.sleep(1)

    def start_node(self, name: str) -> None:
        """Start worker node `name`; after `kill_node`, a fresh node with empty disks under
        the dead one's name and address, as an autoscaler replaces a machine that died."""
        ip = self.node_ips[name]
        ready = lambda: ip in self.alive_nodes()  # noqa: E731
        self.services.append(_ray_node(self, name, ip, self.node_args[name], ready))

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()
        survivors = {s.name: session_processes(s.process.pid) for s in self.services}
        assert not any(survivors.values()), f"processes survived: {survivors}"


def _postgres(folder: Path) -> tuple[Service, str]:
    """A PostgreSQL server of its own, as the `postgres` user; returns it and its URI."""
    data = folder / "pg"
    data.mkdir()
    shutil.chown(data, "postgres")
    os.chmod(folder, 0o755)
    bin_ = PG_BIN[-1]
    subprocess.run(
        [str(bin_ / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres",
         "--no-sync", "-E", "UTF8"],
        check=True, capture_output=True, user="postgres", cwd=data,
    )  # fmt: skip
    port = free_port()
    command = [str(bin_ / "postgres"), "-D", str(data / "db"), "-p", str(port),
               "-k", str(data), "-h", "127.0.0.1", "-c", "fsync=off",
               "-c", "max_connections=200"]  # fmt: skip
    ready = shutil.which("pg_isready") or str(bin_ / "pg_isready")

    def up() -> bool:
        return subprocess.run([ready, "-h", "127.0.0.1", "-p", str(port)]).returncode == 0

    service = _start("postgres", command, data, dict(os.environ), up, user="postgres")
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
         "CREATE DATABASE mlflow"],
        check=True, capture_output=True,
    )  # fmt: skip
    return service, f"postgresql://postgres@127.0.0.1:{port}/mlflow"


def _object_store(folder: Path) -> tuple[Service, str]:
    """moto's S3 server with the bucket; returns it and its endpoint."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    service = _start(
        "s3", [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], folder,
        dict(os.environ), lambda: _http_ok(f"{endpoint}/moto-api/"),
    )  # fmt: skip
    import boto3

    boto3.client("s3", endpoint_url=endpoint, **_boto_keys()).create_bucket(Bucket=BUCKET)
    return service, endpoint


def _boto_keys() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_KEYS["AWS_DEFAULT_REGION"],
    }


def _mlflow_server(
    folder: Path, database: str, artifacts: str, env: dict[str, str]
) -> tuple[Service, str]:
    """`mlflow server` on `database` with artifacts proxied to `artifacts`, on a free port;
    returns it and its URI once /health answers."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    command = [str(BIN / "mlflow"), "server", "--backend-store-uri", database,
               "--artifacts-destination", artifacts,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    service = _start("mlflow", command, folder, env, lambda: _http_ok(f"{uri}/health"), 300)
    return service, uri


@contextlib.contextmanager
def mlflow_server(folder: Path, artifacts: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """An `mlflow server` of its own (SQLite in `folder`, artifacts proxied to `artifacts`)
    for the block; yields its URI and stops it (its session) at the end."""
    service, uri = _mlflow_server(
        folder, f"sqlite:///{folder / 'mlflow.db'}", artifacts, env or dict(os.environ)
    )
    try:
        yield uri
    finally:
        service.stop()


def _node_env(cluster: SharedNothingCluster) -> dict[str, str]:
    """What a node's machine would have: the object store's credentials and endpoint, the
    cluster token; nothing of the laptop's."""
    env = _base_env()
    env.update(
        AWS_ENDPOINT_URL=cluster.s3_endpoint,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=cluster.token,
        REAL_HOME=os.path.expanduser("~"),
        KEEP_PATHS=":".join(str(p) for p in _software_under_tmp()),
    )
    return env


def _software_under_tmp() -> list[Path]:
    """This checkout and its virtual environment, where they are under /tmp (a CI clone):
    the nodes' private /tmp must not hide the software they run."""
    found: list[Path] = []
    for path in sorted({REPO.resolve(), Path(sys.prefix).resolve()}, key=lambda p: len(p.parts)):
        if path.is_relative_to("/tmp") and not any(path.is_relative_to(f) for f in found):
            found.append(path)
    return found


def _ray_node(
    cluster: SharedNothingCluster, name: str, ip: str, args: list[str], ready: Callable[[], bool]
) -> Service:
    command = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
               "sh", "-c", _NODE_SH, "node", name,
               RAY, "start", "--block", "--disable-usage-stats", f"--node-ip-address={ip}",
               "--temp-dir=/tmp/ray", "--object-store-memory=400000000",
               f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", *args]  # fmt: skip
    cluster.node_ips[name], cluster.node_args[name] = ip, args
    return _start(name, command, cluster.folder, _node_env(cluster), ready, timeout_s=240)


@contextlib.contextmanager
def shared_nothing_cluster() -> Iterator[SharedNothingCluster]:
    """Start everything; stop everything (by PID) when the block ends."""
    folder = Path(tempfile.mkdtemp(prefix="rmo-sn-", dir="/tmp"))
    gcs_port, dashboard = free_port(), free_port()
    cluster = SharedNothingCluster(
        api=f"http://127.0.0.1:{dashboard}",
        gcs=f"127.0.0.2:{gcs_port}",
        tracking_uri="",
        s3_endpoint="",
        bucket=BUCKET,
        token=secrets.token_hex(32),
        folder=folder,
    )
    try:
        pg, database = _postgres(folder)
        cluster.services.append(pg)
        s3, cluster.s3_endpoint = _object_store(folder)
        cluster.services.append(s3)
        server, cluster.tracking_uri = _mlflow_server(
            folder, database, f"s3://{BUCKET}/mlflow",
            {**os.environ, **S3_KEYS, "MLFLOW_S3_ENDPOINT_URL": cluster.s3_endpoint},
        )  # fmt: skip
        cluster.services.append(server)
        auth = {"Authorization": f"Bearer {cluster.token}"}
        head_args = ["--head", "--num-cpus=0", f"--port={gcs_port}",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                     f"--ray-client-server-port={free_port()}"]  # fmt: skip
        head_ready = lambda: _http_ok(f"{cluster.api}/api/version", auth)  # noqa: E731
        cluster.services.append(_ray_node(cluster, "rmo-head", "127.0.0.2", head_args, head_ready))
        for n in (1, 2):
            name, ip = f"rmo-worker-{n}", f"127.0.0.{n + 2}"
            cluster.node_ips[name] = ip
            cluster.node_args[name] = [f"--address={cluster.gcs}", "--num-cpus=1"]
            cluster.start_node(name)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
        for name in cluster.node_ips:  # the empty mount points of kept folders
            shutil.rmtree(f"/run/rmo-keep/{name}", ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rmdir("/run/rmo-keep")  # unless another cluster of these is running
