# -*- test-case-name: tests.test_demo -*-
"""
C{meshproxy demo}: a whole mesh on 127.0.0.1, with no files to write.

It writes a CA, tokens and configurations to a temporary directory
(L{meshproxy.demomesh}), starts the issuer and four proxies as real
C{twistd} processes, three small applications behind three server-side
proxies (one slow, one that breaks off some responses), and sends a steady
load through the client-side proxy (L{meshproxy.demotraffic}).  Every hop
between proxies is real mTLS with certificates from the real issuer.
Once a second it shows the table C{meshproxy top} shows for the client-side
proxy, where p2c-peak-ewma moves traffic away from the slow instance.

It ends after C{--duration} seconds, or at Ctrl-C: either way it stops the
load, prints each endpoint's share of the whole run (lines starting with
C{final}, for scripts), stops every process it started and waits for it,
and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from random import Random
from typing import TextIO

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.error import ConnectError, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import deferLater, react
from twisted.python.filepath import FilePath
from twisted.web.client import Agent, readBody
from twisted.web.server import Site

from .demomesh import SERVICE, Member, Mesh, writeMesh
from .demotraffic import Instance, InstanceResource, Load, within
from .stats import Scrape, Table, compare
from .top import render, show

__all__ = ["INSTANCES", "demo"]

#: The demo's application instances: a healthy one, a slow one and one
#: that fails now and then.
INSTANCES = (Instance("web-0"), Instance("web-1", delay=0.05), Instance("web-2", failures=0.1))

#: How long the processes may take to be ready, in seconds.
_START_TIMEOUT = 30.0

#: How long a process may take to exit once asked, in seconds, before it
#: is killed.
_STOP_TIMEOUT = 10.0


class DemoError(Exception):
    """
    The demo cannot go on; the message says why.
    """


class _Process(ProcessProtocol):
    """
    One C{twistd} process of the mesh, logging to a file.

    @ivar ended: fires with the exit status (negative: the signal) when it
        has exited.
    """

    def __init__(self, reactor, member: Member, log: FilePath) -> None:
        self.member = member
        self.log = log
        self.ended: Deferred[int] = Deferred()
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        if not os.access(twistd, os.X_OK):
            raise DemoError(f"{twistd} not found: install meshproxy (pip install meshproxy) in {sys.prefix}")
        argv = [twistd, "--nodaemon", "--pidfile=", f"--logfile={log.path}", member.plugin, "--config", member.config.path]
        self._transport = reactor.spawnProcess(self, twistd, argv, env=os.environ, path=member.config.dirname())
        self._clock = reactor

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode
        self.ended.callback(-reason.value.signal if code is None else code)

    def tail(self, lines: int = 15) -> str:
        """
        The end of its log, to tell why it did not start.
        """
        try:
            text = self.log.getContent().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _signal(self, number: int) -> None:
        try:
            self._transport.signalProcess(number)
        except ProcessExitedAlready:
            pass

    async def stop(self) -> None:
        """
        Ask it to exit (SIGTERM), kill it if it has not within
        L{_STOP_TIMEOUT}, and wait until it has exited.
        """
        self._signal(signal.SIGTERM)
        if not await within(self._clock, self.ended, _STOP_TIMEOUT):
            self._signal(signal.SIGKILL)
            await within(self._clock, self.ended, _STOP_TIMEOUT)


class Demo:
    """
    The running demo: its directory, processes, applications and load.

    @ivar names: how the table shows each endpoint, by address.
    """

    def __init__(self, reactor, rate: float, out: TextIO) -> None:
        self._reactor = reactor
        self._rate = rate
        self._out = out
        self._agent = Agent(reactor)
        self._directory = FilePath(tempfile.mkdtemp(prefix="meshproxy-demo-"))
        self._processes: list[_Process] = []
        self._ports = []
        self._load: Load | None = None
        self._mesh: Mesh | None = None
        self._first: Scrape | None = None
        self._last: Scrape | None = None
        self._started = 0.0
        self._stopped = 0.0
        self._finishing: Deferred[None] | None = None
        self.names: dict[str, str] = {}

    def _print(self, text: str) -> None:
        self._out.write(text + "\n")
        self._out.flush()

    async def start(self) -> None:
        """
        Start the applications and the processes, and wait until every
        proxy is ready.
        """
        reactor = self._reactor
        apps = []
        random = Random()
        for instance in INSTANCES:
            site = Site(InstanceResource(instance, reactor, random))
            port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
            self._ports.append(port)
            apps.append((instance.name, port.getHost().port))
        mesh = self._mesh = writeMesh(self._directory, apps)
        self.names = {
            server.address: f"{server.name} ({instance.describe()})" for server, instance in zip(mesh.servers, INSTANCES)
        }
        issuer = self._spawn(mesh.issuer)
        await self._until(issuer, lambda: self._accepts(mesh.issuer.port))
        await gatherResults(
            [
                Deferred.fromCoroutine(self._until(self._spawn(member), lambda member=member: self._ready(member)))
                for member in (*mesh.servers, mesh.client)
            ]
        )

    def _spawn(self, member: Member) -> _Process:
        if self._finishing is not None:
            # Ctrl-C while starting: start nothing that finish() would miss.
            raise DemoError("interrupted")
        process = _Process(self._reactor, member, self._directory.child(f"{member.name}.log"))
        self._processes.append(process)
        return process

    async def _accepts(self, port: int) -> bool:
        try:
            protocol = await connectProtocol(TCP4ClientEndpoint(self._reactor, "127.0.0.1", port), Protocol())
        except ConnectError:
            return False
        protocol.transport.loseConnection()
        return True

    async def _get(self, port: int, path: str) -> tuple[int, bytes]:
        response = await self._agent.request(b"GET", f"http://127.0.0.1:{port}{path}".encode())
        return response.code, await readBody(response)

    async def _ready(self, member: Member) -> bool:
        try:
            status, _ = await self._get(member.port, "/ready")
        except Exception:
            return False
        return status == 200

    async def _until(self, process: _Process, check) -> None:
        """
        Wait until C{await check()} is true, polling every tenth of a
        second; fail if the process exits first or the time is up.
        """
        deadline = self._reactor.seconds() + _START_TIMEOUT
        while not await check():
            if process.ended.called:
                raise DemoError(f"{process.member.name} exited during start; the end of its log:\n{process.tail()}")
            if self._reactor.seconds() > deadline:
                raise DemoError(f"{process.member.name} not up after {_START_TIMEOUT:g}s; its log:\n{process.tail()}")
            await deferLater(self._reactor, 0.1, lambda: None)

    async def scrape(self) -> Scrape:
        """
        The client-side proxy's metrics now.
        """
        status, body = await self._get(self._mesh.client.port, "/metrics")
        if status != 200:
            raise DemoError(f"the client proxy's /metrics answered {status}")
        return Scrape.parse(body.decode())

    def introduce(self) -> None:
        """
        Say what runs where and what to try.
        """
        mesh = self._mesh
        lines = [
            f"meshproxy demo: an issuer, a client-side proxy and {len(mesh.servers)} server-side proxies "
            f"on 127.0.0.1, talking mTLS.",
            f"Files: {self._directory.path} (removed at exit)",
            "",
            f"Service {SERVICE}, balanced by the client proxy with p2c-peak-ewma over:",
        ]
        lines += [f"  {server.address}  {self.names[server.address]}" for server in mesh.servers]
        lines += [
            "",
            "Try:",
            f"  curl http://127.0.0.1:{mesh.upstream}/               # the client proxy's listener for {SERVICE}",
            f"  curl -x http://127.0.0.1:{mesh.outbound} http://{SERVICE}/   # its HTTP proxy listener",
            f"  meshproxy top --admin 127.0.0.1:{mesh.client.port}     # this table, from another terminal",
            "",
            "Admin (/metrics, /ready, /live):",
        ]
        lines += [f"  {member.name:<8} http://127.0.0.1:{member.port}/metrics" for member in (mesh.client, *mesh.servers)]
        lines += ["", f"Load: {self._rate:g} requests/s through 127.0.0.1:{mesh.upstream}. Ctrl-C stops everything.", ""]
        self._print("\n".join(lines))

    def _status(self) -> str:
        load = self._load
        return f"load: sent {load.sent}, answered {load.succeeded}, failed {load.failed}, shed {load.shed}"

    async def run(self, duration: float | None) -> None:
        """
        Send the load and show the table every second, for C{duration}
        seconds or until the reactor stops.
        """
        reactor = self._reactor
        self._first = self._last = await self.scrape()
        self._started = then = reactor.seconds()
        self._load = Load(reactor, f"http://127.0.0.1:{self._mesh.upstream}/", self._rate)
        self._load.start()
        while self._finishing is None and (duration is None or reactor.seconds() - self._started < duration):
            await deferLater(reactor, 1.0, lambda: None)
            try:
                after, now = await self.scrape(), reactor.seconds()
            except Exception:
                if self._finishing is None:
                    raise
            if self._finishing is not None:
                # Ctrl-C: finish() prints the last word.
                break
            title = f"meshproxy demo: client proxy 127.0.0.1:{self._mesh.client.port}"
            show(self._out, render(compare(self._last, after, now - then), title, self.names) + "\n\n" + self._status())
            self._last, then = after, now

    def finish(self) -> Deferred[None]:
        """
        Stop everything, once, however the demo ends.
        """
        if self._finishing is None:
            self._finishing = Deferred.fromCoroutine(self._finish())
        return self._finishing

    async def _finish(self) -> None:
        if self._load is not None:
            await self._load.stop()
            try:
                self._last = await self.scrape()
            except Exception:
                pass
            self._print(summary(compare(self._first, self._last, self._reactor.seconds() - self._started), self.names))
            self._print(f"final {self._status()}")
        for port in self._ports:
            await port.stopListening()
        # The client proxy first, so that it does not count the others'
        # going as failures of their endpoints.
        client = [p for p in self._processes if p.member is self._mesh.client]
        for group in (client, [p for p in self._processes if p not in client]):
            await gatherResults([Deferred.fromCoroutine(process.stop()) for process in group])
        shutil.rmtree(self._directory.path, ignore_errors=True)


def summary(table: Table, names: Mapping[str, str]) -> str:
    """
    Each endpoint's share of the whole run, one line each, starting with
    C{final} so scripts can find them.
    """
    return "\n".join(
        f"final {names.get(row.endpoint, row.endpoint)} {row.endpoint} share {row.share * 100 if row.share else 0:.1f}% "
        f"requests {row.rps * table.seconds:.0f} success {(row.success or 0) * 100:.1f}%"
        for row in table.endpoints
    )


async def _main(reactor, duration: float | None, rate: float, out: TextIO) -> None:
    demo = Demo(reactor, rate, out)
    trigger = reactor.addSystemEventTrigger("before", "shutdown", demo.finish)
    try:
        await demo.start()
        demo.introduce()
        await demo.run(duration)
    finally:
        reactor.removeSystemEventTrigger(trigger)
        await demo.finish()


def demo(arguments, out: TextIO = sys.stdout) -> int:
    """
    C{meshproxy demo}: run until C{--duration} is over or Ctrl-C, then exit
    0; exit 1 if the mesh cannot start.
    """

    def main(reactor):
        done = Deferred.fromCoroutine(_main(reactor, arguments.duration, arguments.rate, out))

        def failed(reason):
            reason.trap(DemoError)
            print(f"meshproxy demo: {reason.value}", file=sys.stderr)
            raise SystemExit(1)

        return done.addErrback(failed)

    try:
        react(main)
    except SystemExit as e:
        return e.code or 0
    return 0
