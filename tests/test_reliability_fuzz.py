"""
Property-based fuzzing of the parsers that read what peers and operators
send: the HTTP/1 codec (L{meshproxy.http.h1}), the HTTP/2 header mapping
(L{meshproxy.http.h2}) and the configuration loader
(L{meshproxy.config}).

Each property runs a bounded number of examples (a few seconds in all), as
part of the suite; C{tests/fuzz/} holds coverage-guided atheris targets for
longer runs.  The protocol detector, the join tokens and the issuer's CSR
checks have their own properties in C{tests.test_detect},
C{tests.test_identity_tokens} and C{tests.test_identity_issuer}.
"""

from __future__ import annotations

import tomllib

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ConfigError, Reader, load
from meshproxy.http import h2
from meshproxy.http.h1 import (
    DATA,
    END,
    ERROR,
    HEAD,
    INFORMATIONAL,
    UPGRADE,
    ProtocolError,
    RequestReader,
    ResponseReader,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Valid requests the mutations start from.
REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: web\r\nAccept: */*\r\nConnection: keep-alive, x-drop\r\nX-Drop: 1\r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nT: x\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\nGET /2 HTTP/1.1\r\nHost: web\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nframes",
    b"CONNECT web:443 HTTP/1.1\r\nHost: web:443\r\n\r\ntunnel",
    b"GET http://web/x HTTP/1.1\r\nHost: web\r\nTE: trailers\r\n\r\n",
]

#: Valid responses the mutations start from.
RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
]

#: Fields that must never reach the next hop.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}


#: One edit for L{mutate}.
_EDIT = st.tuples(st.integers(0, 2), st.integers(min_value=0), st.integers(0, 255))

#: Where to split bytes into reads, for L{pieces}.
_SPLITS = st.lists(st.integers(min_value=0), max_size=6)


def mutate(data: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """
    Apply C{edits}, (kind, position, byte) triples, to C{data}: replace,
    insert or delete one byte.
    """
    mutated = bytearray(data)
    for kind, position, value in edits:
        position %= len(mutated) + 1
        if kind == 0 and position < len(mutated):
            mutated[position] = value
        elif kind == 1:
            mutated.insert(position, value)
        elif position < len(mutated):
            del mutated[position]
    return bytes(mutated)


def pieces(data: bytes, splits: list[int]) -> list[bytes]:
    """
    C{data} cut at C{splits} (taken modulo its length).
    """
    bounds = sorted({0, len(data), *(split % (len(data) + 1) for split in splits)})
    return [data[start:end] for start, end in zip(bounds, bounds[1:])] or [b""]


def outcome(reader, chunks: list[bytes]) -> list:
    """
    Feed C{chunks} to C{reader} as a server would (stopping at an error or
    an upgrade) and describe the result independently of where the reads
    fell: heads as tuples, the body bytes of each message joined, an error
    as its status.  Every event must be one the codec documents.
    """
    result: list = []
    for chunk in chunks:
        for kind, value in reader.feed(chunk):
            if kind in (HEAD, INFORMATIONAL):
                assert type(value).__name__ in ("RequestHead", "ResponseHead"), value
                result.append((kind, _describe(value)))
            elif kind == DATA:
                assert isinstance(value, bytes) and value, value
                if result and result[-1][0] == DATA:
                    result[-1] = (DATA, result[-1][1] + value)
                else:
                    result.append((DATA, value))
            elif kind == END:
                result.append((END, value))
            elif kind == UPGRADE:
                result.append((UPGRADE,))
                return result
            elif kind == ERROR:
                assert isinstance(value, ProtocolError), value
                assert value.status in (400, 414, 431, 502), value.status
                result.append((ERROR, value.status))
                return result
            else:
                raise AssertionError(f"unknown event {kind!r}")
    return result


def _describe(head) -> tuple:
    fields = tuple(head.headers)
    for name, _ in fields:
        assert name.lower() not in HOP_BY_HOP, (name, head)
    if hasattr(head, "method"):
        assert not (head.chunked and head.contentLength is not None), head
        if head.version == b"1.1":
            assert head.host is not None, head
        return (head.method, head.target, head.version, fields, head.host, head.keepAlive, head.contentLength,
                head.chunked, head.upgrade)
    return (head.status, head.reason, fields, head.keepAlive, head.contentLength, head.chunked, head.upgrade)


class H1FuzzTests(SynchronousTestCase):
    """
    Whatever bytes arrive, the HTTP/1 readers give only their documented
    events, and where the reads fall never changes what they give.
    """

    def assertSplitInvariant(self, make, data: bytes, splits: list[int]) -> list:
        whole = outcome(make(), [data])
        byPieces = outcome(make(), pieces(data, splits))
        byteByByte = outcome(make(), [data[i : i + 1] for i in range(len(data))] or [b""])
        self.assertEqual(byPieces, whole, data[:300])
        self.assertEqual(byteByByte, whole, data[:300])
        return whole

    @FUZZ
    @given(st.binary(max_size=400), _SPLITS)
    def test_requestRandomBytes(self, data, splits):
        self.assertSplitInvariant(RequestReader, data, splits)

    @FUZZ
    @given(
        st.sampled_from(REQUESTS),
        st.lists(_EDIT, max_size=4),
        _SPLITS,
    )
    def test_requestMutations(self, request, edits, splits):
        self.assertSplitInvariant(RequestReader, mutate(request, edits), splits)

    @FUZZ
    @given(st.binary(max_size=400), _SPLITS)
    def test_responseRandomBytes(self, data, splits):
        self.assertSplitInvariant(ResponseReader, b"HTTP/1.1 " + data, splits)

    @FUZZ
    @given(
        st.sampled_from(RESPONSES),
        st.lists(_EDIT, max_size=4),
        _SPLITS,
    )
    def test_responseMutations(self, response, edits, splits):
        self.assertSplitInvariant(ResponseReader, mutate(response, edits), splits)

    def test_largeBodyAfterSplitHead(self):
        """
        Regression (found by the split property): a head cut by a read
        boundary, whose second read also held a body larger than the head
        limit, was refused as "header section too large" (431, or a 502 for
        a response): the read's whole length was counted as head.
        """
        body = b"x" * 70000
        for make, message in [
            (RequestReader, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 70000\r\n\r\n" + body),
            (ResponseReader, b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + body),
        ]:
            self.assertSplitInvariant(make, message, [20])
            self.assertEqual(outcome(make(), [message[:20], message[20:]])[-1], (END, None))

    def test_headCountedOnce(self):
        """
        Regression: a 41 KB head (under the 64 KiB limit) read in 1000-byte
        pieces was counted twice, once by its reads and once by its fields,
        and refused with 431; read at once it was accepted.
        """
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(380))
        request = head + b"\r\n"
        self.assertSplitInvariant(RequestReader, request, list(range(0, len(request), 1000)))
        self.assertEqual(outcome(RequestReader(), pieces(request, list(range(0, len(request), 1000))))[-1], (END, None))

    def test_reasonSplit(self):
        """
        Regression (found by the split property): a reason phrase cut by a
        read boundary kept only its last piece.
        """
        reader = ResponseReader()
        [(kind, head)] = reader.feed(b"HTTP/1.1 404 Not F") + reader.feed(b"ound\r\nContent-Length: 0\r\n\r\n")[:1]
        self.assertEqual((kind, head.reason), (HEAD, b"Not Found"))

    def test_growingFieldBounded(self):
        """
        A field that never ends is refused once the reads inside the head
        pass the limit, however small the reads.
        """
        reader = RequestReader(maxHead=4096)
        data = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * 10000
        self.assertEqual(outcome(reader, pieces(data, list(range(0, len(data), 100))))[-1], (ERROR, 431))


#: Header menu for the framing property: (line, what it is).
_CL_VALUES = [b"3", b"+3", b"3, 3", b"abc", b"-1", b"3 3", b""]
_TE_VALUES = [b"chunked", b"gzip", b"chunked, identity", b"identity", b"gzip, chunked", b"xchunked"]
_DEFECTS = {
    "obs-fold": b"X-Fold: a\r\n b\r\n",
    "NUL": b"X-Nul: a\x00b\r\n",
    "bare LF": b"X-LF: a\nX-Other: b\r\n",
    "CR": b"X-CR: a\rb\r\n",
    "space before colon": b"X-Space : a\r\n",
}


class H1FramingPropertyTests(SynchronousTestCase):
    """
    Requests built from a menu of framing fields (some ambiguous): the
    reader forwards exactly those an independent rule accepts, and refuses
    every other with 400 before giving any head.
    """

    @FUZZ
    @given(
        st.integers(0, 2),
        st.lists(st.sampled_from(_CL_VALUES), max_size=2),
        st.lists(st.sampled_from(_TE_VALUES), max_size=2),
        st.lists(st.sampled_from(sorted(_DEFECTS)), max_size=1),
        st.permutations(range(4)),
        st.lists(st.integers(min_value=0), max_size=5),
    )
    @example(1, [b"3"], [b"chunked"], [], [0, 1, 2, 3], [])
    @example(1, [b"3", b"3"], [], [], [0, 1, 2, 3], [])
    @example(1, [], [b"chunked", b"chunked"], [], [0, 1, 2, 3], [])
    def test_framing(self, hosts, lengths, codings, defects, order, splits):
        groups = [
            [b"Host: web\r\n"] * hosts,
            [b"Content-Length: %s\r\n" % value for value in lengths],
            [b"Transfer-Encoding: %s\r\n" % value for value in codings],
            [_DEFECTS[name] for name in defects],
        ]
        lines = b"".join(b"".join(groups[i]) for i in order)
        acceptable = (
            hosts == 1
            and not defects
            and not (lengths and codings)
            and (not lengths or lengths == [b"3"])
            and (not codings or codings == [b"chunked"])
        )
        body = b"3\r\nabc\r\n0\r\n\r\n" if codings == [b"chunked"] else b"abc" if lengths else b""
        request = b"POST / HTTP/1.1\r\n" + lines + b"\r\n" + body
        result = outcome(RequestReader(), pieces(request, splits))
        kinds = [event[0] for event in result]
        if acceptable:
            self.assertNotIn(ERROR, kinds, (request, result))
            self.assertEqual(kinds[0], HEAD)
            if lengths or codings:
                self.assertEqual(result[1:], [(DATA, b"abc"), (END, None)], request)
        else:
            self.assertEqual(result, [(ERROR, 400)], request)


#: Header names the HTTP/2 mapping treats specially, and some others.
_H2_NAMES = [b":method", b":path", b":authority", b":scheme", b":protocol", b"host", b"te", b"content-length",
             h2.ORIG_PROTO, b"x-a", b"cookie"]


class H2MappingFuzzTests(SynchronousTestCase):
    """
    The HTTP/2 header mapping, given any header list C{h2} could let
    through, refuses with L{ProtocolError} or gives a head an HTTP/1
    upstream can send without ambiguity.
    """

    @FUZZ
    @given(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from(_H2_NAMES), st.binary(min_size=1, max_size=8)),
                st.one_of(st.sampled_from([b"GET", b"CONNECT", b"/", b"web", b"HTTP/1.1", b"HTTP/1.0", b"7", b"x1"]),
                          st.binary(max_size=8)),
            ),
            max_size=8,
        ),
        st.booleans(),
        st.booleans(),
    )
    def test_requestFromHeaders(self, headers, ended, origProto):
        try:
            head = h2.requestFromHeaders(headers, ended, origProto)
        except ProtocolError as e:
            self.assertIn(e.status, (400, 501))
            return
        names = [name for name, _ in head.headers]
        self.assertEqual(names.count(b"host"), 1)
        self.assertEqual(names.count(b"content-length") > 0, head.contentLength is not None)
        self.assertFalse(head.chunked and head.contentLength is not None)
        if not origProto:
            self.assertNotIn(h2.ORIG_PROTO, names)
        if head.version != b"2":
            self.assertNotIn(b"te", names)
        out = h2.requestHeaders(head, head.target or b"/", head.headers)
        self.assertEqual([n for n, _ in out if n == b":authority"], [b":authority"])
        self.assertEqual(dict(out)[b":authority"], head.host)

    @FUZZ
    @given(
        st.lists(
            st.tuples(
                st.one_of(st.sampled_from([b":status", b"content-length", h2.ORIG_PROTO, b"x"]), st.binary(max_size=6)),
                st.one_of(st.sampled_from([b"200", b"99", b"1000", b"5"]), st.binary(max_size=6)),
            ),
            max_size=6,
        ),
        st.booleans(),
    )
    def test_responseFromHeaders(self, headers, ended):
        try:
            head = h2.responseFromHeaders(headers, ended)
        except ProtocolError as e:
            self.assertEqual(e.status, 502)
            return
        self.assertNotIn(h2.ORIG_PROTO, [name for name, _ in head.headers])
        self.assertIsInstance(h2.reasonOf(head.status), bytes)
        h2.responseHeaders(head, b"HTTP/1.1")


#: A valid configuration the text mutations start from.
CONFIG = b"""
[proxy]
identity = "web.prod.mesh.local"
trust_anchors = "ca.pem"
detect_timeout = "10s"

[identity]
cert_file = "cert.pem"
key_file = "key.pem"

[admin]
listen = "tcp:4191:interface=127.0.0.1"

[[inbound]]
listen = "tcp:4143"
app = "127.0.0.1:8080"

[outbound]
listen = "tcp:4140:interface=127.0.0.1"

[[upstreams]]
listen = "tcp:9001:interface=127.0.0.1"
service = "web"

[services.web]
balancer = "p2c-peak-ewma"
authorities = ["web", "web:80"]
endpoints = [{ address = "10.0.0.5:4143", identity = "web.prod.mesh.local", weight = 1, labels = { zone = "a" } }]

[services.api]
discovery = { dns_srv = "_api._tcp.mesh.local", nameserver = "127.0.0.1:53" }
"""

_KEYS = sorted(
    {
        "proxy", "identity", "admin", "inbound", "outbound", "upstreams", "services", "web", "trust_anchors",
        "detect_timeout", "shutdown_grace", "response_timeout", "connect_timeout", "discovery_timeout", "issuer",
        "issuer_identity", "token_file", "cert_file", "key_file", "listen", "shutdown", "app", "opaque", "service",
        "balancer", "authorities", "endpoints", "discovery", "address", "weight", "labels", "file", "dns_srv",
        "nameserver", "etcd", "prefix", "zone", "x",
    }
)

_SCALARS = st.one_of(
    st.sampled_from(["10s", "250ms", "-1s", "tcp:0:interface=127.0.0.1", "systemd:domain=INET:index=0",
                     "127.0.0.1:8080", "web.mesh.local", "ca.pem", "round-robin", "", "\x00", "[::1]:80"]),
    st.text(max_size=10),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=True),
)

_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.sampled_from(_KEYS), children, max_size=4)
    ),
    max_leaves=20,
)

_DOCUMENTS = st.dictionaries(st.sampled_from(_KEYS), _VALUES, max_size=6)


class ConfigFuzzTests(SynchronousTestCase):
    """
    Whatever a configuration file holds, loading it gives a configuration
    or a L{ConfigError} with its reasons, never another exception.
    """

    def setUp(self):
        self.directory = FilePath(self.mktemp())
        self.directory.makedirs()
        for name in ("ca.pem", "cert.pem", "key.pem"):
            self.directory.child(name).setContent(b"")
        self.path = self.directory.child("meshproxy.toml")

    def test_validStart(self):
        self.path.setContent(CONFIG)
        load(self.path)

    @settings(FUZZ, max_examples=200)
    @given(_DOCUMENTS)
    def test_documents(self, document):
        try:
            Reader(self.path).read(document)
        except ConfigError as e:
            self.assertTrue(e.errors if hasattr(e, "errors") else str(e))

    def test_notUTF8(self):
        """
        Regression (found by the mutation property): a file that is not
        UTF-8 escaped as C{UnicodeDecodeError}, a traceback from
        C{meshproxy check} instead of the reason.
        """
        self.path.setContent(b"[proxy]\nidentity = \"\x80\"\n")
        error = self.assertRaises(ConfigError, load, self.path)
        self.assertIn("not UTF-8", str(error))
        self.assertIn(self.path.path, str(error))

    @FUZZ
    @given(st.lists(_EDIT, min_size=1, max_size=6))
    def test_mutatedText(self, edits):
        self.path.setContent(mutate(CONFIG, edits))
        try:
            load(self.path)
        except ConfigError:
            pass

    @FUZZ
    @given(st.text(max_size=200))
    def test_anyText(self, text):
        try:
            document = tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            return
        try:
            Reader(self.path).read(document)
        except ConfigError:
            pass
