"""What a neighbour on the same host sees of `raymlops serve`: the head raymlops starts
listens on loopback only (every socket of its process session, HAProxy included), always
requires a token of its own, and two homes serving at once keep their HAProxy config, admin
socket and token apart, so neither can see or steer the other. A head killed outright is
reported in one line by `serve status`, and `serve` starts it again from the registry.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from raymlops.core.processes import session_processes
from raymlops.serve.api import Client
from tests.e2e.test_serve_cli import _raymlops, _register_champion
from tests.ports import free_port

pytestmark = [pytest.mark.integration, pytest.mark.long]

LOOPBACK = ("127.0.0.1", "[::ffff:127.0.0.1]", "[::1]")


def _listeners(session_id: int) -> list[tuple[str, str]]:
    """(address:port, process name) of every TCP socket listening in a process session."""
    pids = set(session_processes(session_id))
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            name = re.findall(r'\(\("([^"]+)"', line)
            found.append((line.split()[3], name[0] if name else "?"))
    return found


def _serve(home: Path, port: int) -> dict[str, object]:
    sets = [
        "--set", f"serve.port={port}",
        "--set", "serve.cpus_per_replica=0.25",
        "--set", "serve.autoscaling.min_replicas=1",
        "--set", "serve.autoscaling.initial_replicas=1",
        "--set", "serve.autoscaling.max_replicas=1",
    ]  # fmt: skip
    done = _raymlops("serve", "--json", *sets, home=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout))


def _gcs_answers(address: str, token: str | None) -> subprocess.CompletedProcess[str]:
    """`ray.init` of the head from a fresh process, with `token` or none at all (Ray's
    single-machine mode keeps the loopback address as it is)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env["HOME"] = str(Path(address.replace(":", "_")).absolute())  # no ~/.ray/auth_token
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if token is not None:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    code = (
        f"import ray; ray.init(address='{address}', _node_ip_address='127.0.0.1'); "
        "print('NODES', len(ray.nodes()))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_two_homes_serve_on_loopback_with_tokens_and_private_haproxy(tmp_path: Path) -> None:
    homes = [tmp_path / "a", tmp_path / "b"]
    for home in homes:
        home.mkdir()
        _register_champion(home)
    ports = [free_port(), free_port()]
    try:
        served = [_serve(home, port) for home, port in zip(homes, ports, strict=True)]
        heads = [json.loads((h / "serve" / "ray-head.json").read_text()) for h in homes]
        tokens = [(h / "serve" / "auth-token").read_text().strip() for h in homes]

        from raymlops.data.dataset import load_table

        row = load_table("sklearn:breast_cancer").to_pandas().drop(columns=["target"]).head(1)
        for status in served:
            assert Client(str(status["url"])).predict(row).version == 1

        for home, head, token, port in zip(homes, heads, tokens, ports, strict=True):
            # Every listener of the head's whole session is on loopback.
            listening = _listeners(head["session_id"])
            assert len(listening) >= 8, listening  # GCS, raylet, agents, Serve, HAProxy...
            exposed = [(a, n) for a, n in listening if not a.startswith(LOOPBACK)]
            assert not exposed, f"listeners off loopback: {exposed}"
            assert f"127.0.0.1:{port}" in [a for a, _ in listening]
            # Token authentication on, with the home's own token (0600, 256 bits).
            token_file = home / "serve" / "auth-token"
            assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and len(token) == 64
            # HAProxy's config and admin socket in a folder of this home's own.
            env = head["env"]
            folder = Path(env["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            sockets = list(folder.rglob("admin.sock"))
            assert sockets, f"no HAProxy admin socket under {folder}"
            for sock in sockets:
                assert stat.S_IMODE(sock.stat().st_mode) == 0o600
            assert list(folder.rglob("haproxy.cfg*"))

        folders = {Path(h["env"]["RAY_SERVE_HAPROXY_SOCKET_PATH"]).parent for h in heads}
        assert len(folders) == 2
        assert tokens[0] != tokens[1]

        # Neither can steer the other: no token, or the other home's, is refused by the GCS.
        address = heads[0]["address"]
        assert "NODES 1" in _gcs_answers(address, tokens[0]).stdout
        for token in (None, tokens[1]):
            refused = _gcs_answers(address, token)
            assert refused.returncode != 0 and "NODES" not in refused.stdout, refused.stdout

        # One home's head killed (SIGKILL to its whole session) leaves the other answering;
        # `serve status` says in one line that it is gone, `serve` brings it back.
        for pid in session_processes(heads[1]["session_id"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert Client(str(served[0]["url"])).predict(row).version == 1
        shown = _raymlops("serve", "status", "--set", f"serve.port={ports[1]}", home=homes[1])
        assert shown.returncode == 1, shown.stdout + shown.stderr
        said = [line for line in shown.stderr.splitlines() if line.strip()]
        assert len(said) == 1 and "local Ray head" in said[0] and "is gone" in said[0], said
        assert "Traceback" not in shown.stderr
        again = _serve(homes[1], ports[1])
        assert again["url"] == served[1]["url"]
        assert Client(str(again["url"])).predict(row).version == 1
        restarted = json.loads((homes[1] / "serve" / "ray-head.json").read_text())
        assert restarted["session_id"] != heads[1]["session_id"]
        # Stopping one home's endpoint leaves the other's answering.
        stopped = _raymlops("serve", "stop", "--set", f"serve.port={ports[1]}", home=homes[1])
        assert stopped.returncode == 0, stopped.stderr[-3000:]
        assert Client(str(served[0]["url"])).predict(row).version == 1
    finally:
        for home, port in zip(homes, ports, strict=True):
            _raymlops("serve", "stop", "--set", f"serve.port={port}", home=home)
