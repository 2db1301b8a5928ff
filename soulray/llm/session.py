"""What the driver sets up around the LLM calls of one run: the endpoint (the embedded local server
when base_url is 'local'), the named quota broker, the cache location; torn down after."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from soulray.errors import SoulrayError
from soulray.fs import S3Config
from soulray.llm.broker import Budgeting, KeyLimits, LaneLimits, start_broker
from soulray.llm.cache import build_index, compact
from soulray.llm.client import CALLS_PREFIX, LLMRun
from soulray.llm.settings import ApiKey, BatchModeConfig, CallConfig
from soulray.runtime import NAMESPACE, add_drain

if TYPE_CHECKING:
    from soulray.store import VersionStore

log = logging.getLogger(__name__)


class LLMSession:
    """`namespace` is the response cache's section: the rewrite prompt's version (RewriteSession), the
    judge's rubric version, the evaluation's next-turn generation. Callers started inside it reach the
    broker and the cache through `run`. `batch`: the Batch API settings of a caller that uses it (the
    embedded local server's simulated batches follow them)."""

    def __init__(self, config: CallConfig, *, run_id: str, store: VersionStore, s3: S3Config,
                 namespace: str, batch: BatchModeConfig | None = None) -> None:
        self.config, self.run_id, self.store, self.s3 = config, run_id, store, s3
        self.batch = batch or BatchModeConfig()
        self.server = None
        self.broker = None
        self.progress: _ProgressLog | None = None
        self._remove_drain = None
        self.namespace = namespace
        # cache sections compacted at the end besides `namespace`: those of other callers on this session's
        # broker (the rewrite's persona profiles, the quality gate's judge and reviser)
        self.other_sections: list[str] = []

    def __enter__(self) -> LLMSession:
        import ray

        base_url = self.config.base_url
        if base_url == "local":
            from soulray.offline.batches import BatchSettings
            from soulray.offline.server import LocalLLMServer, ServerConfig, SimulatedKey

            local, batch = self.config.local_server, self.batch
            self.server = LocalLLMServer(ServerConfig(default_limits=SimulatedKey(rpm=local.rpm, tpm=local.tpm),
                                                      latency_ms=tuple(local.latency_ms),
                                                      token_counting=local.token_counting, charge=local.charge,
                                                      quantum_s=local.quantum_s,
                                                      batch=BatchSettings(time_scale=batch.local_time_scale,
                                                                          latency_s=batch.local_latency_s,
                                                                          queue_tokens=batch.local_queue_tokens)))
            base_url = self.server.start()
            log.info("rewrite: using the embedded offline rewriter at %s (not a model: for demos and tests)", base_url)
        keys = [key_limits(key) for key in self.config.keys]
        broker_name = f"soulray-quota-broker-{self.run_id}"
        budgeting = Budgeting(quantile=self.config.max_tokens_quantile, margin=self.config.max_tokens_margin)
        self.broker = start_broker(broker_name, keys, self.config.budget_usd, NAMESPACE, budgeting)
        self._compact_cache()  # leftovers of runs that were killed before they could compact
        index = build_index(self.store.cache_uri(), self.namespace, s3=self.s3)
        log.info("rewrite: %d cached responses for %s", len(index), self.namespace)
        self.run = LLMRun(broker_name=broker_name, cache_uri=self.store.cache_uri(), base_url=base_url, s3=self.s3,
                          cache_index=ray.put(index))
        self.base_url = base_url
        self._remove_drain = add_drain(self.drain)
        return self

    def drain(self) -> str:
        """On a stop signal (runs on the stopping thread while the pipeline goes on): the broker grants no
        more calls; wait until the calls in flight have ended and every paid answer is in the cache
        journals (at most DRAIN_S: an orchestrator kills after its grace period, 30 s on Kubernetes)."""
        import ray

        ray.get(self.broker.interrupt.remote("the job received a stop signal"), timeout=10)
        deadline = time.monotonic() + min(DRAIN_S, self.config.timeout_s + 2)
        while True:
            snapshot = ray.get(self.broker.snapshot.remote(), timeout=10)
            paid = int(sum(key["ok"] for key in snapshot["keys"].values()))
            in_flight = sum(key["in_flight"] for key in snapshot["keys"].values())
            if (in_flight == 0 and snapshot["persisted"] >= paid) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        saved = min(paid, snapshot["persisted"])
        lost = f"; {paid - saved} answered too late to be saved" if saved < paid else ""
        return f"{paid} rewrite calls were paid this run and {saved} answers are saved in the response cache{lost}"

    def log_progress(self, expected_rows: int) -> None:
        """Log a progress line every PROGRESS_EVERY_S until the session ends (rows, rate, ETA, calls,
        tokens, spend), from the broker's counters (callers report rows done to `broker.progress`)."""
        if self.progress is None:
            self.progress = _ProgressLog(self.broker, expected_rows)
            self.progress.start()

    def usage(self) -> dict[str, Any]:
        import ray

        snapshot = ray.get(self.broker.snapshot.remote())
        tokens = {"prompt": int(sum(k["prompt_tokens"] for k in snapshot["keys"].values())),
                  "completion": int(sum(k["completion_tokens"] for k in snapshot["keys"].values()))}
        return {"keys": snapshot["keys"], "models": snapshot["models"], "tokens": tokens,
                "cost_usd": snapshot["spent_usd"], "budget_usd": snapshot["budget_usd"],
                "kinds": calls_by_kind(snapshot["tallies"])}

    def tallies(self) -> dict[str, float]:
        """What the callers added to the broker's tallies (the quality gate's counts among them)."""
        import ray

        return ray.get(self.broker.snapshot.remote())["tallies"]

    def _compact_cache(self) -> None:
        try:
            for section in (self.namespace, *self.other_sections):
                compact(self.store.cache_uri(), section, s3=self.s3)
        except (OSError, SoulrayError) as exc:  # the run's outcome does not depend on it; the next run retries
            log.warning("rewrite: cache compaction failed (%s); the journals stay as they are", exc)

    def __exit__(self, *exc: object) -> None:
        import ray

        if self._remove_drain is not None:
            self._remove_drain()
        if self.progress is not None:
            self.progress.stop()
        if self.broker is not None:
            ray.kill(self.broker)
        if self.server is not None:
            self.server.stop()
        self._compact_cache()


def calls_by_kind(tallies: dict[str, float]) -> dict[str, dict[str, float]]:
    """The broker's flat `calls.<kind>.<field>` tallies as {kind: {paid, cached, tokens, cost_usd}}."""
    kinds: dict[str, dict[str, float]] = {}
    for name, value in sorted(tallies.items()):
        if name.startswith(CALLS_PREFIX):
            kind, field = name.removeprefix(CALLS_PREFIX).rsplit(".", 1)
            kinds.setdefault(kind, {"paid": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0,
                                    "cost_usd": 0.0})[field] = value
    return kinds


def key_limits(key: ApiKey) -> KeyLimits:
    """What the broker needs to know about a key: its name and limits, never its secret."""
    per_model = tuple((model, LaneLimits(rpm=limits.rpm, tpm=limits.tpm,
                                         max_concurrent=limits.max_concurrent or key.max_concurrent))
                      for model, limits in key.model_limits.items())
    return KeyLimits(name=key.name, rpm=key.rpm, tpm=key.tpm, max_concurrent=key.max_concurrent,
                     budget_usd=key.budget_usd, models=tuple(key.models) if key.models else None,
                     model_limits=per_model)


PROGRESS_EVERY_S = 10.0
DRAIN_S = 20.0


class _ProgressLog(threading.Thread):
    """Logs how the rewrite is going, from the broker's counters, until stopped."""

    def __init__(self, broker: Any, expected_rows: int, every_s: float = PROGRESS_EVERY_S) -> None:
        super().__init__(daemon=True, name="soulray-progress")
        self.broker, self.expected_rows, self.every_s = broker, expected_rows, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        import ray

        started = time.monotonic()
        while not self.stopped.wait(self.every_s):
            try:
                snapshot = ray.get(self.broker.snapshot.remote(), timeout=self.every_s)
            except Exception:  # noqa: BLE001 - a missed progress line is no reason to disturb the run
                continue
            log.info(progress_line(snapshot, self.expected_rows, time.monotonic() - started))

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=self.every_s + 1)


def progress_line(snapshot: dict[str, Any], expected_rows: int, elapsed_s: float) -> str:
    done = snapshot.get("rows_done", 0)
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    eta = f"{(expected_rows - done) / rate:.0f}s" if rate > 0 and done < expected_rows else "–"
    keys = snapshot["keys"].values()
    calls, limited = sum(k["requests"] for k in keys), sum(k["rate_limited"] for k in keys)
    tokens = sum(k["prompt_tokens"] + k["completion_tokens"] for k in keys)
    share = f" ({100 * done / expected_rows:.0f}%)" if expected_rows else ""
    return (f"rewrite progress: {done}/{expected_rows} rows{share}, {rate:.1f} rows/s, ETA {eta}; "
            f"{calls:.0f} calls ({limited:.0f} rate-limited), {tokens:.0f} tokens, ${snapshot['spent_usd']:.4f} spent")
