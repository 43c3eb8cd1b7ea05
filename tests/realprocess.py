"""
Run meshproxy and the tools that drive it as real processes, for the
integration tests.

Everything binds 127.0.0.1.  Waiting is on events (a process's exit, an
answer from C{/ready}), each bounded in time, never on a fixed sleep.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.web.client import Agent, readBody

BIN = os.path.dirname(sys.executable)


def tool(name: str, package: str) -> str:
    """
    The path of an outside tool the tests need.  A missing tool fails the
    test with the package to install: a test that skipped instead would
    hide a CI machine that never ran it.
    """
    path = shutil.which(name, path=BIN + os.pathsep + os.environ.get("PATH", ""))
    if path is None:
        raise AssertionError(f"{name} is not installed: apt-get install -y {package}")
    return path


def freePort() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collector(ProcessProtocol):
    """
    Keep a process's output and fire C{ended} with its exit code.
    """

    def __init__(self) -> None:
        self.output = bytearray()
        self.ended: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        code = 0 if reason.check(ProcessDone) else reason.value.exitCode
        if code is None:
            code = -reason.value.signal
        self.ended.callback(code)


def run(argv: list[str], stdin: bytes | None = None, env: dict | None = None) -> Deferred[tuple[int, bytes]]:
    """
    Run a command to its end: (exit code, standard output and error).
    """
    collector = _Collector()
    transport = reactor.spawnProcess(collector, argv[0], argv, env=os.environ if env is None else env)
    if stdin is not None:
        transport.write(stdin)
    transport.closeStdin()
    return collector.ended.addCallback(lambda code: (code, bytes(collector.output)))


async def serve(testCase, argv: list[str], port: int, timeout: float = 10.0) -> bytes:
    """
    Start a server process (C{openssl s_server}, say) that listens on
    C{port} of 127.0.0.1, and wait until it accepts connections.  It is
    stopped when the test ends.

    @return: its output so far, a bytearray that keeps growing.
    """
    collector = _Collector()
    process = reactor.spawnProcess(collector, argv[0], argv, env=os.environ)

    def stop():
        if not collector.ended.called:
            process.signalProcess(signal.SIGTERM)
        return collector.ended

    testCase.addCleanup(stop)
    deadline = reactor.seconds() + timeout
    while True:
        if collector.ended.called:
            raise AssertionError(f"{argv[0]} exited during start:\n{collector.output.decode(errors='replace')}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return collector.output
        if reactor.seconds() > deadline:
            raise AssertionError(f"{argv[0]} not listening on {port} after {timeout}s")
        await deferLater(reactor, 0.05, lambda: None)


async def get(url: str) -> tuple[int, bytes]:
    """
    GET C{url}: (status, body).
    """
    response = await Agent(reactor).request(b"GET", url.encode())
    return response.code, await readBody(response)


def upstreamConfig(listen: int, backend: int, proxy: str = "") -> str:
    """
    A proxy configuration with one upstream listener on C{listen} routing
    to a static service C{web} whose one endpoint is 127.0.0.1:C{backend},
    and C{proxy} (TOML lines) as its C{[proxy]} table.
    """
    return f"""[proxy]
{proxy}

[[upstreams]]
listen = "tcp:{listen}:interface=127.0.0.1"
service = "web"

[services.web]
endpoints = [{{ address = "127.0.0.1:{backend}" }}]
"""


class Proxy:
    """
    A C{twistd -n meshproxy} process with a configuration file written for
    it in C{directory}.
    """

    def __init__(self, testCase, config: str) -> None:
        self.directory = FilePath(testCase.mktemp())
        self.directory.makedirs()
        self.config = self.directory.child("meshproxy.toml")
        self.adminPort = freePort()
        self.config.setContent(
            f'[admin]\nlisten = "tcp:{self.adminPort}:interface=127.0.0.1"\n\n{config}'.encode()
        )
        self.environment = dict(os.environ)
        self.process = None
        self.collector = _Collector()
        testCase.addCleanup(self.stop)

    @property
    def output(self) -> str:
        return self.collector.output.decode(errors="replace")

    def argv(self) -> list[str]:
        return [
            tool("twistd", "the meshproxy package (pip install .)"),
            "--nodaemon",
            "--pidfile=",
            "--logfile=-",
            "meshproxy",
            "--config",
            self.config.path,
        ]

    async def start(self, timeout: float = 15.0) -> Proxy:
        """
        Start the process and wait until its C{/ready} answers 200.
        """
        argv = self.argv()
        self.process = reactor.spawnProcess(self.collector, argv[0], argv, env=self.environment)
        deadline = reactor.seconds() + timeout
        while True:
            if self.collector.ended.called:
                raise AssertionError(f"meshproxy exited during start:\n{self.output}")
            try:
                status, _ = await get(f"http://127.0.0.1:{self.adminPort}/ready")
            except Exception:
                status = None
            if status == 200:
                return self
            if reactor.seconds() > deadline:
                raise AssertionError(f"meshproxy not ready after {timeout}s:\n{self.output}")
            # Poll /ready, the proxy's own readiness signal, at a short interval.
            await deferLater(reactor, 0.05, lambda: None)

    async def metrics(self) -> str:
        status, body = await get(f"http://127.0.0.1:{self.adminPort}/metrics")
        assert status == 200, status
        return body.decode()

    async def samples(self) -> Samples:
        return Samples(await self.metrics())

    def stop(self) -> Deferred | None:
        if self.process is None or self.collector.ended.called:
            return None
        self.process.signalProcess(signal.SIGTERM)
        return self.collector.ended


class Samples:
    """
    The samples of a Prometheus text exposition, to look values up by name
    and labels.  A label with an empty value is left out, as Prometheus
    leaves it out: C{client_id=""} is no client_id.
    """

    def __init__(self, text: str) -> None:
        self._values = {
            (sample.name, frozenset((k, v) for k, v in sample.labels.items() if v)): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float | None:
        """
        The value of the sample C{name} with exactly C{labels}, or L{None}.
        """
        return self._values.get((name, frozenset(labels.items())))
