"""Starting or joining Ray, sized so a 2-core machine cannot deadlock."""

from __future__ import annotations

import logging
import os
import sys

from soulray.config import RayConfig

NAMESPACE = "soulray"
log = logging.getLogger(__name__)


def init_ray(config: RayConfig) -> None:
    """Join the cluster at `config.address` (or $RAY_ADDRESS, as `ray job submit` sets), else start a
    local Ray that declares max(4, cores) logical CPUs: with only 2, an actor pool can take every CPU
    and starve the read tasks (DESIGN.md, pitfalls)."""
    import ray
    from ray.data import DataContext

    # Set before any Dataset is created: a Dataset copies the context when it is built.
    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    if ray.is_initialized():
        return
    address = config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, namespace=NAMESPACE, log_to_driver=True)
        log.info("joined Ray cluster at %s", address)
        return
    num_cpus = config.num_cpus or max(4, os.cpu_count() or 1)
    object_store = config.object_store_mb * 1024 * 1024 if config.object_store_mb else None
    ray.init(num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=False, log_to_driver=True,
             configure_logging=False, object_store_memory=object_store)
    log.info("started a local Ray with %d logical CPUs", num_cpus)


def refuse_secrets_in_runtime_env(secret_env_names: list[str]) -> None:
    """Fail if an env var that holds a secret came in through the job's runtime_env: Ray keeps
    runtime_env in the job's metadata and shows it on the dashboard, so a key passed that way has
    already leaked to everyone who can see the cluster. Secrets belong on the nodes (node setup, a
    secret store, an instance role) or in files."""
    import ray

    from soulray.errors import ConfigError

    runtime_env = ray.get_runtime_context().runtime_env or {}
    passed = sorted(set(runtime_env.get("env_vars") or {}) & set(secret_env_names))
    if passed:
        raise ConfigError(f"{', '.join(passed)} came through the job's runtime_env env_vars, which Ray stores in "
                          "job metadata and shows on the dashboard; set it on the nodes instead (cluster.yaml "
                          "setup_commands / a secret store) and rotate that key")
