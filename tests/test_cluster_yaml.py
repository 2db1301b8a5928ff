from pathlib import Path

import yaml

CLUSTER = Path(__file__).parent.parent / "cluster.yaml"


def test_cluster_yaml_passes_rays_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER.read_text())
    # what `ray up` does before launching: fill Ray's defaults, then check against Ray's schema
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert {"head", "cpu_worker", "gpu_worker"} <= set(types)
    assert types["cpu_worker"]["min_workers"] < types["cpu_worker"]["max_workers"]  # autoscaling


def test_cluster_yaml_holds_no_credentials():
    text = CLUSTER.read_text().lower()
    for marker in ("aws_access_key", "aws_secret", "secret_access_key", "api_key", "sk-"):
        assert marker not in text
