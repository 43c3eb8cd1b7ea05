"""
Tests for L{meshproxy.logsink}: the bounded queue, the sink's writer thread
over real pipes, the hook twistd uses, and a real C{twistd -n meshproxy}
whose log pipe nobody reads while clients flood it with log lines.
"""

from __future__ import annotations

import os
import re
import select
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Site

from meshproxy.logsink import FLUSH_TIMEOUT, QUEUE_LIMIT, LogQueue, LogSink, logThroughSink

from .realprocess import Proxy, freePort, get
from .test_integration import Named, upstream

#: 2027-01-15T08:00:00Z, the time of the notices in the unit tests.
NOW = 1_800_000_000.0
NOTICE = re.compile(rb"[^\n]* \[meshproxy\.logsink#warn\] (\d+) log lines dropped: the log reader did not keep up\n")


class LogQueueTests(SynchronousTestCase):
    """
    Tests for L{LogQueue}, the bounded queue alone.
    """

    def setUp(self) -> None:
        self.queue = LogQueue(limit=100, now=lambda: NOW)

    def test_bound(self) -> None:
        """
        Events are queued while they fit within the limit in bytes (UTF-8);
        one that does not fit is dropped and counted, and a smaller one
        after it can still fit.
        """
        self.queue.put("a" * 60 + "\n")
        self.queue.put("é" * 20 + "\n")
        self.assertEqual((self.queue.size, self.queue.lines, self.queue.dropped), (61, 1, 1))
        self.queue.put("b" * 38 + "\n")
        self.assertEqual((self.queue.size, self.queue.lines, self.queue.dropped), (100, 2, 1))
        self.queue.put("\n")
        self.assertEqual(self.queue.dropped, 2)

    def test_noticeWhereDropped(self) -> None:
        """
        Drops in a row leave one notice, in their place, with the time of
        the first drop, formatted as twistd formats its lines; the count
        of dropped events goes on across notices.
        """
        self.queue.put("first\n")
        for _ in range(3):
            self.queue.put("x" * 100)
        data, lines = self.queue.take()
        self.assertEqual(lines, 1)
        self.assertEqual(
            data,
            b"first\n2027-01-15T08:00:00+0000 [meshproxy.logsink#warn]"
            b" 3 log lines dropped: the log reader did not keep up\n",
        )
        self.assertEqual((self.queue.size, self.queue.lines), (0, 0))
        self.queue.put("x" * 101)
        self.queue.put("second\n")
        self.queue.put("x" * 101)
        data, lines = self.queue.take()
        self.assertEqual([int(n) for n in NOTICE.findall(data)], [1, 1])
        self.assertEqual(NOTICE.sub(b"-\n", data), b"-\nsecond\n-\n")
        self.assertEqual((lines, self.queue.dropped), (1, 5))

    def test_lost(self) -> None:
        """
        Events taken but not written count as dropped, with a notice before
        whatever was queued since, merged with a gap already there.
        """
        self.queue.put("one\n")
        self.queue.put("two\n")
        self.queue.take()
        self.queue.put("x" * 101)
        self.queue.put("three\n")
        self.queue.lost(2)
        data, lines = self.queue.take()
        self.assertEqual(NOTICE.findall(data), [b"3"])
        self.assertTrue(data.endswith(b"three\n"))
        self.assertEqual((lines, self.queue.dropped), (1, 3))

    def test_empty(self) -> None:
        self.assertEqual(self.queue.take(), (b"", 0))


def readUntil(fd: int, pattern: re.Pattern, timeout: float = 10.0) -> bytes:
    """
    Read from the pipe C{fd} until what was read matches C{pattern}.
    """
    data = b""
    deadline = time.monotonic() + timeout
    while not pattern.search(data):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise AssertionError(f"{pattern.pattern!r} not read within {timeout}s: {data[-500:]!r}")
        data += os.read(fd, 65536)
    return data


