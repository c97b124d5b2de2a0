"""The send loop of one ``/v1/alerts`` subscriber: ``pump(subscription, send, close)``.

It owns when a subscriber is too slow and gets close code 1013 ("try again
later": reconnect with ``since``), and it notices that while a send is still
blocked: a client that stops reading makes the send wait on the transport's
flow control, and a loop that only awaits the send would never see its
subscription overflow.

The WebSocket is reached only through the ``send`` and ``close`` coroutine
functions handed in, so this module imports nothing from FastAPI, Starlette
or the app; it reads a ``service.events.Subscription``.

Cancelling a send that is still blocked is safe with every uvicorn WebSocket
implementation installed here (uvicorn 0.54, websockets 17; wsproto is not
installed), read in uvicorn/protocols/websockets/:

* ``websockets-sansio`` (what ``ws="auto"`` picks, so what the service runs):
  ``send`` awaits ``self.writable`` (cleared by ``pause_writing``) *before*
  it builds the frame, then builds and writes it without another await. A
  cancelled send wrote nothing: no partial frame, the event is simply not
  sent (the reconnect with ``since`` replays it).
* ``websockets`` (legacy ``websockets.legacy`` protocol): the frame is written
  to the transport first, then ``drain()`` waits; a cancel only stops that
  wait, the whole frame is already in the transport's buffer.
* ``wsproto``: like sansio, ``send`` awaits ``writable`` before writing.

What a cancel cannot do: with websockets-sansio and wsproto the ASGI close
waits on the same ``writable``, so the 1013 close frame is written when the
client has drained the transport below its low-water mark, not before. It is
then the next frame after what the transport already holds (the backlog of
queued events is not sent first), but a client that reads nothing past
uvicorn's ``ws_ping_interval + ws_ping_timeout`` still gets 1011 "keepalive
ping timeout" from uvicorn, which writes its close frame below ASGI. With
the legacy implementation the 1013 close frame goes into the buffer at once
and uvicorn's keepalive then sends no 1011.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from .events import Subscription, SubscriptionClosed

TRY_AGAIN_LATER = 1013
OVERFLOW_REASON = "subscriber too slow: its queue overflowed; reconnect with since"
# One send may wait this long on a client that does not read. Well below
# uvicorn's default keepalive (20 s ping interval + 20 s ping timeout), so the
# app, not the keepalive, decides first; far above a healthy client's stall
# (events are small; a live dashboard drains them in milliseconds).
SEND_TIMEOUT_S = 5.0
# How long the 1013 close may wait on a transport the client does not drain
# (with websockets-sansio the ASGI close waits on flow control too): without
# a bound a client that never reads would keep this handler forever. 10 s is
# uvicorn's and websockets' own closing-handshake timeout.
CLOSE_TIMEOUT_S = 10.0
# The bus marks a subscription closed from its publishing thread and offers
# nothing to await, so a blocked send checks ``subscription.closed`` this
# often: prompt next to any keepalive, and only while a send is blocked.
CLOSED_POLL_S = 0.05

Ended = Literal["unsubscribed", "overflowed", "send timeout"]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


def send_timeout_reason(send_timeout_s: float) -> str:
    return f"subscriber too slow: a send waited over {send_timeout_s:g} s; reconnect with since"


async def pump(subscription: Subscription, send: Send, close: Close, send_timeout_s: float | None = None,
               close_timeout_s: float = CLOSE_TIMEOUT_S) -> Ended:
    """Send ``subscription``'s events in order until it ends; return why it ended.

    ``"overflowed"`` (the bus dropped it, even while a send was blocked) and
    ``"send timeout"`` (one send blocked over ``send_timeout_s``, default
    ``SEND_TIMEOUT_S``) cancel the blocked send, drop the backlog and
    ``close(1013, reason)``; ``"unsubscribed"`` (the client left) returns
    without a close once the events queued before it are sent, or at once
    when a send is blocked. Errors of ``send`` and ``close`` (the client is
    gone) propagate.
    """
    send_timeout_s = SEND_TIMEOUT_S if send_timeout_s is None else send_timeout_s
    ended: Ended = "unsubscribed"
    while not subscription.overflowed:
        try:
            event = await subscription.get()
        except SubscriptionClosed:
            break
        if subscription.overflowed:
            break  # what is still queued is stale: the reconnect with since replays it
        if not await _send_within(subscription, send(event), send_timeout_s):
            if not subscription.closed:
                ended = "send timeout"
            break
    if subscription.overflowed:
        ended, reason = "overflowed", OVERFLOW_REASON
    elif ended == "send timeout":
        reason = send_timeout_reason(send_timeout_s)
    else:
        return ended
    try:
        await asyncio.wait_for(close(TRY_AGAIN_LATER, reason), close_timeout_s)
    except TimeoutError:
        pass  # the client drains nothing; returning ends the handler and uvicorn closes the transport
    return ended


async def _send_within(subscription: Subscription, sending: Awaitable[None], timeout_s: float) -> bool:
    """True once sent; False when ``timeout_s`` passed first, or ``subscription``
    closed while the send is blocked. A send still blocked then is cancelled
    (safe: see the module docstring)."""
    task = asyncio.ensure_future(sending)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while not task.done():
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.wait({task}, timeout=min(CLOSED_POLL_S, left))
            if not task.done() and subscription.closed:
                return False
        task.result()  # a failed send (client gone) raises here
        return True
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # it has let go of the transport before the close is sent
