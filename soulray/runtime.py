"""Starting or joining Ray, sized so a 2-core machine cannot deadlock."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable

from pydantic import Field

from soulray.errors import Interrupted
from soulray.settings import StrictModel

NAMESPACE = "soulray"
log = logging.getLogger(__name__)


# A local Ray's object store: the rows held for dedup fill whatever store there is, so with Ray's default
# (30% of memory: ~7 GB on a 24 GB machine) a 1M-row run held 2.8 GB more than a 100k one (2.04x the
# 100k peak); with 1 GB it spills the rest to disk (~2.4 GB at 1M rows, ~5 s of writes) and the rewrite phase
# stays within 1.37x of the 100k peak (issue 22, bench/RESULTS.md). Dedup holds those rows as copies Ray Data
# does not charge to the rewrite's budget (soulray/dedup/stage.py `_hold`), or a store this small throttles it.
LOCAL_OBJECT_STORE_MB = 1024
# The GCS keeps every task's events (for the dashboard and `ray list tasks`) up to Ray's cap of 100,000 tasks,
# ~3.8 KB each: +76 MB per 20,000 tasks, +185 MB over a 1M-row run, ~380 MB at the cap. Kept to the last
# 10,000 (~40 MB); a cluster's head sets the same through RAY_task_events_max_num_task_in_gcs (cluster.yaml).
LOCAL_TASK_EVENTS = 10_000
# Ray keeps up to one idle task worker per CPU (those beyond it end after 1 s), and a worker keeps the memory
# of the largest task it ran (object-store pages it wrote, heap its allocators keep: pyarrow's release_unused()
# and malloc_trim in the worker gave back ~10%, bench/RESULTS.md). `ray.idle_worker_s` ends every idle task
# worker after that long. Off by default: 10 s freed the long phases' idle workers but, one threshold for all,
# kept the workers beyond the CPUs 10 s instead of 1 s, and a 1M run's shuffle start peaked at 5.3 GB with six
# idle workers (issue 22); shorter thresholds restart workers (~1 s of a core each) and are not yet measured.
LOCAL_IDLE_WORKER_S: float | None = None


class RayConfig(StrictModel):
    address: str | None = Field(None, description="None: start a local Ray; 'auto' or ray://… to join")
    num_cpus: int | None = Field(None, ge=1, description="logical CPUs of a local Ray (default: max(4, cores))")
    object_store_mb: int | None = Field(
        LOCAL_OBJECT_STORE_MB, ge=100,
        description="object store of a local Ray, MB (at most 30% of the memory available, Ray's own default); what does "
                    "not fit spills to disk. The job holds every row for dedup: a store sized by Ray's default fills with "
                    "them as the run grows. null: Ray's default")
    task_events: int | None = Field(
        LOCAL_TASK_EVENTS, ge=100,
        description="tasks whose events a local Ray's GCS keeps (dashboard, `ray list tasks`); ~3.8 KB each. "
                    "null: Ray's default (100,000)")
    idle_worker_s: float | None = Field(
        LOCAL_IDLE_WORKER_S, ge=0.2,
        description="seconds a local Ray's task workers may idle before they end, handing back the memory of the "
                    "largest task each ran (every idle worker; Ray's own rule ends only those beyond one per CPU, after "
                    "1 s). null (default): Ray's rule")


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
        _reinstall_stop_handlers()
        return
    num_cpus = config.num_cpus or max(4, os.cpu_count() or 1)
    object_store = local_object_store_bytes(config.object_store_mb, chosen="object_store_mb" in config.model_fields_set)
    system: dict[str, int] = {}
    if config.task_events:
        system["task_events_max_num_task_in_gcs"] = config.task_events
    if config.idle_worker_s is not None:  # Ray's soft limit counts idle task workers; actors are never ended
        system.update(num_workers_soft_limit=0, idle_worker_killing_time_threshold_ms=int(config.idle_worker_s * 1000))
    ray.init(num_cpus=num_cpus, namespace=NAMESPACE, include_dashboard=False, log_to_driver=True,
             configure_logging=False, object_store_memory=object_store, _system_config=system or None)
    log.info("started a local Ray with %d logical CPUs", num_cpus)
    _reinstall_stop_handlers()


def local_object_store_bytes(megabytes: int | None, *, chosen: bool, available: int | None = None) -> int | None:
    """The object store for a local Ray: `megabytes` as set (`chosen`), or the default at most Ray's own
    (30% of the memory available: on a small machine a larger store would take from the processes);
    None: Ray's default."""
    if not megabytes:
        return None
    if chosen:
        return megabytes * 1024 * 1024
    if available is None:
        import psutil

        available = psutil.virtual_memory().available
    return min(megabytes * 1024 * 1024, int(available * 0.3))


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


# ---- stopping on SIGTERM / SIGINT --------------------------------------------------------------------------
# SIGTERM is what cron timeouts, Kubernetes and `ray job stop` send; SIGINT is Ctrl-C. Ray's core worker
# installs a failure-signal handler for SIGTERM in the driver that dumps C++ stacks and aborts (exit 134),
# so ours goes in after ray.init as well as before. On the first signal the registered drains run on a
# thread (the main thread keeps the pipeline going meanwhile, so the rewrite actors can finish writing
# what was paid); then the main thread gets Interrupted. A second signal stops at once.

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_drains: list[Callable[[], str | None]] = []
_state: dict[str, object] = {"installed": False, "signal": None, "notes": []}


def install_stop_handlers() -> Callable[[], None]:
    """Stop cleanly on SIGTERM and SIGINT while the CLI runs a command; returns what puts the previous
    handlers back (a test that calls the CLI in-process gets its own back)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    _state.update(installed=True, signal=None, notes=[])
    _reinstall_stop_handlers()

    def restore() -> None:
        _state["installed"] = False
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    return restore


def _reinstall_stop_handlers() -> None:
    if _state["installed"] and threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _on_stop_signal)


def add_drain(drain: Callable[[], str | None]) -> Callable[[], None]:
    """Run `drain` when a stop signal comes (it returns a line for the user, or None); returns the
    function that unregisters it."""
    _drains.append(drain)
    return lambda: _drains.remove(drain) if drain in _drains else None


def _on_stop_signal(signum: int, frame: object) -> None:
    if _state["signal"] is None and _drains:
        _state["signal"] = signum
        threading.Thread(target=_drain_then_interrupt, args=(signum,), name="soulray-stop", daemon=True).start()
        return
    raise Interrupted(signum, list(_state["notes"]))  # nothing to drain, drained, or asked twice


def _drain_then_interrupt(signum: int) -> None:
    log.warning("%s received: stopping (waiting for calls in flight to be saved; signal again to stop now)",
                signal.Signals(signum).name)
    for drain in list(_drains):
        try:
            note = drain()
        except Exception as exc:  # noqa: BLE001 - stopping must go on; say what could not be saved
            note = f"could not wait for the rewrite to save its answers ({exc})"
        if note:
            _state["notes"].append(note)
    signal.pthread_kill(threading.main_thread().ident, signum)
