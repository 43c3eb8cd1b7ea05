"""
Tests for L{meshproxy.systemd} and the unit files in C{contrib/systemd}.
"""

import os
import socket
import sys

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from meshproxy.readiness import Readiness
from meshproxy.systemd import Notifier, NotifyService

from .realprocess import run, tool

UNITS = FilePath(__file__).parent().parent().descendant(["contrib", "systemd"])


class Receiver:
    """
    A stand-in service manager: a datagram socket at a path or an abstract
    name.
    """

    def __init__(self, testCase, address):
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(address)
        self.socket.setblocking(False)
        testCase.addCleanup(self.socket.close)

    def received(self):
        states = []
        while True:
            try:
                states.append(self.socket.recv(4096).decode())
            except BlockingIOError:
                return states


class NotifierTests(SynchronousTestCase):
    def test_notConfigured(self):
        self.assertIsNone(Notifier.fromEnvironment({}))
        self.assertIsNone(Notifier.fromEnvironment({"NOTIFY_SOCKET": ""}))

    def test_path(self):
        path = self.mktemp()
        receiver = Receiver(self, path)
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": path})
        self.assertTrue(notifier.notify("READY=1"))
        self.assertEqual(receiver.received(), ["READY=1"])

    def test_abstract(self):
        """
        C{@name} is a socket in the abstract namespace.
        """
        name = f"meshproxy-test-{os.getpid()}-{id(self)}"
        receiver = Receiver(self, "\0" + name)
        notifier = Notifier.fromEnvironment({"NOTIFY_SOCKET": "@" + name})
        self.assertTrue(notifier.notify("STOPPING=1"))
        self.assertEqual(receiver.received(), ["STOPPING=1"])

    def test_managerGone(self):
        """
        A socket nobody listens on is logged, not raised.
        """
        notifier = Notifier(self.mktemp())
        self.assertFalse(notifier.notify("READY=1"))


class NotifyServiceTests(SynchronousTestCase):
    def setUp(self):
        path = self.mktemp()
        self.receiver = Receiver(self, path)
        self.readiness = Readiness()
        self.service = NotifyService(Notifier(path), self.readiness)

    def test_readyThenStopping(self):
        listener = self.readiness.require("listener")
        self.service.startService()
        self.assertEqual(self.receiver.received(), [])
        listener()
        self.assertEqual(self.receiver.received(), ["READY=1"])
        self.service.stopService()
        self.assertEqual(self.receiver.received(), ["STOPPING=1"])

    def test_stopBeforeReady(self):
        self.readiness.require("listener")
        self.service.startService()
        self.service.stopService()
        self.assertEqual(self.receiver.received(), ["STOPPING=1"])


class ProcessTests(TestCase):
    """
    A real C{twistd -n meshproxy} under a stand-in service manager.
    """

    async def test_readyThenStopping(self):
        from .realprocess import Proxy

        path = self.mktemp()
        receiver = Receiver(self, path)
        proxy = Proxy(self, '[[inbound]]\nlisten = "tcp:0:interface=127.0.0.1"\napp = "127.0.0.1:1"\n')
        proxy.environment["NOTIFY_SOCKET"] = path
        await proxy.start()
        self.assertEqual(receiver.received(), ["READY=1"])
        await proxy.stop()
        self.assertEqual(receiver.received(), ["STOPPING=1"])


class UnitFileTests(TestCase):
    """
    The unit files pass C{systemd-analyze verify}, warnings included.
    """

    async def verify(self, name):
        # verify insists that ExecStart's binary exists: point it at the
        # twistd of the interpreter running the tests.
        unit = FilePath(self.mktemp())
        unit.makedirs()
        unit = unit.child(name)
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        unit.setContent(UNITS.child(name).getContent().replace(b"/usr/local/bin/twistd", twistd.encode()))
        unit.chmod(0o644)
        code, output = await run([tool("systemd-analyze", "systemd"), "verify", "--man=no", unit.path])
        self.assertEqual((code, output.decode()), (0, ""))

    async def test_meshproxy(self):
        await self.verify("meshproxy.service")

    async def test_identity(self):
        await self.verify("meshproxy-identity.service")