class LogSinkTests(SynchronousTestCase):
    """
    Tests for L{LogSink}, writing to real pipes from its own thread.
    """

    def pipe(self) -> tuple[int, int]:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        return read, write

    def test_writes(self) -> None:
        """
        What is written comes out of the pipe in order; C{drain} returns
        once it has been written, and C{flush} does nothing.
        """
        read, write = self.pipe()
        sink = LogSink(write)
        for i in range(100):
            sink.write(f"line {i}\n")
            sink.flush()
        self.assertTrue(sink.drain(10))
        data = readUntil(read, re.compile(rb"line 99\n"))
        self.assertEqual(data, b"".join(b"line %d\n" % (i,) for i in range(100)))
        self.assertEqual(sink.dropped, 0)

    def test_stalledReader(self) -> None:
        """
        While nobody reads the pipe, writes return at once: what does not fit
        in the pipe and the queue is dropped and counted.  Once the reader
        reads again, the queued lines come out, then the notice with the
        count of the dropped ones, then the lines written after.
        """
        read, write = self.pipe()
        sink = LogSink(write, limit=16 * 1024)
        line = "x" * 99 + "\n"
        started = time.monotonic()
        for _ in range(2000):
            sink.write(line)
        self.assertLess(time.monotonic() - started, 1.0)
        # The pipe holds 64 KiB; the writer holds a batch of at most the
        # limit, and the queue the limit.
        self.assertGreaterEqual(sink.dropped, 2000 - (64 + 2 * 16) * 1024 // 100)
        dropped = sink.dropped
        data = readUntil(read, NOTICE)
        sink.write("after\n")
        data += readUntil(read, re.compile(rb"after\n"))
        # A notice for each run of drops: the writer may have taken one
        # before the pipe filled.
        self.assertEqual(sum(int(n) for n in NOTICE.findall(data)), dropped)
        self.assertEqual(NOTICE.sub(b"", data).count(line.encode()), 2000 - dropped)
        # Lines queued after a run of drops (the writer freed room
        # mid-flood) may follow its notice; the line written once the
        # reader is back comes last.
        self.assertTrue(data.endswith(b"\nafter\n"))
        self.assertTrue(sink.drain(10))

    def test_writeErrors(self) -> None:
        """
        Events that cannot be written (C{/dev/full}) count as dropped, and
        the writer thread keeps going.
        """
        sink = LogSink(os.open("/dev/full", os.O_WRONLY))
        for i in range(10):
            sink.write(f"line {i}\n")
            self.assertTrue(sink.drain(10))
        self.assertEqual(sink.dropped, 10)


class LogThroughSinkTests(SynchronousTestCase):
    """
    Tests for L{logThroughSink}, the hook in the twistd plugins.
    """

    def setUp(self) -> None:
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.read = read
        self.stdout = open(write, "w")
        self.addCleanup(self.stdout.close)
        self.system = SimpleNamespace(stdout=self.stdout)
        self.atExit = []

    def install(self, registry=None, **options):
        return logThroughSink(options, registry, self.system, lambda *a: self.atExit.append(a))

    def test_stdout(self) -> None:
        """
        With C{--nodaemon} and C{--logfile=-} or no C{--logfile}, standard
        output becomes a sink writing to the same file, text already
        written to it flushed first, and drained at exit; the registry
        counts the dropped events.
        """
        for logfile in ["-", None]:
            self.system.stdout = self.stdout
            self.stdout.write("before\n")
            registry = CollectorRegistry()
            sink = self.install(registry, nodaemon=True, logfile=logfile)
            self.assertIs(self.system.stdout, sink)
            self.assertEqual(self.atExit[-1], (sink.drain, FLUSH_TIMEOUT))
            self.assertEqual(registry.get_sample_value("log_lines_dropped_total"), 0.0)
            sink.write("after\n")
            self.assertEqual(readUntil(self.read, re.compile(b"after\n")), b"before\nafter\n")

    def test_elsewhere(self) -> None:
        """
        A daemon, a log file, syslog or a custom observer keep the log as
        twistd makes it.
        """
        for options in [
            dict(nodaemon=False, logfile=None),
            dict(nodaemon=True, logfile="meshproxy.log"),
            dict(nodaemon=True, logfile="-", syslog=True),
            dict(nodaemon=True, logfile="-", logger=object),
        ]:
            self.assertIsNone(self.install(**options), options)
            self.assertIs(self.system.stdout, self.stdout)
        self.assertEqual(self.atExit, [])


class _Malformed(Protocol):
    """
    Sends a request the proxy refuses (and logs), and waits for the close.

    @ivar answer: fires with what the proxy answered, once it closes.
    """

    def __init__(self) -> None:
        self.answer: Deferred[bytes] = Deferred()
        self._received = b""

    def connectionMade(self) -> None:
        self.transport.write(b"GET / HTTP/1.1\r\nHost: web\r\nbad header line\r\n\r\n")

    def dataReceived(self, data: bytes) -> None:
        self._received += data

    def connectionLost(self, reason) -> None:
        self.answer.callback(self._received)


class StalledLogProcessTests(TestCase):
    """
    A real C{twistd -n meshproxy --logfile=-} whose standard output nobody
    reads keeps serving.
    """

    timeout = 120
    _log = Logger()

    #: The malformed requests sent, each logged by the proxy.
    requests = 3000
    #: How many are in flight at once.
    concurrency = 20

    async def test_floodWhileLogStalled(self) -> None:
        """
        While the log pipe is not read, a flood of malformed requests (one
        log line each, several times what the pipe and the queue hold) is
        answered, then a good request is answered at once and C{/live}
        answers; C{/metrics} counts the dropped lines.  Once the pipe is
        read again the log says how many were dropped, and the proxy stops
        cleanly with its last line written.
        """
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(Named(b"hello")))
        self.addCleanup(port.stopListening)
        listen = freePort()
        proxy = await Proxy(self, upstream(listen, "web", [port.getHost().port])).start()
        # From here on the test reads nothing of the proxy's output.
        proxy.process.pauseProducing()

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listen)
        answers: list[bytes] = []

        async def client(count: int) -> None:
            for _ in range(count):
                malformed = _Malformed()
                await connectProtocol(endpoint, malformed)
                answers.append(await malformed.answer.addTimeout(10, reactor))

        started = time.monotonic()
        await gatherResults(
            [Deferred.fromCoroutine(client(self.requests // self.concurrency)) for _ in range(self.concurrency)]
        )
        flood = time.monotonic() - started
        self.assertEqual(len(answers), self.requests)
        self.assertEqual({answer.split(b"\r\n")[0] for answer in answers}, {b"HTTP/1.1 400 Bad Request"})

        started = time.monotonic()
        status, body = await get(f"http://127.0.0.1:{listen}/")
        good = time.monotonic() - started
        self.assertEqual((status, body), (200, b"hello"))
        self.assertLess(good, 1.0)
        self.assertEqual((await get(f"http://127.0.0.1:{proxy.adminPort}/live"))[0], 200)
        dropped = (await proxy.samples())("log_lines_dropped_total")
        # The pipe holds 64 KiB and the queue 256 KiB of lines of about 170
        # bytes: at least a third of 3000 are dropped.
        self.assertGreater(dropped, self.requests // 3)

        proxy.process.resumeProducing()
        deadline = reactor.seconds() + 15
        while not NOTICE.search(proxy.collector.output):
            self.assertLess(reactor.seconds(), deadline, proxy.output[-2000:])
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sum(int(n) for n in NOTICE.findall(proxy.collector.output)), dropped)
        logged = proxy.output.count("Malformed request from")
        self.assertEqual(logged + dropped, self.requests)
        await proxy.stop()
        self.assertTrue(proxy.output.endswith("Server Shut Down.\n"), proxy.output[-500:])
        report = (
            f"{self.requests} malformed requests in {flood:.2f}s: {logged} lines logged, {dropped:g} dropped"
            f" (queue {QUEUE_LIMIT // 1024} KiB); the good request took {good * 1000:.1f} ms"
        )
        self._log.info("{report}", report=report)
