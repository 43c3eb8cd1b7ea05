"""
Load balancing under realistic trouble, side by side: meshproxy with each of
its balancers and HAProxy C{mode http} with C{roundrobin}, C{leastconn} and
C{random(2)}, in front of the same ten backends, in one run.

    python benchmarks/balancing.py [--duration 15] [--rate 1000]

The backends (one process of ten Twisted HTTP/1.1 servers on loopback)
answer after a simulated service time, a lognormal with a median of 5 ms
that grows with the backend's own concurrency (times C{1 + in_flight / 8}),
as a real service's does when requests compete for it.  Two misbehave, as
in production: backend 0 is ten times slower, and backend 1 stalls for
250 ms every 2 s (a garbage collection pause, say), answering nothing until
the pause ends.  Service times are timers, not CPU, so the backends cost
little and every subject meets the same backends.

The load is open-loop: Poisson arrivals at a fixed rate, each request sent
at its scheduled time whatever is still in flight (on a pool of keep-alive
connections that grows as needed), and its latency counted from that
scheduled time to the last response byte.  A closed loop (wrk's) would
wait for slow responses before sending more, and so hide exactly the
queueing a bad balancing decision causes.  Every subject sees the same
arrival times (C{--seed}).  A request that takes longer than 5 s is an
error, as is any status but 200; the percentiles count every request, an
error at the time it took to fail.  The first 2 s of each row warm the
proxy up and are not counted.

Each body names the backend that answered, so the shares are counted at
the client.  The load generator and the backends share one core, and each
proxy has the other to itself (C{taskset}), so its CPU per request is its
own.  The last two columns say how busy the load core was and how much CPU
other processes (and the kernel's loopback work) took meanwhile, in per
cent of one core: a row where others took most of a core says more about
the machine than about the balancer.  A peak-EWMA balancer times each
request inside the proxy, so a proxy or backend process starved of CPU
looks to it like every endpoint slowing down at once, which hides the two
that really are slow for the ten seconds the estimates take to decay.

What it should show: C{p2c-peak-ewma} learns both bad backends within a
few requests and routes around them (the lowest p99, under 2 % of the
traffic to each bad backend, no errors), where round robin and random keep
sending them their share, and least-request and C{leastconn} notice the
stall only once requests pile up on it.

Needs: apt-get install -y haproxy (and meshproxy installed in this Python).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections import Counter, deque
from functools import partial
from pathlib import Path
from random import Random

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from meshproxy.balance import BALANCERS

from _harness import (
    LOAD_CPU,
    PROXY_CPU,
    busySeconds,
    cpuSeconds,
    freePort,
    haproxy,
    meshproxy,
    requireTools,
    running,
    stop,
    waitForPort,
)

#: How many backends, and which two misbehave.
BACKENDS, SLOW, STALLING = 10, 0, 1
#: The median service time of an idle normal backend, in seconds, and the
#: spread of its logarithm.
MEDIAN, SIGMA = 0.005, 0.5
#: The concurrency at which a backend's service time has doubled.
CONTENTION = 8
#: How much slower the slow backend is.
SLOWDOWN = 10.0
#: The stalling backend answers nothing for C{STALL} seconds at the start
#: of every C{STALL_PERIOD}.
STALL, STALL_PERIOD = 0.250, 2.0

#: A request taking longer than this, in seconds, is an error.
TIMEOUT = 5.0
#: The most connections the load generator opens to one proxy: enough for
#: two seconds of requests all in flight at once, and a bound on what a
#: subject that stops answering costs.
MAX_CONNECTIONS = 2000
#: The seconds of each row not counted.
WARMUP = 2.0

#: The one request every client sends.
REQUEST = b"GET / HTTP/1.1\r\nHost: backend\r\n\r\n"


def _factory(protocol, *args) -> Factory:
    """
    A factory of C{protocol(*args)}: L{Factory.forProtocol} passes its
    arguments to the factory, not to the protocols.
    """
    factory = Factory()
    factory.protocol = partial(protocol, *args)
    return factory


class Backend:
    """
    The service-time model of one backend: when each request it accepts is
    answered.

    @ivar index: its number, named in each response body.
    @ivar inFlight: the requests accepted and not yet answered.
    """

    def __init__(self, index: int, clock, random: Random, slowdown: float = 1.0, stalls: bool = False) -> None:
        self.index = index
        self.inFlight = 0
        self._clock = clock
        self._random = random
        self._slowdown = slowdown
        self._stalls = stalls
        self._epoch = clock.seconds()
        body = f"backend {index}\n".encode()
        self.response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
            len(body),
            body,
        )

    def serve(self, respond):
        """
        Accept a request and call C{respond()} when it is served.

        @return: the L{IDelayedCall}, to cancel if the client goes away.
        """
        now = self._clock.seconds()
        delay = (
            self._random.lognormvariate(math.log(MEDIAN), SIGMA) * self._slowdown * (1 + self.inFlight / CONTENTION)
        )
        if self._stalls:
            # An answer due inside a pause waits for the pause to end.
            phase = (now + delay - self._epoch) % STALL_PERIOD
            if phase < STALL:
                delay += STALL - phase
        self.inFlight += 1
        return self._clock.callLater(delay, self._answered, respond)

    def _answered(self, respond) -> None:
        self.inFlight -= 1
        respond()


class BackendProtocol(Protocol):
    """
    A lean HTTP/1.1 keep-alive server for bodiless requests: answers each
    request once its L{Backend} says so, in order.  Just enough HTTP for
    proxies, and cheap, so that the backends do not compete with the load
    generator for their shared core.
    """

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._buffer = b""
        self._serving = None

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._next()

    def _next(self) -> None:
        if self._serving is not None:
            return
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > 65536:
                self.transport.abortConnection()
            return
        self._buffer = self._buffer[end + 4 :]
        self._serving = self._backend.serve(self._respond)

    def _respond(self) -> None:
        self._serving = None
        self.transport.write(self._backend.response)
        self._next()

    def connectionLost(self, reason=None) -> None:
        if self._serving is not None and self._serving.active():
            self._serving.cancel()
            self._backend.inFlight -= 1


def serveBackends(reactor, ports: list[int]) -> Deferred:
    """
    Run the backends on C{ports} of loopback until terminated: the first
    is the slow one, the second stalls, the rest are normal.
    """
    random = Random()
    for index, port in enumerate(ports):
        backend = Backend(
            index, reactor, random, slowdown=SLOWDOWN if index == SLOW else 1.0, stalls=index == STALLING
        )
        reactor.listenTCP(port, _factory(BackendProtocol, backend), backlog=1024, interface="127.0.0.1")
    return Deferred()


class _Request:
    """
    One request of the open loop.

    @ivar scheduled: when it was due to be sent; its latency counts from here.
    @ivar timeout: its L{IDelayedCall} that makes it an error.
    @ivar connection: the L{LoadConnection} carrying it, once one does.
    @ivar done: whether its outcome is recorded.
    """

    def __init__(self, scheduled: float) -> None:
        self.scheduled = scheduled
        self.timeout = None
        self.connection = None
        self.done = False


class LoadConnection(Protocol):
    """
    One keep-alive connection of the load generator: sends a request,
    reads the response (status line, C{Content-Length} and C{Connection}
    headers, body) and reports it to its L{OpenLoop}.
    """

    def __init__(self, loop: OpenLoop) -> None:
        self._loop = loop
        self._buffer = b""
        self.request: _Request | None = None

    def send(self, request: _Request) -> None:
        self.request = request
        request.connection = self
        self.transport.write(REQUEST)

    def dataReceived(self, data: bytes) -> None:
        if self.request is None:
            # Nothing was asked: a proxy talking out of turn is broken.
            self.transport.abortConnection()
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        lines = self._buffer[:end].split(b"\r\n")
        length, close = None, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = b"close" in value.lower()
        if length is None:
            # Backends and proxies alike send a length; anything else is
            # more HTTP than this client needs to speak.
            self._loop.failed(self.request, "no content-length")
            return
        if len(self._buffer) < end + 4 + length:
            return
        body, rest = self._buffer[end + 4 : end + 4 + length], self._buffer[end + 4 + length :]
        request, self.request, self._buffer = self.request, None, b""
        if rest or close:
            self.transport.loseConnection()
        self._loop.answered(request, self, int(lines[0].split(b" ", 2)[1]), body, reuse=not (rest or close))

    def connectionLost(self, reason=None) -> None:
        self._loop.lost(self)


class OpenLoop:
    """
    Open-loop Poisson load on one port: requests sent at their scheduled
    times, whatever is in flight, on a pool of keep-alive connections that
    grows as needed (up to L{MAX_CONNECTIONS}).

    @ivar outcomes: the counted requests' outcomes, each
        C{(latency, backend, error)}: the seconds from scheduled to done,
        the backend index that answered or L{None}, and L{None} or what
        went wrong.
    """

    def __init__(self, reactor, port: int, rate: float, random: Random) -> None:
        self._reactor = reactor
        self._endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self._rate = rate
        self._random = random
        self._idle: list[LoadConnection] = []
        self._waiting: deque[_Request] = deque()
        self._connections = 0
        self._connecting = 0
        self._outstanding = 0
        self._open: set[LoadConnection] = set()
        self.outcomes: list[tuple[float, int | None, str | None]] = []

    def run(self, warmup: float, duration: float, counting) -> Deferred[list]:
        """
        Send for C{warmup + duration} seconds, counting the requests due
        after the warm-up, and wait for every request to end.

        @param counting: called when the counted part begins.
        @return: a L{Deferred} that fires with L{outcomes}.
        """
        start = self._reactor.seconds()
        self._counted = start + warmup
        self._end = self._counted + duration
        self._next = start
        self._counting = counting
        self._scheduling = True
        self._finished: Deferred[list] = Deferred()
        self._tick()
        return self._finished

    def _tick(self) -> None:
        now = self._reactor.seconds()
        if self._counting is not None and now >= self._counted:
            self._counting, counting = None, self._counting
            counting()
        # A late timer sends every request already due, each with its own
        # scheduled time: the lateness counts in their latency.
        while self._next <= now and self._next < self._end:
            self._send(_Request(self._next))
            self._next += self._random.expovariate(self._rate)
        if self._next < self._end:
            wake = self._next if self._counting is None else min(self._next, self._counted)
            self._reactor.callLater(max(wake - now, 0), self._tick)
        else:
            self._scheduling = False
            self._maybeFinished()

    def _send(self, request: _Request) -> None:
        self._outstanding += 1
        request.timeout = self._reactor.callLater(
            request.scheduled + TIMEOUT - self._reactor.seconds(), self.failed, request, "timeout"
        )
        self._waiting.append(request)
        self._dispatch()

    def _dispatch(self) -> None:
        """
        Put waiting requests on idle connections, and open connections
        for the ones left over.
        """
        while self._waiting and self._idle:
            self._idle.pop().send(self._waiting.popleft())
        while len(self._waiting) > self._connecting and self._connections < MAX_CONNECTIONS:
            self._connections += 1
            self._connecting += 1
            self._endpoint.connect(_factory(LoadConnection, self)).addCallbacks(
                self._connected, self._connectFailed
            )

    def _connected(self, connection: LoadConnection) -> None:
        self._connecting -= 1
        self._open.add(connection)
        if self._finished.called:
            # Opened for a request that another connection took, and
            # every request has ended since.
            connection.transport.loseConnection()
        else:
            self._ready(connection)

    def _connectFailed(self, reason) -> None:
        self._connecting -= 1
        self._connections -= 1
        if self._waiting:
            self.failed(self._waiting[0], "connect: " + reason.getErrorMessage())

    def _ready(self, connection: LoadConnection) -> None:
        if self._waiting:
            connection.send(self._waiting.popleft())
        else:
            self._idle.append(connection)

    def answered(self, request: _Request, connection: LoadConnection, status: int, body: bytes, reuse: bool) -> None:
        backend = int(body.split()[-1]) if status == 200 else None
        self._record(request, backend, None if status == 200 else f"status {status}")
        if reuse:
            self._ready(connection)

    def failed(self, request: _Request, error: str) -> None:
        if request.connection is None:
            self._waiting.remove(request)
        elif request.connection.request is request:
            # The connection is out of step with its requests now.
            request.connection.transport.abortConnection()
        self._record(request, None, error)

    def lost(self, connection: LoadConnection) -> None:
        self._connections -= 1
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
        if connection.request is not None and not connection.request.done:
            self._record(connection.request, None, "connection lost")
        self._dispatch()
        self._maybeFinished()

    def _record(self, request: _Request, backend: int | None, error: str | None) -> None:
        if request.done:
            return
        request.done = True
        if request.timeout.active():
            request.timeout.cancel()
        self._outstanding -= 1
        if request.scheduled >= self._counted:
            self.outcomes.append((self._reactor.seconds() - request.scheduled, backend, error))
        self._maybeFinished()

    def _maybeFinished(self) -> None:
        if self._scheduling or self._outstanding or self._finished.called:
            return
        for connection in list(self._open):
            connection.transport.loseConnection()
        self._finished.callback(self.outcomes)


def percentile(ordered: list[float], q: float) -> float:
    """
    The nearest-rank C{q} quantile of the sorted C{ordered}.
    """
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def measure(
    reactor, subject: str, port: int, proxy: subprocess.Popen, backends: subprocess.Popen, args
) -> dict:
    """
    One row: the open loop through C{proxy} on C{port}, summarized.

    Besides the proxy's CPU time per request, the row says how busy the
    load core was (this process and the C{backends}), and how much CPU
    other processes took meanwhile, in per cent of one core: with either
    high, the generator or the proxy was starved and the row says more
    about the machine than about the balancer.
    """

    def cpu() -> tuple[float, float, float, float]:
        return (
            reactor.seconds(),
            cpuSeconds(proxy.pid),
            cpuSeconds(os.getpid()) + cpuSeconds(backends.pid),
            busySeconds(),
        )

    before = []
    loop = OpenLoop(reactor, port, args.rate, Random(args.seed))
    outcomes = await loop.run(WARMUP, args.duration, lambda: before.extend(cpu()))
    elapsed, proxyCPU, loadCPU, busy = (after - start for after, start in zip(cpu(), before))
    latencies = sorted(latency for latency, _, _ in outcomes)
    shares = Counter(backend for _, backend, _ in outcomes if backend is not None)
    errors = Counter(error for _, _, error in outcomes if error is not None)
    total = len(outcomes) or 1
    normal = [shares[i] / total * 100 for i in range(BACKENDS) if i not in (SLOW, STALLING)]
    return {
        "subject": subject,
        "requests": len(outcomes),
        "errors": sum(errors.values()),
        "kinds": ", ".join(f"{kind} x{n}" for kind, n in errors.most_common()),
        "p50": percentile(latencies, 0.5) * 1e3,
        "p99": percentile(latencies, 0.99) * 1e3,
        "p999": percentile(latencies, 0.999) * 1e3,
        "slow": shares[SLOW] / total * 100,
        "stalling": shares[STALLING] / total * 100,
        "normal": (max(normal), min(normal)),
        "cpu": proxyCPU / total * 1e6,
        "load": loadCPU / elapsed * 100,
        "others": (busy - proxyCPU - loadCPU) / elapsed * 100,
    }


def table(rows: list[dict]) -> str:
    """
    The rows as a table: the shares are of all counted requests, the last
    of them the highest and the lowest of the eight normal backends.
    """
    lines = [
        f"{'subject':<26} {'requests':>8} {'errors':>6} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} "
        f"{'slow %':>6} {'stall %':>7} {'normal % max/min':>16} "
        f"{'CPU us/req':>10} {'load CPU %':>10} {'others CPU %':>12}"
    ]
    for row in rows:
        lines.append(
            f"{row['subject']:<26} {row['requests']:>8} {row['errors']:>6} {row['p50']:>7.1f} {row['p99']:>7.1f} "
            f"{row['p999']:>8.1f} {row['slow']:>6.1f} {row['stalling']:>7.1f} "
            f"{'%.1f / %.1f' % row['normal']:>16} "
            f"{row['cpu']:>10.0f} {row['load']:>10.0f} {row['others']:>12.0f}"
            + (f"  ({row['kinds']})" if row["kinds"] else "")
        )
    return "\n".join(lines)


def verdict(rows: list[dict], subject: str = "meshproxy p2c-peak-ewma") -> str:
    """
    Whether the expected outcome held for C{subject}, and if not, how not.
    """
    mine = next((row for row in rows if row["subject"] == subject), None)
    if mine is None:
        return f"{subject} did not run."
    misses = [
        f"{row['subject']} has a lower p99 ({row['p99']:.1f} ms)"
        for row in rows
        if row is not mine and row["p99"] <= mine["p99"]
    ]
    for bad in ("slow", "stalling"):
        if mine[bad] >= 2.0:
            misses.append(f"{mine[bad]:.1f} % of requests went to the {bad} backend")
    if mine["errors"]:
        misses.append(f"{mine['errors']} errors ({mine['kinds']})")
    if misses:
        return f"Expected outcome NOT met for {subject}: " + "; ".join(misses) + "."
    return (
        f"Expected outcome met: {subject} has the lowest p99 of all rows, sends under 2 % of requests to each "
        "bad backend, and has no errors."
    )


def subjects() -> list[tuple[str, object]]:
    """
    Every row's name and how to start its proxy, C{start(directory, port,
    backends)}.
    """
    return [
        (f"meshproxy {name}", partial(meshproxy, opaque=False, balancer=name)) for name in BALANCERS
    ] + [
        (f"haproxy {name}", partial(haproxy, mode="http", balance=name))
        for name in ("roundrobin", "leastconn", "random(2)")
    ]


async def compare(reactor, args) -> None:
    chosen = [(name, start) for name, start in subjects() if not args.only or any(s in name for s in args.only)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp, running() as processes:
        directory = Path(tmp)
        ports = [freePort() for _ in range(BACKENDS)]
        processes.append(
            subprocess.Popen(
                ["taskset", "-c", LOAD_CPU, sys.executable, __file__, "--backends", ",".join(map(str, ports))]
            )
        )
        for port in ports:
            waitForPort(port, processes[0])
        for name, start in chosen:
            port = freePort()
            proxy = start(directory, port, ports)
            try:
                waitForPort(port, proxy)
                rows.append(await measure(reactor, name, port, proxy, processes[0], args))
            finally:
                # One proxy at a time on its core.
                stop(proxy)
            print(table(rows[-1:]).splitlines()[1], flush=True)
    print(
        f"\n{args.rate:.0f} requests/s open loop (Poisson), {args.duration:g} s per row after {WARMUP:g} s of "
        f"warm-up; {BACKENDS} backends ({MEDIAN * 1e3:g} ms median), backend {SLOW} {SLOWDOWN:g}x slower, "
        f"backend {STALLING} stalls {STALL * 1e3:.0f} ms every {STALL_PERIOD:g} s; "
        f"load and backends on CPU {LOAD_CPU}, proxy on CPU {PROXY_CPU}"
    )
    print(table(rows))
    print(verdict(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=15, help="seconds of counted load per row")
    parser.add_argument("--rate", type=float, default=1000, help="requests per second")
    parser.add_argument("--seed", type=int, default=1, help="seed of the arrival times, the same for every row")
    parser.add_argument(
        "--only", nargs="*", metavar="SUBJECT", help="run only the rows whose name contains one of these"
    )
    parser.add_argument("--backends", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backends:
        task.react(serveBackends, [[int(port) for port in args.backends.split(",")]])
        return
    requireTools("haproxy", "taskset")
    # The load generator shares its core with the backends, as wrk does
    # with nginx in the other benchmarks.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    task.react(lambda reactor: Deferred.fromCoroutine(compare(reactor, args)))


if __name__ == "__main__":
    main()
