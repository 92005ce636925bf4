"""cluster.yaml is a valid Ray cluster-launcher config, checked by Ray's own schema."""

from __future__ import annotations

from pathlib import Path

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
