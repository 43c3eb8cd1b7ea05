"""
Tests for L{meshproxy.detect}.

The ClientHellos in C{fixtures/} were captured from real clients with
C{fixtures/capture_clienthello.py}; its docstring says how.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.detect import (
    HTTP1,
    HTTP2,
    RESULTS,
    TLS,
    Classifier,
    DetectingFactory,
    DetectingProtocol,
    Opaque,
    Verdict,
)

_FIXTURES = FilePath(__file__).sibling("fixtures")
_OPENSSL = _FIXTURES.child("clienthello-openssl.bin").getContent()
_CURL = _FIXTURES.child("clienthello-curl.bin").getContent()
_NO_SNI = _FIXTURES.child("clienthello-nosni.bin").getContent()
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_VERDICT_TYPES = (TLS, HTTP2, HTTP1, Opaque)


def _vector(lengthSize: int, data: bytes) -> bytes:
    return len(data).to_bytes(lengthSize, "big") + data


def _extension(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + _vector(2, body)


def _serverName(name: bytes) -> bytes:
    return _extension(0, _vector(2, b"\x00" + _vector(2, name)))


def _alpn(*names: bytes) -> bytes:
    return _extension(16, _vector(2, b"".join(_vector(1, name) for name in names)))


def _handshake(extensionBlock: bytes, handshakeType: int = 1) -> bytes:
    """
    @param extensionBlock: The extensions vector, length included, so that
        tests can make its length lie.
    @return: A ClientHello handshake message, header included.
    """
    body = (
        b"\x03\x03"
        + bytes(32)
        + _vector(1, bytes(32))
        + _vector(2, b"\x13\x01\x13\x02")
        + _vector(1, b"\x00")
        + extensionBlock
    )
    return bytes([handshakeType]) + _vector(3, body)


def _records(
    handshake: bytes, size: int = 2**14, version: bytes = b"\x03\x03"
) -> bytes:
    """
    Wrap handshake bytes in handshake records of at most C{size} bytes each.
    """
    return b"".join(
        b"\x16" + version + _vector(2, handshake[i : i + size])
        for i in range(0, len(handshake), size)
    )


def _hello(*extensions: bytes) -> bytes:
    return _records(_handshake(_vector(2, b"".join(extensions))))


def _classify(*chunks: bytes, maxBytes: int = 8192) -> Verdict | None:
    """
    Feed chunks to a new classifier, checking that none gives a verdict
    before the last.

    @return: The verdict of the last chunk.
    """
    classifier = Classifier(maxBytes)
    for chunk in chunks[:-1]:
        assert classifier.feed(chunk) is None, chunk
    return classifier.feed(chunks[-1])


class ClientHelloTests(SynchronousTestCase):
    """
    TLS detection, with real ClientHellos and crafted ones.
    """

    _expected = {
        _OPENSSL: TLS("web.prod.mesh.local", ("h2", "http/1.1")),
        _CURL: TLS("web.prod.mesh.local", ("h2", "http/1.1")),
        _NO_SNI: TLS(None, ()),
    }

    def test_everySplit(self) -> None:
        """
        A real ClientHello split in two at any point gives its SNI and ALPN
        once the last byte arrives.
        """
        for hello, expected in self._expected.items():
            for split in range(1, len(hello)):
                self.assertEqual(_classify(hello[:split], hello[split:]), expected)

    def test_byteByByte(self) -> None:
        """
        A real ClientHello read one byte at a time gives its SNI and ALPN.
        """
        for hello, expected in self._expected.items():
            chunks = [hello[i : i + 1] for i in range(len(hello))]
            self.assertEqual(_classify(*chunks), expected)

    def test_fragmentedRecords(self) -> None:
        """
        A ClientHello spread over several records, of record version TLS 1.0
        or TLS 1.2, is reassembled.
        """
        handshake = _OPENSSL[5:]
        self.assertEqual(len(handshake), int.from_bytes(_OPENSSL[3:5], "big"))
        for size, version in [(200, b"\x03\x01"), (7, b"\x03\x03"), (1, b"\x03\x01")]:
            records = _records(handshake, size, version)
            self.assertEqual(_classify(records), self._expected[_OPENSSL])
            chunks = [records[i : i + 3] for i in range(0, len(records), 3)]
            self.assertEqual(_classify(*chunks), self._expected[_OPENSSL])

    def test_followingBytes(self) -> None:
        """
        Bytes after the ClientHello do not matter: the verdict is given as
        soon as the ClientHello is complete.
        """
        self.assertEqual(_classify(_CURL + b"\x17\x03\x03"), self._expected[_CURL])

    def test_noExtensions(self) -> None:
        """
        A ClientHello without extensions, as TLS 1.2 allows, has no SNI and
        no ALPN.
        """
        self.assertEqual(_classify(_records(_handshake(b""))), TLS(None, ()))

    def test_greaseAndCase(self) -> None:
        """
        GREASE extensions are skipped, GREASE ALPN values left out, and the
        host name lower-cased.
        """
        hello = _hello(
            _extension(0x0A0A, b""),
            _serverName(b"Web.Prod.Mesh.Local"),
            _alpn(b"\x1a\x1a", b"h2"),
            _extension(0xFAFA, b"\x00"),
        )
        self.assertEqual(_classify(hello), TLS("web.prod.mesh.local", ("h2",)))

    def assertNoMatch(self, data: bytes, detail: str) -> None:
        """
        Assert that C{data} is opaque because of C{detail}, however it is
        split into reads.
        """
        for split in range(1, len(data) + 1):
            verdict = Classifier().feed(data[:split]) or Classifier().feed(data)
            self.assertEqual(verdict.reason, "no-match")
            self.assertIn(detail, verdict.detail)

    def test_truncatedExtensionBlock(self) -> None:
        """
        An extension block whose length runs past the end of the message is
        malformed.
        """
        extensions = _serverName(b"a.example")
        hello = _records(_handshake(_vector(2, extensions)[:-3]))
        self.assertNoMatch(hello, "extensions overruns")

    def test_extensionOverrun(self) -> None:
        """
        An extension whose length runs past the end of the extension block
        is malformed.
        """
        extension = _serverName(b"a.example")
        lying = extension[:2] + b"\x01\x00" + extension[4:]
        self.assertNoMatch(_hello(lying), "extension 0 overruns")

    def test_serverNameListLies(self) -> None:
        """
        A server name list whose length disagrees with its extension's is
        malformed, whether longer or shorter.
        """
        entry = b"\x00" + _vector(2, b"a.example")
        longer = _extension(0, (len(entry) + 1).to_bytes(2, "big") + entry)
        shorter = _extension(0, (len(entry) - 1).to_bytes(2, "big") + entry)
        self.assertNoMatch(_hello(longer), "server name list overruns")
        self.assertNoMatch(_hello(shorter), "after the server name list")

    def test_duplicateExtension(self) -> None:
        """
        Two extensions of one type are malformed.
        """
        self.assertNoMatch(_hello(_alpn(b"h2"), _alpn(b"h2")), "duplicate extension 16")

    def test_badHostNames(self) -> None:
        """
        A host name that is not ASCII, not a DNS name, or an IP address is
        malformed.
        """
        self.assertNoMatch(_hello(_serverName("bücher.example".encode())), "ASCII")
        for name in [
            b"",
            b"a..example",
            b"a.example.",
            b"-a.example",
            b"a_b.example",
            b"a" * 64 + b".example",
            b"10.0.0.1",
            b"::1",
            b"a\x00.example",
        ]:
            self.assertNoMatch(_hello(_serverName(name)), "not a DNS name")

    def test_twoHostNames(self) -> None:
        """
        More than one host name, or none, is malformed.
        """
        entry = b"\x00" + _vector(2, b"a.example")
        self.assertNoMatch(_hello(_extension(0, _vector(2, entry * 2))), "2 host names")
        self.assertNoMatch(_hello(_extension(0, _vector(2, b""))), "0 host names")

    def test_emptyALPN(self) -> None:
        """
        An empty ALPN list or protocol name is malformed.
        """
        self.assertNoMatch(_hello(_alpn()), "empty ALPN protocol list")
        self.assertNoMatch(_hello(_alpn(b"h2", b"")), "empty ALPN protocol")

    def test_notClientHello(self) -> None:
        """
        A handshake message other than ClientHello is not detected as TLS.
        """
        serverHello = _records(_handshake(b"", handshakeType=2))
        self.assertNoMatch(serverHello, "handshake type 2")

    def test_recordVersion(self) -> None:
        """
        Record versions other than TLS 1.0 and 1.2 are refused.
        """
        for version in [b"\x03\x00", b"\x03\x02", b"\x03\x04", b"\x02\x00"]:
            record = _records(_OPENSSL[5:], version=version)
            self.assertNoMatch(record, "record version")

    def test_zeroLengthRecord(self) -> None:
        """
        A zero-length handshake record is refused.
        """
        self.assertNoMatch(b"\x16\x03\x01\x00\x00" + _OPENSSL, "record length 0")

    def test_otherRecordBetweenFragments(self) -> None:
        """
        A non-handshake record between the fragments of a ClientHello is
        refused.
        """
        records = _records(_OPENSSL[5:], 100)
        alert = b"\x15\x03\x03\x00\x02\x01\x00"
        self.assertNoMatch(records[:105] + alert + records[105:], "record type 21")


class PropertyTests(SynchronousTestCase):
    """
    Whatever the bytes and however they are split, the classifier does not
    raise, decides the same, and is decided by the byte cap.
    """

    def assertConsistent(self, data: bytes, splits: list[int], maxBytes: int) -> None:
        whole = Classifier(maxBytes)
        wholeVerdict = whole.feed(data)
        pieces = Classifier(maxBytes)
        bounds = sorted({0, len(data), *(split % (len(data) + 1) for split in splits)})
        for start, end in zip(bounds, bounds[1:]):
            verdict = pieces.feed(data[start:end])
            if verdict is not None:
                # A verdict on a prefix is certain: all the bytes agree.
                self.assertEqual(verdict, wholeVerdict)
                self.assertEqual(pieces.buffered, data[:end])
                return
        self.assertIsNone(wholeVerdict)
        self.assertLess(len(data), maxBytes)
        self.assertIsInstance(pieces.timeout(), _VERDICT_TYPES)
        self.assertIsInstance(pieces.closed(), _VERDICT_TYPES)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=600),
            st.binary(max_size=600).map(lambda data: b"\x16\x03\x01" + data),
        ),
        st.lists(st.integers(min_value=0), max_size=6),
    )
    def test_randomBytes(self, data: bytes, splits: list[int]) -> None:
        self.assertConsistent(data, splits, 512)

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from([_OPENSSL, _CURL, _NO_SNI]),
        st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
        st.integers(min_value=0),
        st.lists(st.integers(min_value=0), max_size=4),
    )
    def test_mutatedClientHello(
        self,
        hello: bytes,
        mutations: list[tuple[int, int]],
        cut: int,
        splits: list[int],
    ) -> None:
        mutated = bytearray(hello)
        for position, value in mutations:
            mutated[position % len(mutated)] = value
        self.assertConsistent(bytes(mutated[: cut % (len(mutated) + 1)]), splits, 8192)


class PlaintextTests(SynchronousTestCase):
    """
    HTTP/2, HTTP/1 and everything else.
    """

    def assertEverySplit(self, data: bytes, expected: object) -> None:
        for split in range(1, len(data)):
            self.assertEqual(_classify(data[:split], data[split:]), expected)

    def test_preface(self) -> None:
        """
        The HTTP/2 connection preface is HTTP/2, in one read or two.
        """
        self.assertEqual(_classify(_PREFACE), HTTP2())
        self.assertEverySplit(_PREFACE, HTTP2())
        self.assertEqual(_classify(_PREFACE + b"\x00\x00\x00\x04"), HTTP2())

    def test_requestLines(self) -> None:
        """
        A request line in origin, absolute, authority or asterisk form, for
        HTTP/1.1 or 1.0, is HTTP/1, once its CRLF arrives.
        """
        for line, parts in [
            (b"GET /a?q=1 HTTP/1.1", (b"GET", b"/a?q=1", b"HTTP/1.1")),
            (b"GET http://web/ HTTP/1.1", (b"GET", b"http://web/", b"HTTP/1.1")),
            (b"CONNECT web:443 HTTP/1.1", (b"CONNECT", b"web:443", b"HTTP/1.1")),
            (b"OPTIONS * HTTP/1.0", (b"OPTIONS", b"*", b"HTTP/1.0")),
            (b"M-SEARCH * HTTP/1.1", (b"M-SEARCH", b"*", b"HTTP/1.1")),
        ]:
            self.assertEverySplit(line + b"\r\n", HTTP1(*parts))
            self.assertEqual(_classify(line + b"\r\nHost: web\r\n\r\n"), HTTP1(*parts))

    def test_garbageAtOnce(self) -> None:
        """
        A first byte that begins no known protocol is opaque at once.
        """
        for first in [b"\x00", b"g", b"*", b" ", b"\x17", b"\xff"]:
            self.assertEqual(_classify(first), Opaque("no-match"))

    def test_notARequestLine(self) -> None:
        """
        Bytes stop being a request line as soon as they cannot become one.
        """
        for data in [
            b"SSH-2.0-OpenSSH_9.2\r",
            b"GET/",
            b"\r\r",
            b"\nget / HTTP/1.1",
        ]:
            self.assertEqual(_classify(data), Opaque("no-match"), data)

    def test_lenientRequestLines(self) -> None:
        """
        Anything that begins like an HTTP/1 request is HTTP/1 at the end of
        its first line, however wrong the line: the strict parser then
        refuses it with a 400, where an opaque relay would hand it to an
        application that might parse it, forged headers and all.
        """
        for data, expected in [
            (b"GET  / HTTP/1.1\r\n", HTTP1(b"GET", b"", b"/ HTTP/1.1")),
            (b"GET / HTTP/2\r\n", HTTP1(b"GET", b"/", b"HTTP/2")),
            (b"GET / HTTP/1.1\n", HTTP1(b"GET", b"/", b"HTTP/1.1")),
            (b"GET / HTTP/1.1 \r\n", HTTP1(b"GET", b"/", b"HTTP/1.1 ")),
            (b"\r\nGET / HTTP/1.1\r\n", HTTP1(b"GET", b"/", b"HTTP/1.1")),
            (b"\n\nGET / HTTP/1.1\r\n", HTTP1(b"GET", b"/", b"HTTP/1.1")),
            (b"GET\t/ HTTP/1.1\r\n", HTTP1(b"GET", b"/", b"HTTP/1.1")),
        ]:
            self.assertEverySplit(data, expected)
        # Not quite the HTTP/2 preface.
        self.assertEqual(
            _classify(b"PRI * HTTP/2.0\r\n\r\nXX"), HTTP1(b"PRI", b"*", b"HTTP/2.0")
        )

    def test_byteCap(self) -> None:
        """
        Reaching the byte cap without a verdict is opaque, even if the
        bytes would have decided later or within the same read; but a
        request line longer than the cap is HTTP/1, for the parser to
        refuse with 414 rather than relay unchecked.
        """
        line = b"GET /" + b"a" * 100 + b" HTTP/1.1\r\n"
        truncated = HTTP1(b"GET", line[4:64], b"")
        self.assertEqual(_classify(line, maxBytes=64), truncated)
        self.assertEqual(_classify(line[:63], line[63:], maxBytes=64), truncated)
        self.assertEqual(_classify(b"A" * 100, maxBytes=64), Opaque("byte-cap"))
        self.assertEqual(_classify(_CURL[:100], maxBytes=100), Opaque("byte-cap"))
        self.assertEqual(
            _classify(line, maxBytes=len(line)),
            HTTP1(b"GET", line[4:-11], b"HTTP/1.1"),
        )

    def test_timeout(self) -> None:
        """
        On timeout, a request line begun is HTTP/1 and anything else
        undecided is opaque.
        """
        for data, expected in [
            (b"GET / HTTP/1.1", HTTP1(b"GET", b"/", b"HTTP/1.1")),
            (b"GET / HTTP/1.0\r", HTTP1(b"GET", b"/", b"HTTP/1.0")),
            (b"GET / HTTP/1.", HTTP1(b"GET", b"/", b"HTTP/1.")),
            (b"GET", Opaque("timeout")),
            (_OPENSSL[:-1], Opaque("timeout")),
            (_PREFACE[:10], Opaque("timeout")),
            (b"", Opaque("timeout")),
        ]:
            classifier = Classifier()
            self.assertIsNone(classifier.feed(data))
            self.assertEqual(classifier.timeout(), expected)

    def test_closed(self) -> None:
        """
        A half-close decides as a timeout does, for reason C{"closed"}.
        """
        classifier = Classifier()
        classifier.feed(b"\x16\x03")
        self.assertEqual(classifier.closed(), Opaque("closed"))
        classifier = Classifier()
        classifier.feed(b"HEAD / HTTP/1.1")
        self.assertEqual(classifier.closed(), HTTP1(b"HEAD", b"/", b"HTTP/1.1"))


class VerdictTests(SynchronousTestCase):
    """
    Verdicts' metric labels.
    """

    def test_results(self) -> None:
        """
        Each verdict's C{result} is one of L{RESULTS}, and together they
        cover it.
        """
        results = {
            TLS(None).result: "tls",
            HTTP2().result: "h2",
            HTTP1(b"GET", b"/", b"HTTP/1.1").result: "http1",
            Opaque("no-match").result: "opaque",
            Opaque("byte-cap").result: "opaque",
            Opaque("closed").result: "opaque",
            Opaque("timeout").result: "timeout",
            Opaque("skipped").result: "skipped",
        }
        self.assertEqual(set(results), RESULTS)
        for result, expected in results.items():
            self.assertEqual(result, expected)

    def test_unknownReason(self) -> None:
        """
        L{Opaque} refuses a reason it does not know.
        """
        self.assertRaises(ValueError, Opaque, "bored")


class _Recorder(Protocol):
    """
    Record what a protocol is told, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def makeConnection(self, transport: object) -> None:
        self.events.append(("makeConnection", transport))

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("dataReceived", data))

    def connectionLost(self, reason: Failure) -> None:
        self.events.append(("connectionLost", reason))


