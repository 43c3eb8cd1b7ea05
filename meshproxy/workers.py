# -*- test-case-name: tests.test_workers -*-
"""
Several reactor processes serving one proxy's listeners (C{[proxy] workers
= N}), behind one admin port.

A Twisted reactor runs Python on one core; a proxy with more traffic than a
core serves needs more processes.  The parent binds every listener of the
data path, as it would for itself, and hands the listening sockets to N
worker processes, exactly as systemd hands sockets to a service: on file
descriptors 3, 4, ... with C{LISTEN_FDS} and C{LISTEN_PID} set.  Each
worker is a whole L{ProxyService} whose listeners read
C{systemd:domain=...:index=K}, so nothing below the listener knows it is
a worker.  This was chosen over C{SO_REUSEPORT} because it works for every
endpoint the parent can listen on, C{systemd:} socket activation and UNIX
sockets included, where C{SO_REUSEPORT} needs each process to bind its own
TCP port.  The kernel wakes the workers on the shared accept queue and
whichever is idle first accepts, so a busy worker takes fewer connections.

The parent accepts nothing itself: it keeps its copies of the sockets
(so a worker that dies is replaced on the same sockets, no connection
refused meanwhile), serves the admin port, and:

  - C{/metrics} asks each worker's admin server (a private UNIX socket in a
    directory only the proxy's user can enter) and renders the sum: counters
    and histograms add up, as do the gauges that count things in flight
    (L{ADDITIVE}); a gauge that states a fact each worker knows alike (a
    certificate's expiry, an endpoint's RTT estimate or ejection) is shown
    as its largest value across workers, the pessimistic reading.
    prometheus_client's own multiprocess mode was not chosen: it replaces
    every value with a memory-mapped file for all registries in the
    process (the demo runs several proxies in one), costs a lock and a
    write per increment on the data path, and does not serve custom
    collectors such as the balancers'.
  - C{/ready} answers 200 once every worker answered 200 on its own.
  - SIGTERM stops every worker, each draining its connections as a
    single proxy does, and the parent exits when the last one has; SIGHUP
    is passed on to each worker, which reloads the file itself.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Sequence

from attrs import evolve
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from twisted.application.service import MultiService
from twisted.internet.base import _ISupportsExitSignalCapturing
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import UNIXClientEndpoint, serverFromString
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .admin import adminSite
from .config import Config
from .metrics import ProxyMetrics
from .readiness import Readiness
from .systemd import Notifier, NotifyService

__all__ = ["ADDITIVE", "WorkerPool", "listeners", "mergeExpositions", "workerConfig"]

#: Gauges whose workers' values add up to the proxy's: things each worker
#: holds a share of.  Every other gauge is shown at its largest.
ADDITIVE = frozenset({"tcp_open_connections", "balancer_endpoint_in_flight"})

#: The first file descriptor of the inherited listeners, as systemd's.
_FIRST_FD = 3

#: How long a worker that exited waits before it is replaced, in seconds:
#: enough not to spin on a worker that cannot start.
RESPAWN_DELAY = 1.0


def mergeExpositions(texts: Iterable[str], additive: frozenset[str] = ADDITIVE) -> list[Metric]:
    """
    Merge the C{/metrics} texts of several workers into one set of metric
    families, in the order they first appear.

    @param additive: the gauges to add up; other gauges take the largest
        value.
    """
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple, float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            samples = values[family.name]
            add = family.type != "gauge" or family.name in additive
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                previous = samples.get(key)
                if previous is None:
                    samples[key] = sample.value
                else:
                    samples[key] = previous + sample.value if add else max(previous, sample.value)
    for name, family in families.items():
        for (sample, labels), value in values[name].items():
            family.add_sample(sample, dict(labels), value)
    return list(families.values())


class _Merged:
    """
    A collector of metric families already merged, to render with
    prometheus_client's own text writer.
    """

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Sequence[Metric]:
        return self._families


class _FetchFactory(Factory):
    """
    Connects one L{_Fetch}, quietly: the parent polls and scrapes its
    workers often, and a factory's start and stop lines would fill its log.
    """

    noisy = False

    def __init__(self, fetch: _Fetch) -> None:
        self._fetch = fetch

    def buildProtocol(self, addr) -> _Fetch:
        return self._fetch


class _Fetch(Protocol):
    """
    One HTTP/1.0 C{GET} to a worker's admin server, which closes the
    connection after its answer: C{done} fires with (status, body).  Not
    L{twisted.web.client.Agent}, whose factories log two lines per request
    and whose pool a one-shot request on a private socket does not need.
    """

    def __init__(self, resource: bytes) -> None:
        self._resource = resource
        self._received = bytearray()
        self.done: Deferred[tuple[int, bytes]] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET %s HTTP/1.0\r\n\r\n" % (self._resource,))

    def dataReceived(self, data: bytes) -> None:
        self._received += data

    def connectionLost(self, reason=None) -> None:
        head, _, body = bytes(self._received).partition(b"\r\n\r\n")
        try:
            status = int(head.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.done.errback(ValueError(f"not an HTTP response: {head[:80]!r}"))
        else:
            self.done.callback((status, body))


async def _get(reactor, path: str, resource: bytes) -> tuple[int, bytes]:
    """
    GET C{resource} from the admin server on the UNIX socket C{path}.
    """
    fetch = _Fetch(resource)
    await UNIXClientEndpoint(reactor, path, timeout=5).connect(_FetchFactory(fetch))
    return await fetch.done


class MergedMetrics(Resource):
    """
    C{/metrics} of the parent: the workers' metrics, merged.  A worker that
    does not answer (one being replaced) is left out and logged, so that a
    scrape still shows the others.

    @ivar _pool: the workers whose admin sockets to ask.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, pool: WorkerPool) -> None:
        super().__init__()
        self._pool = pool

    def render_GET(self, request):
        Deferred.fromCoroutine(self._render(request))
        return NOT_DONE_YET

    async def _render(self, request) -> None:
        pool = self._pool
        answers = await DeferredList(
            [Deferred.fromCoroutine(_get(pool.reactor, path, b"/metrics")) for path in pool.adminSockets()],
            consumeErrors=True,
        )
        texts = [generate_latest(pool.registry).decode("utf-8")]
        for index, (ok, answer) in enumerate(answers):
            if ok and answer[0] == 200:
                texts.append(answer[1].decode("utf-8"))
            else:
                self._log.warn("Worker {index} gave no metrics: {answer}", index=index, answer=answer)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(mergeExpositions(texts)))
        body = generate_latest(registry)
        request.setHeader(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"content-length", b"%d" % (len(body),))
        request.write(body)
        request.finish()


