"""cluster.yaml is a valid Ray cluster-launcher config, checked by Ray's own schema."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_cluster_yaml_passes_rays_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    # What `ray up` does before launching: fill the provider defaults, then the schema check.
    validate_config(prepare_config(config))  # raises on a schema violation
    types = config["available_node_types"]
    assert {"head", "cpu_workers", "gpu_workers"} <= set(types)
    assert types["head"]["resources"] == {"CPU": 0}
    assert "--dashboard-host=127.0.0.1" in " ".join(config["head_start_ray_commands"])
    assert config["docker"]["image"]


def test_rays_validation_rejects_a_broken_copy() -> None:
    # The check above can fail: an unknown key is a schema violation for Ray too.
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["head_node_typo"] = "head"
    with pytest.raises(Exception, match="head_node_typo"):
        validate_config(prepare_config(config))


# --------------------------------------------------------------------------- as written

#: Variables Ray's launcher sets for the commands it runs, and the shell's own.
_PROVIDED = {"RAY_HEAD_IP", "HOME", "PATH", "USER"}
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")


def _settings() -> dict[str, str]:
    """deploy/cluster.env: the KEY=VALUE lines every node's commands source."""
    out = {}
    for line in (ROOT / "deploy" / "cluster.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _commands(config: dict[str, Any]) -> list[str]:
    return [c for key, value in config.items() if key.endswith("_commands") for c in value]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def unresolved(config: dict[str, Any], settings: dict[str, str]) -> list[str]:
    """What `ray up` would pass on literally: a `$…` anywhere but a command (Ray's launcher
    substitutes no variables), and a variable a command uses that neither the settings file,
    the command itself, nor Ray defines."""
    problems = []
    outside = {k: v for k, v in config.items() if not k.endswith("_commands")}
    problems += [f"placeholder in {text!r}" for text in _strings(outside) if "$" in text]
    for command in _commands(config):
        assigned = set(re.findall(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=", command))
        for name in _VARIABLE.findall(command):
            if name not in settings and name not in assigned and name not in _PROVIDED:
                problems.append(f"${name} in {command[:60]!r}… is defined nowhere")
    return problems


def test_cluster_yaml_has_nothing_unresolved() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    assert unresolved(config, _settings()) == []
    assert all(value for value in _settings().values())


def test_the_check_finds_placeholders_and_undefined_variables() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["docker"]["image"] = "${RAYMLOPS_IMAGE}"
    config["worker_start_ray_commands"].append("echo $NOT_DEFINED_ANYWHERE")
    problems = unresolved(config, _settings())
    assert any("${RAYMLOPS_IMAGE}" in p for p in problems)
    assert any("$NOT_DEFINED_ANYWHERE" in p for p in problems)


def test_every_command_reads_the_settings_it_uses() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    settings = _settings()
    mounted = config["file_mounts"]["~/raymlops-deploy"]
    assert (ROOT / mounted / "cluster.env").is_file()
    for command in _commands(config):
        if any(name in settings for name in _VARIABLE.findall(command)):
            assert ". ~/raymlops-deploy/cluster.env" in command, command


def test_gpus_token_supervision_metrics_and_serve_host() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    # --gpus all only where there are GPUs: Docker refuses it without the NVIDIA runtime.
    assert "--gpus all" not in " ".join(_strings(config["docker"]))
    assert types["gpu_workers"]["docker"]["worker_run_options"] == ["--gpus all"]
    assert "docker" not in types["cpu_workers"]
    # Token authentication really on: made on the head, synced to every worker.
    settings = _settings()
    assert settings["RAY_AUTH_MODE"] == "token"
    assert "~/.ray/auth_token" in " ".join(config["head_setup_commands"])
    assert config["cluster_synced_files"] == ["~/.ray/auth_token"]
    # The MLflow server is restarted whenever it exits, not started once with nohup.
    mlflow = next(c for c in config["head_setup_commands"] if "mlflow server" in c)
    assert "while true" in mlflow
    # Every node exports metrics on one fixed port, and Prometheus finds every node.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert "--metrics-export-port=$RAY_METRICS_PORT" in " ".join(config[key])
    scrape = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    assert settings["RAY_SERVE_DEFAULT_HTTP_HOST"] == "0.0.0.0"


def test_the_image_pins_what_it_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    constraints = (ROOT / "deploy" / "constraints.txt").read_text().splitlines()
    pins = {line.split("==")[0].lower() for line in constraints if "==" in line}
    assert {"ray", "torch", "mlflow", "boto3", "psycopg", "pyarrow"} <= pins
    assert "-e ." not in dockerfile and '".[cluster]"' in dockerfile
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
