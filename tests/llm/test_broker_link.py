"""A caller's link to the quota broker (BrokerLink): coalesced requests and settlements reach the
ledger in order and none is lost. The broker here is the real ledger behind a handle with Ray's
`.method.remote(...)` shape, run in this process: these are the link's own rules, not Ray's."""

import asyncio

import pytest

from soulray.llm.broker import CallShape, KeyLimits, QuotaLedger
from soulray.llm.client import BrokerLink

OK = {"status": "ok", "prompt_tokens": 700, "completion_tokens": 300, "cost_usd": 0.001}
SHAPE = CallShape(prompt_tokens=500, completion_tokens=400, max_tokens=4096, namespace="v1")


class _Method:
    def __init__(self, call):
        self.call = call

    def remote(self, *args, **kwargs):
        return self.call(*args, **kwargs)


class LedgerHandle:
    """The ledger as an actor handle. `hold` stops settlements at the door until set; `fail` makes the
    next settle_many raise, as a call to a broker that is restarting would."""

    def __init__(self) -> None:
        self.ledger = QuotaLedger([KeyLimits(name="a", rpm=10**6, tpm=10**9, max_concurrent=10**6)], now=0.0)
        self.hold: asyncio.Event | None = None
        self.fail = False
        self.calls = 0
        self.reserve_many = _Method(self._reserve_many)
        self.settle_many = _Method(self._settle_many)

    async def _reserve_many(self, requests):
        self.calls += 1
        return self.ledger.reserve_many(requests, now=0.0)

    async def _settle_many(self, settlements):
        if self.hold is not None:
            await self.hold.wait()
        if self.fail:
            self.fail = False
            raise ConnectionError("broker unreachable")
        self.ledger.settle_many(settlements, now=0.0)


def settled(handle: LedgerHandle) -> float:
    return handle.ledger.snapshot()["keys"]["a"]["ok"]


def test_requests_asked_together_travel_in_one_call_and_are_granted_in_order():
    async def scenario():
        handle = LedgerHandle()
        link = BrokerLink(handle)
        grants = await asyncio.gather(*(link.reserve("m", 900, 0.001, SHAPE) for _ in range(50)))
        return handle, grants

    handle, grants = asyncio.run(scenario())
    assert handle.calls == 1 and [grant.id for grant in grants] == list(range(1, 51))


def test_flush_returns_only_once_a_send_already_under_way_has_reached_the_broker():
    """A settlement taken by the delayed send and still on its way when the batch ends: flush (at
    finish_batch) waits for it. Returning at once let a batch end, and its actor exit, with settlements
    the broker had not heard of."""
    async def scenario():
        handle = LedgerHandle()
        link = BrokerLink(handle)
        grants = [await link.reserve("m", 900, 0.001, SHAPE) for _ in range(3)]
        handle.hold = asyncio.Event()
        for grant in grants:
            link.settle(grant.id, OK)
        await asyncio.sleep(BrokerLink.SETTLE_WINDOW_S * 3)  # the delayed send has taken them, and waits
        flushing = asyncio.ensure_future(link.flush())
        await asyncio.sleep(BrokerLink.SETTLE_WINDOW_S)
        waited = not flushing.done()
        handle.hold.set()
        await flushing
        return waited, settled(handle)

    waited, count = asyncio.run(scenario())
    assert waited and count == 3


def test_a_failed_send_keeps_its_settlements_for_the_next():
    async def scenario():
        handle = LedgerHandle()
        link = BrokerLink(handle)
        grants = [await link.reserve("m", 900, 0.001, SHAPE) for _ in range(4)]
        for grant in grants:
            link.settle(grant.id, OK)
        handle.fail = True
        with pytest.raises(ConnectionError):
            await link.flush()
        assert settled(handle) == 0
        await link.flush()
        return settled(handle), handle.ledger.snapshot()["keys"]["a"]["in_flight"]

    assert asyncio.run(scenario()) == (4, 0)
