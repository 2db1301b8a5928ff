"""The quota broker's throughput (issue 22): reservations and settlements a second, and how long a
reservation takes, under many caller actors.

    python bench/broker.py [--quick] [--callers 1 4 16]     # or: python bench/run.py --only broker
    python bench/broker.py --ledger-only                     # (a) alone, by calls in flight (~20 s)

(a) the pure ledger in this process, no Ray: the ceiling on one core, with 256 calls in flight and
again with IN_FLIGHT (4 keys: a quarter of them a lane; a 30,000 RPM account with 20 s calls keeps
~10,000 in flight); (b) through Ray, N caller actors
each with many concurrent requests (like the rewrite actors) against the one named broker actor, one
actor call per reservation and per settlement; (c) the same through BrokerLink (soulray/llm/client.py),
which coalesces a caller's requests within 5 ms and its settlements within 20 ms. Every call is a
real CallShape reservation settled "ok" with usage and rate-limit headers, as the rewrite actors send
them; the keys' limits are so high that no call ever waits: this measures the broker, not the quota.
The machine is shared: the load average is reported beside each figure, and (b), (c) as ratios to (a).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from soulray.llm.broker import CallShape, KeyLimits, QuotaLedger, start_broker  # noqa: E402

KEYS = [KeyLimits(name=f"key-{index}", rpm=10**9, tpm=10**12, max_concurrent=10**9) for index in range(4)]
SHAPE = CallShape(prompt_tokens=900, completion_tokens=700, max_tokens=2048, namespace="bench-v1")
OUTCOME = {"status": "ok", "prompt_tokens": 950, "completion_tokens": 680, "cost_usd": 0.002,
           "own_completion_tokens": 700, "finish_reason": "stop", "remaining_requests": 10**9 - 1,
           "remaining_tokens": 10**12 - 2000, "reset_requests_s": 0.001, "reset_tokens_s": 0.001}
REQUEST = ("gpt-3.5-turbo", 1600, 0.002, SHAPE)
IN_FLIGHT = (64, 2048, 8192, 32768)


def pure_core(seconds: float, in_flight: int = 256) -> dict:
    """(a) Reserve and settle on the ledger itself, `in_flight` calls open at a time (a settlement
    closes the oldest), with the real clock, so each lane's minute holds what a minute would. The
    completions run 480-880 tokens (as real ones vary): a reservation holds their mean and a deviation,
    so most settlements give tokens back, the path that looks at the calls granted after."""
    ledger = QuotaLedger(KEYS)
    # the calls in flight are granted before the clock starts: every reservation timed has a settlement
    open_ids: deque[int] = deque(ledger.reserve(*REQUEST[:3], shape=REQUEST[3]).id for _ in range(in_flight))
    done, started = in_flight, time.perf_counter()
    cpu = time.process_time()
    while time.perf_counter() - started < seconds:
        for _ in range(200):
            open_ids.append(ledger.reserve(*REQUEST[:3], shape=REQUEST[3]).id)
            if len(open_ids) > in_flight:
                completion = 480 + (done * 37) % 401
                ledger.settle(open_ids.popleft(), **{**OUTCOME, "completion_tokens": completion,
                                                     "own_completion_tokens": completion})
            done += 1
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    timed = done - in_flight
    return {"reservations": done, "wall_s": wall, "cpu_s": cpu, "per_s": timed / wall, "per_cpu_s": timed / cpu,
            "settled_exactly": _exact(ledger, done - len(open_ids))}


def _exact(ledger: QuotaLedger, settled: int) -> bool:
    stats = ledger.snapshot()["models"]["gpt-3.5-turbo"]
    return stats["ok"] == settled and stats["prompt_tokens"] == 950 * settled


def _caller_class():
    import ray

    from soulray.llm.client import BrokerLink

    @ray.remote(num_cpus=0)
    class Caller:
        """Stands for a rewrite actor: `concurrency` rows, each reserving, sleeping its wait (0 here)
        and settling, in a loop; `batched`: through BrokerLink, else one actor call each."""

        def __init__(self, broker_name: str, namespace: str) -> None:
            self.broker = ray.get_actor(broker_name, namespace=namespace)
            self.link = BrokerLink(self.broker)

        async def run(self, *, seconds: float, concurrency: int, batched: bool) -> dict:
            latencies: list[float] = []
            counts = {"reserved": 0, "settled": 0}
            deadline = time.monotonic() + seconds

            async def row() -> None:
                while time.monotonic() < deadline:
                    asked = time.perf_counter()
                    if batched:
                        grant = await self.link.reserve(*REQUEST)
                    else:
                        grant = await self.broker.reserve.remote(*REQUEST[:3], shape=REQUEST[3])
                    latencies.append(time.perf_counter() - asked)
                    counts["reserved"] += 1
                    await asyncio.sleep(grant.wait_s)
                    if batched:
                        self.link.settle(grant.id, OUTCOME)
                    else:
                        await self.broker.settle.remote(grant.id, **OUTCOME)
                    counts["settled"] += 1

            await asyncio.gather(*(row() for _ in range(concurrency)))
            await self.link.flush()
            return {**counts, "latencies": latencies}

    return Caller


def _cpu_seconds(_broker: object) -> float:
    return time.process_time()


def through_ray(callers: int, concurrency: int, seconds: float, *, batched: bool) -> dict:
    """(b)/(c) `callers` actors × `concurrency` rows against one named broker, as the job starts it."""
    import ray

    name = f"bench-broker-{os.getpid()}-{callers}-{int(batched)}-{time.monotonic_ns()}"
    namespace = ray.get_runtime_context().namespace
    broker = start_broker(name, KEYS, None, namespace)
    ray.get(broker.snapshot.remote())
    caller_class = _caller_class()
    actors = [caller_class.remote(name, namespace) for _ in range(callers)]
    ray.get([actor.__ray_ready__.remote() for actor in actors])
    load = os.getloadavg()[0]
    cpu_before = ray.get(broker.__ray_call__.remote(_cpu_seconds))
    started = time.perf_counter()
    results = ray.get([actor.run.remote(seconds=seconds, concurrency=concurrency, batched=batched)
                       for actor in actors])
    wall = time.perf_counter() - started
    broker_cpu = ray.get(broker.__ray_call__.remote(_cpu_seconds)) - cpu_before
    snapshot = ray.get(broker.snapshot.remote())
    for actor in actors:
        ray.kill(actor)
    ray.kill(broker)
    reserved = sum(r["reserved"] for r in results)
    settled = sum(r["settled"] for r in results)
    latencies = sorted(latency for r in results for latency in r["latencies"])
    stats = snapshot["models"]["gpt-3.5-turbo"]
    return {"callers": callers, "concurrency": concurrency, "batched": batched, "wall_s": wall,
            "reservations_per_s": reserved / wall, "settlements_per_s": settled / wall,
            # the broker process's own CPU (its event loop and Ray's threads): what one core would serve
            "broker_cpu_s": broker_cpu, "reservations_per_broker_cpu_s": reserved / broker_cpu if broker_cpu else None,
            "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
            "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
            # every settlement a caller sent reached the broker, none counted twice
            "exact": stats["requests"] == reserved and stats["ok"] == settled and stats["prompt_tokens"] == 950 * settled,
            "load_before": load, "load_after": os.getloadavg()[0]}


def by_in_flight(seconds: float) -> dict[int, float]:
    """(a) with each of IN_FLIGHT calls open: reservations+settlements a second."""
    return {count: pure_core(seconds, count)["per_s"] for count in IN_FLIGHT}


def run(work: Path | None = None, quick: bool = False, callers: tuple[int, ...] = (1, 4, 16)) -> dict:
    import ray

    seconds = 3.0 if quick else 8.0
    in_flight = by_in_flight(seconds / 2)
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        load = os.getloadavg()[0]
        core = pure_core(seconds)
        rows = []
        for count in callers:
            for batched in (False, True):
                row = through_ray(count, 64, seconds, batched=batched)
                row["vs_core"] = row["reservations_per_s"] / core["per_s"]
                rows.append(row)
                print(f"[broker] {count} callers × {row['concurrency']} rows, {'batched' if batched else 'one by one'}: "
                      f"{row['reservations_per_s']:.0f} reservations/s ({row['vs_core']:.3f} of the core; "
                      f"{row['reservations_per_broker_cpu_s'] or 0:.0f} per broker CPU s), "
                      f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, exact {row['exact']}, "
                      f"load {row['load_before']:.0f}-{row['load_after']:.0f}", flush=True)
        # the core again, after: the machine's load moves, and (a) is the ceiling both ways
        after = pure_core(seconds)
    finally:
        if own_ray:
            ray.shutdown()
    return {"load_before": load, "load_after": os.getloadavg()[0], "cores": os.cpu_count(),
            "pure_core": core, "pure_core_after": after, "through_ray": rows, "by_in_flight": in_flight}


def markdown(result: dict) -> str:
    core = result["pure_core"]
    lines = [f"Quota broker (load average {result['load_before']:.0f} → {result['load_after']:.0f} on "
             f"{result['cores']} cores). Pure ledger, no Ray: {core['per_s']:,.0f} reservations+settlements/s "
             f"({core['per_cpu_s']:,.0f} per CPU second; {result['pure_core_after']['per_s']:,.0f}/s after the Ray runs).",
             "", "Pure ledger by calls in flight: " + ", ".join(f"{count:,}: {per_s:,.0f}/s" for count, per_s
                                                            in result.get("by_in_flight", {}).items()) + ".",
             "", "| callers × rows | path | reservations/s | settlements/s | of the pure ledger | per broker CPU second | "
             "p50 | p99 | exact | load |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["through_ray"]:
        lines.append(f"| {row['callers']} × {row['concurrency']} | {'batched' if row['batched'] else 'one by one'} | "
                     f"{row['reservations_per_s']:,.0f} | {row['settlements_per_s']:,.0f} | {row['vs_core']:.3f} | "
                     f"{row['reservations_per_broker_cpu_s'] or 0:,.0f} | "
                     f"{row['p50_ms']:.1f} ms | {row['p99_ms']:.1f} ms | {row['exact']} | "
                     f"{row['load_before']:.0f}-{row['load_after']:.0f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--callers", nargs="+", type=int, default=[1, 4, 16])
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--ledger-only", action="store_true", help="(a) alone, by calls in flight")
    args = parser.parse_args()
    if args.ledger_only:
        for count, per_s in by_in_flight(3.0 if args.quick else 5.0).items():
            print(f"[broker] pure ledger, {count:,} calls in flight: {per_s:,.0f} reservations+settlements/s "
                  f"(load {os.getloadavg()[0]:.0f})")
        return 0
    result = run(quick=args.quick, callers=tuple(args.callers))
    core = result["pure_core"]
    print(f"[broker] pure core: {core['per_s']:.0f} reservations+settlements/s wall, {core['per_cpu_s']:.0f} per CPU "
          f"second (after: {result['pure_core_after']['per_s']:.0f}/s); load {result['load_before']:.0f}"
          f"-{result['load_after']:.0f} on {result['cores']} cores")
    print(markdown(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