@implementer(IHalfCloseableProtocol)
class _HalfCloseableRecorder(_Recorder):
    def readConnectionLost(self) -> None:
        self.events.append(("readConnectionLost",))

    def writeConnectionLost(self) -> None:
        self.events.append(("writeConnectionLost",))


class DetectingProtocolTests(SynchronousTestCase):
    """
    Hand-over from L{DetectingProtocol} to the chosen protocol.
    """

    def connect(self, nextProtocol: _Recorder | None = None) -> None:
        self.clock = Clock()
        self.verdicts: list[object] = []
        self.next = _Recorder() if nextProtocol is None else nextProtocol

        def chooser(verdict: object) -> _Recorder:
            self.verdicts.append(verdict)
            return self.next

        peer = IPv4Address("TCP", "10.0.0.7", 40000)
        self.factory = DetectingFactory(chooser, self.clock, 5.0, 1024)
        self.protocol = self.factory.buildProtocol(peer)
        self.transport = StringTransport(peerAddress=peer)
        self.protocol.makeConnection(self.transport)

    def test_interfaces(self) -> None:
        """
        The factory builds L{DetectingProtocol}s, which are half-closeable.
        """
        self.connect()
        self.assertIsInstance(self.protocol, DetectingProtocol)
        self.assertIs(self.protocol.factory, self.factory)
        verifyObject(IHalfCloseableProtocol, self.protocol)

    def test_replay(self) -> None:
        """
        On a verdict, the chosen protocol gets the transport, then the bytes
        read so far, once, then later bytes as they arrive; the timer is
        cancelled.
        """
        self.connect()
        self.protocol.dataReceived(b"GET / HT")
        self.assertEqual(self.verdicts, [])
        self.protocol.dataReceived(b"TP/1.1\r\nHost")
        self.assertEqual(self.verdicts, [HTTP1(b"GET", b"/", b"HTTP/1.1")])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.protocol.dataReceived(b": web\r\n\r\n")
        self.assertEqual(
            self.next.events,
            [
                ("makeConnection", self.transport),
                ("dataReceived", b"GET / HTTP/1.1\r\nHost"),
                ("dataReceived", b": web\r\n\r\n"),
            ],
        )
        self.assertEqual(self.next.events[0][1].getPeer().host, "10.0.0.7")

    def test_tls(self) -> None:
        """
        A real ClientHello read in pieces is handed over whole.
        """
        self.connect()
        for i in range(0, len(_CURL), 100):
            self.protocol.dataReceived(_CURL[i : i + 100])
        self.assertEqual(
            self.verdicts, [TLS("web.prod.mesh.local", ("h2", "http/1.1"))]
        )
        self.assertEqual(self.next.events[1], ("dataReceived", _CURL))

    def test_malformedHelloLogged(self) -> None:
        """
        A ClientHello that is refused is relayed as opaque, and why it was
        refused is logged with the peer: the only place that knows.
        """
        self.connect()
        # The extension block claims more bytes than the hello holds.
        hello = bytearray(_OPENSSL)
        extensions = 5 + 4 + 2 + 32
        extensions += 1 + hello[extensions]
        extensions += 2 + int.from_bytes(hello[extensions : extensions + 2], "big")
        extensions += 1 + hello[extensions]
        hello[extensions : extensions + 2] = (0xFFFF).to_bytes(2, "big")
        with capturedLogs() as events:
            self.protocol.dataReceived(bytes(hello))
        [verdict] = self.verdicts
        self.assertEqual(verdict.reason, "no-match")
        [event] = events
        self.assertEqual(event["peer"].host, "10.0.0.7")
        self.assertEqual(event["detail"], verdict.detail)
        self.assertIn("Malformed TLS ClientHello", formatEvent(event))

    def test_timeout(self) -> None:
        """
        When the detect timeout expires, the connection is handed over as
        opaque with the bytes read so far.
        """
        self.connect()
        self.protocol.dataReceived(b"\x16\x03\x01")
        self.clock.advance(4.9)
        self.assertEqual(self.verdicts, [])
        self.clock.advance(0.1)
        self.assertEqual(self.verdicts, [Opaque("timeout")])
        self.assertEqual(self.next.events[1:], [("dataReceived", b"\x16\x03\x01")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timeoutWithoutBytes(self) -> None:
        """
        A client that sends nothing, as for a server-speaks-first protocol,
        is handed over without any C{dataReceived}.
        """
        self.connect()
        self.clock.advance(5)
        self.assertEqual(self.next.events, [("makeConnection", self.transport)])

    def test_lostDuringDetection(self) -> None:
        """
        A connection lost before a verdict chooses nothing and leaves no
        timer behind.
        """
        self.connect()
        self.protocol.dataReceived(b"GET")
        self.protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.verdicts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connectionLostForwarded(self) -> None:
        """
        After the hand-over, C{connectionLost} is forwarded.
        """
        self.connect()
        self.protocol.dataReceived(_PREFACE)
        reason = Failure(ConnectionDone())
        self.protocol.connectionLost(reason)
        self.assertEqual(self.next.events[-1], ("connectionLost", reason))

    def test_halfCloseDuringDetection(self) -> None:
        """
        A half-close before a verdict decides it, and is then forwarded to
        a half-closeable protocol, as is the write side's.
        """
        self.connect(_HalfCloseableRecorder())
        self.protocol.dataReceived(b"GET / HTTP/1.0")
        self.protocol.readConnectionLost()
        self.protocol.writeConnectionLost()
        self.assertEqual(self.verdicts, [HTTP1(b"GET", b"/", b"HTTP/1.0")])
        self.assertEqual(
            self.next.events[1:],
            [
                ("dataReceived", b"GET / HTTP/1.0"),
                ("readConnectionLost",),
                ("writeConnectionLost",),
            ],
        )
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertFalse(self.transport.disconnecting)

    def test_halfCloseNotSupported(self) -> None:
        """
        A half-close after the hand-over to a protocol that cannot
        half-close closes the connection.
        """
        self.connect()
        self.protocol.dataReceived(_PREFACE)
        self.protocol.readConnectionLost()
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(len(self.next.events), 2)