class _NoAccept(Factory):
    """
    The parent's factory for the sockets it binds for its workers: it
    never accepts (it stops reading them), so this builds nothing.
    """

    noisy = False

    def buildProtocol(self, addr):
        return None


class _Worker(ProcessProtocol):
    """
    One worker process: its output goes to the parent's log, line by line,
    and C{ended} fires when it exits.

    @ivar index: its number, from 0.
    """

    _log = Logger()

    def __init__(self, index: int) -> None:
        self.index = index
        self.ended: Deferred[None] = Deferred()
        self._partial = b""

    def outReceived(self, data: bytes) -> None:
        *lines, self._partial = (self._partial + data).split(b"\n")
        for line in lines:
            self._log.info("worker {index}: {line}", index=self.index, line=line.decode("utf-8", "replace"))

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self._log.info("Worker {index} exited: {reason}", index=self.index, reason=reason.value)
        self.ended.callback(None)


def workerConfig(config: Config, domains: Sequence[str], admin: str) -> Config:
    """
    A worker's configuration: C{config} with each listener of the data path
    replaced by the inherited socket at the same position, and the admin
    server on C{admin}, without C{/shutdown} (the parent's serves it).

    @param domains: the address family of each inherited socket
        (C{"INET"}, C{"INET6"}, C{"UNIX"}), in the order of L{listeners}.
    """
    inherited = iter(f"systemd:domain={domain}:index={index}" for index, domain in enumerate(domains))
    return evolve(
        config,
        admin=evolve(config.admin, listen=admin, shutdown=False),
        inbound=tuple(evolve(listener, listen=next(inherited)) for listener in config.inbound),
        upstreams=tuple(evolve(listener, listen=next(inherited)) for listener in config.upstreams),
        outbound=None if config.outbound is None else evolve(config.outbound, listen=next(inherited)),
    )


def listeners(config: Config) -> list[str]:
    """
    The endpoint descriptions of C{config}'s data path, in the order
    L{workerConfig} replaces them.
    """
    described = [listener.listen for listener in (*config.inbound, *config.upstreams)]
    if config.outbound is not None:
        described.append(config.outbound.listen)
    return described


