"""
Tests for C{meshproxy demo}: the files it writes, its load's schedule, and
the whole demo as a user runs it.
"""

from __future__ import annotations

import os
import re
import signal
import socket

from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.config import load
from meshproxy.demomesh import writeMesh
from meshproxy.demotraffic import Load
from meshproxy.identity.config import load as loadIssuer

from .realprocess import _Collector, run, tool

#: The test's output parse: one line per endpoint at the end.
FINAL = re.compile(r"^final (web-\d) \((.*)\) (127\.0\.0\.1:\d+) share ([\d.]+)% requests (\d+) success ([\d.]+)%$", re.M)


class WriteMeshTests(SynchronousTestCase):
    """
    L{writeMesh} writes configurations that the proxy and the issuer accept
    as they are, with every proxy under the CA's trust domain.
    """

    def test_configurations(self):
        directory = FilePath(self.mktemp())
        directory.makedirs()
        mesh = writeMesh(directory, [("web-0", 8080), ("web-1", 8081)])
        issuer = loadIssuer(mesh.issuer.config)
        self.assertEqual(issuer.authority.trustDomain, "mesh.local")
        servers = [load(member.config) for member in mesh.servers]
        self.assertEqual([c.proxy.identity for c in servers], ["web-0.mesh.local", "web-1.mesh.local"])
        self.assertEqual([str(c.inbound[0].app) for c in servers], ["127.0.0.1:8080", "127.0.0.1:8081"])
        client = load(mesh.client.config)
        web = client.services["web"]
        self.assertEqual(web.balancer, "p2c-peak-ewma")
        self.assertEqual(
            [(str(e.address), e.identity) for e in web.endpoints],
            [(m.address, f"{m.name}.mesh.local") for m in mesh.servers],
        )
        self.assertEqual(client.identity.issuer_identity, issuer.authority.issuerIdentity)
        ports = [m.port for m in mesh.members] + [mesh.upstream, mesh.outbound]
        self.assertEqual(len(set(ports)), len(ports))


class LoadScheduleTests(SynchronousTestCase):
    """
    L{Load.due}: the load climbs to its rate over the ramp, then stays.
    """

    def test_ramp(self):
        schedule = Load(Clock(), "http://127.0.0.1:1/", rate=100.0, ramp=2.0)
        self.assertEqual([schedule.due(t) for t in (0.0, 1.0, 2.0, 3.0, 12.0)], [0, 25, 100, 200, 1100])


class DemoProcessTests(TestCase):
    """
    C{meshproxy demo} as a newcomer runs it.
    """

    timeout = 90

    def argv(self, *options: str) -> list[str]:
        return [tool("meshproxy", "the meshproxy package (pip install .)"), "demo", *options]

    def assertStopped(self, text: str) -> None:
        """
        The demo's directory is gone and nothing listens on its admin
        ports any more.
        """
        (directory,) = re.findall(r"^Files: (\S+) ", text, re.M)
        self.assertFalse(os.path.exists(directory), directory)
        admins = re.findall(r"^  \S+ +http://127\.0\.0\.1:(\d+)/metrics$", text, re.M)
        self.assertEqual(len(admins), 4, text)
        for port in admins:
            with socket.socket() as s:
                self.assertNotEqual(s.connect_ex(("127.0.0.1", int(port))), 0, port)

    async def test_duration(self):
        """
        A bounded run exits 0 after showing tables, and its summary gives
        the slow instance a smaller share than each of the others.
        """
        tool("twistd", "the meshproxy package (pip install .)")
        code, output = await run(self.argv("--duration", "20"))
        text = output.decode(errors="replace")
        self.assertEqual(code, 0, text)
        self.assertIn("curl http://127.0.0.1:", text)
        self.assertGreaterEqual(text.count("SERVICE  ENDPOINT"), 15, text)
        rows = {name: (kind, float(share), int(requests)) for name, kind, _, share, requests, _ in FINAL.findall(text)}
        self.assertEqual(set(rows), {"web-0", "web-1", "web-2"}, text)
        self.assertIn("slow", rows["web-1"][0])
        self.assertLess(rows["web-1"][1], rows["web-0"][1], text)
        self.assertLess(rows["web-1"][1], rows["web-2"][1], text)
        self.assertGreater(sum(requests for _, _, requests in rows.values()), 1000, text)
        self.assertStopped(text)
        self.assertNotIn("Traceback", text)

    async def test_interrupt(self):
        """
        SIGINT (Ctrl-C) stops the processes and removes the files, exit 0.
        """
        argv = self.argv()
        collector = _Collector()
        process = reactor.spawnProcess(collector, argv[0], argv, env=os.environ)
        self.addCleanup(lambda: collector.ended.called or process.signalProcess(signal.SIGKILL))
        deadline = reactor.seconds() + 45
        while b"SERVICE  ENDPOINT" not in collector.output:
            self.assertFalse(collector.ended.called, collector.output.decode(errors="replace"))
            self.assertLess(reactor.seconds(), deadline, collector.output.decode(errors="replace"))
            await deferLater(reactor, 0.1, lambda: None)
        process.signalProcess(signal.SIGINT)
        code = await collector.ended
        text = collector.output.decode(errors="replace")
        self.assertEqual(code, 0, text)
        self.assertIn("final web-1", text)
        self.assertStopped(text)
