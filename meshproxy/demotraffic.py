# -*- test-case-name: tests.test_demo -*-
"""
Both ends of the demo's traffic: the small HTTP applications behind the
server-side proxies, and the steady load sent through the client-side
proxy.

They run in the demo's own process, on its reactor, because they are not
what the demo shows: the proxies between them are, and those run as real
C{twistd} processes.  So these are plain C{twisted.web} and C{Agent}, the
simplest code that does the job at a hundred or two requests a second,
not the lean data path the proxy itself needs.
"""

from __future__ import annotations

from random import Random

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

__all__ = ["Instance", "InstanceResource", "Load", "within"]


@frozen
class Instance:
    """
    One application instance of the demo's service: how it misbehaves.

    @ivar name: its name, which its identity and its answers carry.
    @ivar delay: seconds added to each answer.
    @ivar failures: the share of requests it answers with a 500.
    """

    name: str
    delay: float = 0.0
    failures: float = 0.0

    def describe(self) -> str:
        """
        What is special about it, in a few words.
        """
        if self.delay:
            return f"slow, +{self.delay * 1000:.0f}ms"
        if self.failures:
            return f"{self.failures:.0%} 500s"
        return "healthy"


class InstanceResource(Resource):
    """
    The application of one L{Instance}: answers every GET with a line that
    names the instance.
    """

    isLeaf = True

    def __init__(self, instance: Instance, clock: IReactorTime, random: Random) -> None:
        super().__init__()
        self._instance = instance
        self._clock = clock
        self._random = random
        self._body = f"hello from {instance.name}\n".encode()
        self._failed = f"{instance.name} failed\n".encode()

    def render_GET(self, request: Request) -> bytes | int:
        request.setHeader(b"content-type", b"text/plain")
        instance = self._instance
        if self._random.random() < instance.failures:
            request.setResponseCode(500)
            return self._failed
        if not instance.delay:
            return self._body
        call = self._clock.callLater(instance.delay, self._answer, request)
        request.notifyFinish().addErrback(lambda _: call.active() and call.cancel())
        return NOT_DONE_YET

    def _answer(self, request: Request) -> None:
        request.write(self._body)
        request.finish()


def within(clock: IReactorTime, event: Deferred, seconds: float) -> Deferred[bool]:
    """
    Wait for C{event} to fire, but no more than C{seconds}, and without
    cancelling it (C{addTimeout} would): what it stands for goes on.

    @return: fires with C{True} when C{event} fired in time, C{False}
        otherwise.
    """
    result: Deferred[bool] = Deferred()
    timer = clock.callLater(seconds, result.callback, False)

    def fired(outcome):
        if timer.active():
            timer.cancel()
            result.callback(True)
        return outcome

    event.addBoth(fired)
    return result


class Load:
    """
    An open-loop load: C{rate} GET requests a second to one URL, whether or
    not earlier ones have answered, as independent users send them.  A
    closed loop (send the next when the last answered) would slow down with
    the slow endpoint and hide what the balancer does.

    The rate climbs from zero to C{rate} over the first C{ramp} seconds.
    Started at full rate, the load would find no connection open anywhere
    and make every proxy handshake dozens at once; the latency of that
    burst would stay in every endpoint's peak-EWMA estimate for tens of
    seconds and hide the slow instance.  Climbing, the connection pools
    grow as fast as they need to.

    At most C{limit} requests are in flight: past that (a proxy that stopped
    answering) requests are not sent but counted in L{shed}, so a stall
    cannot grow the demo's memory without bound.

    @ivar sent: requests sent.
    @ivar succeeded: requests answered with a complete non-5xx response.
    @ivar failed: requests answered with a 5xx, or broken off.
    @ivar shed: requests not sent because C{limit} were in flight.
    """

    def __init__(self, reactor, url: str, rate: float, ramp: float = 3.0, limit: int = 256) -> None:
        pool = self._pool = HTTPConnectionPool(reactor)
        pool.maxPersistentPerHost = limit
        self._agent = Agent(reactor, pool=pool)
        self._url = url.encode()
        self._limit = limit
        self._inFlight: set[Deferred] = set()
        self._loop = LoopingCall(self._send)
        self._loop.clock = self._clock = reactor
        self._rate = rate
        self._ramp = ramp
        self._started = 0.0
        self.sent = self.succeeded = self.failed = self.shed = 0

    def start(self) -> None:
        self._started = self._clock.seconds()
        self._loop.start(1.0 / self._rate, now=False)

    def due(self, elapsed: float) -> int:
        """
        How many requests are due C{elapsed} seconds after the start: the
        integral of the rate, which climbs linearly for C{ramp} seconds and
        then stays.
        """
        rate, ramp = self._rate, self._ramp
        if elapsed < ramp:
            return int(rate * elapsed * elapsed / (2 * ramp))
        return int(rate * (elapsed - ramp / 2))

    def _send(self) -> None:
        """
        Send the requests due, however many ticks a busy reactor missed.
        """
        for _ in range(self.due(self._clock.seconds() - self._started) - self.sent - self.shed):
            if len(self._inFlight) >= self._limit:
                self.shed += 1
                continue
            self.sent += 1
            exchange = self._agent.request(b"GET", self._url).addCallback(self._read)
            exchange.addCallbacks(self._answered, self._broken)
            self._inFlight.add(exchange)
            exchange.addBoth(lambda _, exchange=exchange: self._inFlight.discard(exchange))

    @staticmethod
    def _read(response) -> Deferred[int]:
        return readBody(response).addCallback(lambda _: response.code)

    def _answered(self, status: int) -> None:
        if status >= 500:
            self.failed += 1
        else:
            self.succeeded += 1

    def _broken(self, reason) -> None:
        self.failed += 1

    async def stop(self, grace: float = 5.0) -> None:
        """
        Send no more, give the requests in flight C{grace} seconds to end,
        and close the connections.
        """
        if self._loop.running:
            self._loop.stop()
        # Wait without cancelling: Agent reports a cancelled body read
        # twice, with a traceback on standard error.
        await within(self._clock, DeferredList(list(self._inFlight)), grace)
        await self._pool.closeCachedConnections()