class WorkerPool(MultiService):
    """
    The parent process of C{[proxy] workers = N}: binds the listeners,
    runs the workers on them and serves the admin port.

    @ivar config: the configuration, as loaded.
    @ivar reactor: the reactor.
    @ivar readiness: C{/ready}: every listener bound and every worker ready.
    @ivar registry: the parent's own metrics (the lines its log dropped),
        merged into C{/metrics} with the workers'.
    @ivar _ports: the bound listening ports, kept but never read.
    @ivar _workers: the running worker processes, by index.
    @ivar _transports: their process transports, by index.
    @ivar _directory: where the workers' admin sockets are.
    @ivar _stopping: whether the pool is stopping (no more replacements).
    """

    _log = Logger()

    def __init__(self, config: Config, reactor, notifier: Notifier | None = None, executable: str = sys.executable) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.readiness = Readiness()
        self.registry = CollectorRegistry(auto_describe=False)
        self._executable = executable
        self._ports: list = []
        self._workers: dict[int, _Worker] = {}
        self._transports: dict[int, object] = {}
        self._directory = tempfile.mkdtemp(prefix="meshproxy-workers-")
        self._stopping = False
        self._workersReady = [self.readiness.require(f"worker {index}") for index in range(config.proxy.workers)]
        self._listening = self.readiness.require("listeners")
        self._admin = adminSite(ProxyMetrics(), self.readiness, reactor, self.shutdown if config.admin.shutdown else None)
        self._admin.resource.putChild(b"metrics", MergedMetrics(self))
        if notifier is not None:
            NotifyService(notifier, self.readiness).setServiceParent(self)

    def adminSockets(self) -> list[str]:
        """
        The paths of the workers' admin sockets, by index.
        """
        return [os.path.join(self._directory, f"worker-{index}.sock") for index in range(self.config.proxy.workers)]

    def privilegedStartService(self) -> None:
        # Bind before twistd drops privileges, so that low ports work; a
        # port that cannot be bound fails the start, as a single proxy's.
        for description in listeners(self.config):
            failures: list = []
            serverFromString(self.reactor, description).listen(_NoAccept()).addCallbacks(
                self._ports.append, failures.append
            )
            if failures:
                failures[0].raiseException()
            # The workers accept; the parent only keeps the socket open.
            self._ports[-1].stopReading()
        failures = []
        serverFromString(self.reactor, self.config.admin.listen).listen(self._admin).addCallbacks(
            self._ports.append, failures.append
        )
        if failures:
            failures[0].raiseException()
        self._listening()
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        for index in range(self.config.proxy.workers):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        """
        Start worker C{index} on the bound sockets, and mark it ready once
        its own C{/ready} says so.
        """
        worker = self._workers[index] = _Worker(index)
        path = self.adminSockets()[index]
        if os.path.exists(path):
            os.unlink(path)
        data = self._ports[: len(listeners(self.config))]
        domains = [socket.AddressFamily(port.socket.family).name[3:] for port in data]
        environ = {key: value for key, value in os.environ.items() if not key.startswith(("LISTEN_", "NOTIFY_SOCKET"))}
        childFDs = {0: "w", 1: "r", 2: "r"}
        childFDs.update({_FIRST_FD + i: port.fileno() for i, port in enumerate(data)})
        argv = [self._executable, "-m", "meshproxy.worker", self.config.path.path, f"unix:{path}", *domains]
        self._transports[index] = self.reactor.spawnProcess(worker, argv[0], argv, env=environ, childFDs=childFDs)
        self._transports[index].closeStdin()
        worker.ended.addCallback(lambda _: self._ended(index))
        Deferred.fromCoroutine(self._whenReady(index, worker))

    async def _whenReady(self, index: int, worker: _Worker) -> None:
        path = self.adminSockets()[index]
        while not worker.ended.called:
            try:
                code, body = await _get(self.reactor, path, b"/ready")
            except Exception:
                code = None
            if code == 200:
                self._workersReady[index]()
                return
            await deferLater(self.reactor, 0.1, lambda: None)

    def _ended(self, index: int) -> None:
        del self._transports[index]
        if not self._stopping:
            self._log.error("Worker {index} ended unexpectedly: replacing it", index=index)
            self.reactor.callLater(RESPAWN_DELAY, self._respawn, index)

    def _respawn(self, index: int) -> None:
        if not self._stopping:
            self._spawn(index)

    def _signal(self, name: str) -> None:
        for transport in list(self._transports.values()):
            try:
                transport.signalProcess(name)
            except OSError:
                pass

    def reloadFile(self) -> None:
        """
        SIGHUP: each worker reloads the configuration file.
        """
        self._signal("HUP")

    def shutdown(self) -> None:
        """
        C{POST /shutdown}: stop as SIGTERM does.
        """
        if not self._stopping:
            self.reactor.stop()

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self._stopping = True
        self.readiness.drain()
        # Each worker drains its connections (its shutdown grace) and
        # exits; the parent's admin port answers until the last one has.
        self._signal("TERM")
        await gatherResults([worker.ended for worker in self._workers.values()])
        await gatherResults([port.stopListening() for port in self._ports])
        shutil.rmtree(self._directory, ignore_errors=True)
        if _ISupportsExitSignalCapturing.providedBy(self.reactor):
            # As a single proxy: a shutdown asked for is a clean exit.
            self.reactor._exitSignal = None
        await super().stopService()
