"""The alerts send loop (``service.alert_feed.pump``): fake sends on a real bus, then a real server.

The unit tests drive ``pump`` with fake ``send``/``close`` coroutines on a
real ``EventBus``; the live test puts a client that stops reading on a real
uvicorn server whose keepalive pings are on and short.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service import alert_feed
from service.alert_feed import OVERFLOW_REASON, TRY_AGAIN_LATER, pump
from service.app import create_app
from service.config import load_settings
from service.events import EventBus

from .hog_engine import HogEngine
from .live import LiveServer
from .test_alerts_live import RawSubscriber

TIMEOUT_S = 10.0  # a bound for what should take milliseconds; only a failing test waits for it


class Transport:
    """Fake ``send``/``close``: records what was sent and closed; ``send`` blocks
    from the ``block_from``-th event on (0-based) until cancelled."""

    def __init__(self, block_from: int | None = None, close_blocks: bool = False) -> None:
        self.sent: list[dict] = []
        self.closes: list[tuple[int, str]] = []
        self.cancelled_sends = 0
        self.block_from = block_from
        self.close_blocks = close_blocks
        self.blocked = asyncio.Event()

    async def send(self, event: dict) -> None:
        if self.block_from is not None and len(self.sent) >= self.block_from:
            self.blocked.set()
            try:
                await asyncio.Event().wait()  # a client that reads nothing: the transport never drains
            except asyncio.CancelledError:
                self.cancelled_sends += 1
                raise
        await asyncio.sleep(0)  # a real send yields to the loop
        self.sent.append(event)

    async def close(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        if self.close_blocks:
            await asyncio.Event().wait()


def _fault(bus: EventBus, stream: str, index: int) -> dict:
    return bus.publish(stream, "fault", reason=f"fault {index}")


def test_a_send_blocked_past_the_timeout_closes_with_1013_within_it():
    async def main():
        bus = EventBus()
        subscription = bus.subscribe()
        transport = Transport(block_from=1)
        first = _fault(bus, "a", 0)
        _fault(bus, "a", 1)
        started = time.monotonic()
        ended = await asyncio.wait_for(pump(subscription, transport.send, transport.close, send_timeout_s=0.3),
                                       TIMEOUT_S)
        took = time.monotonic() - started
        assert ended == "send timeout"
        assert 0.3 <= took < 0.3 + 0.5, took
        assert transport.sent == [first] and transport.cancelled_sends == 1
        [(code, reason)] = transport.closes
        assert code == TRY_AGAIN_LATER == 1013
        assert "too slow" in reason and "0.3 s" in reason and "reconnect with since" in reason
        assert len(reason.encode()) <= 123  # a close frame's reason has room for 123 bytes

    asyncio.run(main())


def test_an_overflow_while_a_send_is_blocked_closes_with_1013_at_once():
    async def main():
        bus = EventBus(queue_size=4)
        subscription = bus.subscribe()
        transport = Transport(block_from=0)
        task = asyncio.create_task(pump(subscription, transport.send, transport.close, send_timeout_s=60))
        _fault(bus, "a", 0)
        await asyncio.wait_for(transport.blocked.wait(), TIMEOUT_S)
        # the publisher is another thread, as the pipeline's is
        publisher = threading.Thread(target=lambda: [_fault(bus, "a", i) for i in range(1, 10)])
        publisher.start()
        publisher.join()
        assert subscription.overflowed
        started = time.monotonic()
        ended = await asyncio.wait_for(task, TIMEOUT_S)
        assert time.monotonic() - started < 1.0, "noticed while the send is blocked, long before the 60 s timeout"
        assert ended == "overflowed"
        assert transport.closes == [(1013, OVERFLOW_REASON)]
        assert transport.sent == [] and transport.cancelled_sends == 1
        # the 4 queued events were not sent before the close: the reconnect with since replays them

    asyncio.run(main())


def test_a_normal_run_delivers_everything_in_order_then_stops_when_unsubscribed():
    async def main():
        bus = EventBus(queue_size=1000)
        subscription = bus.subscribe()
        transport = Transport()
        published = [_fault(bus, stream, i) for i in range(5) for stream in ("a", "b")]
        task = asyncio.create_task(pump(subscription, transport.send, transport.close))
        for i in range(5, 200):
            published.append(_fault(bus, "ab"[i % 2], i))
            if i % 7 == 0:
                await asyncio.sleep(0)  # the pump runs between publishes, and sometimes not
        bus.unsubscribe(subscription)  # what was queued before it is still delivered
        assert await asyncio.wait_for(task, TIMEOUT_S) == "unsubscribed"
        assert transport.sent == published
        assert transport.closes == [] and transport.cancelled_sends == 0

    asyncio.run(main())


def test_a_client_that_leaves_during_a_blocked_send_ends_the_pump_without_a_close():
    async def main():
        bus = EventBus()
        subscription = bus.subscribe()
        transport = Transport(block_from=0)
        task = asyncio.create_task(pump(subscription, transport.send, transport.close, send_timeout_s=60))
        _fault(bus, "a", 0)
        await asyncio.wait_for(transport.blocked.wait(), TIMEOUT_S)
        bus.unsubscribe(subscription)  # what the handler's watch_client does on a disconnect
        assert await asyncio.wait_for(task, 1.0) == "unsubscribed"
        assert transport.closes == [] and transport.cancelled_sends == 1

    asyncio.run(main())


def test_a_close_that_never_completes_is_given_up_and_a_failing_send_propagates():
    async def main():
        bus = EventBus()
        subscription = bus.subscribe()
        transport = Transport(block_from=0, close_blocks=True)
        _fault(bus, "a", 0)
        ended = await asyncio.wait_for(pump(subscription, transport.send, transport.close, send_timeout_s=0.1,
                                            close_timeout_s=0.2), TIMEOUT_S)
        assert ended == "send timeout" and [code for code, _ in transport.closes] == [1013]

        async def gone(event: dict) -> None:
            raise RuntimeError("the client is gone")

        subscription = bus.subscribe()
        _fault(bus, "a", 1)
        with pytest.raises(RuntimeError, match="gone"):
            await asyncio.wait_for(pump(subscription, gone, transport.close), TIMEOUT_S)

    asyncio.run(main())


def test_a_stalled_subscriber_gets_1013_not_the_keepalive_1011(monkeypatch):
    # A client that stops reading while big events (persons with masks) arrive:
    # the server's send blocks on flow control. The events are too few to
    # overflow the queue, so only the send timeout can end it; pings are on and
    # short, and the raw client never answers them, so uvicorn's keepalive would
    # close with 1011 "keepalive ping timeout" at ping interval + timeout (5 s).
    # The client reads again after 2.5 s: by then the handler has given up
    # (0.5 s timeout) and its 1013 close is the next frame the server writes.
    send_timeout_s, stall_s = 0.5, 2.5
    monkeypatch.setattr(alert_feed, "SEND_TIMEOUT_S", send_timeout_s)
    settings = load_settings(None, events={"queue_size": 10_000, "heartbeat_ms": 60_000},
                             safety={"watchdog_ms": 60_000})
    with LiveServer(create_app(settings, engine=HogEngine()), ws_ping_interval=2.5, ws_ping_timeout=2.5) as live:
        assert live.client.post("/v1/streams", json={"id": "cam"}).status_code == 201
        bus = live.app.state.events
        slow = RawSubscriber(live.port, "/v1/alerts?streams=cam&masks=1")
        try:
            live.wait_for(lambda: bus.subscriber_count == 1, what="the subscription")
            started = time.monotonic()
            mask = {"size": [576, 768], "counts": "0" * 50_000}  # an RLE string as long as a busy frame's
            person = {"track_id": 1, "score": 0.9, "distance": 0.0, "units": "pixels", "zone": "hazard",
                      "box": [640.0, 370.0, 700.0, 560.0], "mask": mask}
            for _ in range(300):  # 15 MB: far more than the socket buffers hold
                bus.publish("cam", "persons", persons=[person], zones={"hazard": [1]})
            assert bus.overflowed_count == 0 and bus.subscriber_count == 1
            time.sleep(max(0.0, stall_s - (time.monotonic() - started)))
            code, reason, received = slow.read_until_close(timeout=20)
        finally:
            slow.close()
    assert (code, reason) == (1013, alert_feed.send_timeout_reason(send_timeout_s)), (code, reason)
    assert 0 < received < 300
