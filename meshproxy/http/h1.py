# -*- test-case-name: tests.test_http_h1 -*-
"""
A sans-I/O HTTP/1 codec: bytes in, events out; heads in, bytes to send out.

Parsing is done by C{httptools}, the binding to llhttp (the parser of
Node.js), because it is the fastest parser we measured and because llhttp is
strict where request smuggling lives: it refuses C{Content-Length} together
with C{Transfer-Encoding}, duplicate or non-numeric lengths, a
C{Transfer-Encoding} whose last coding is not C{chunked}, bare LF line ends,
obs-fold, and NUL or CR in field values.  This module adds what llhttp
leaves to its caller:

  - a C{Transfer-Encoding} other than exactly C{chunked} (a proxy that
    removes the header to re-frame the body would silently drop any other
    coding), C{Transfer-Encoding} on HTTP/1.0, a missing or repeated
    C{Host} on HTTP/1.1, and an upgrade request with a body: all 400;
  - limits, because llhttp would buffer a header line of any length: a
    request target over C{maxLine} bytes is 414, a header section over
    C{maxHead} bytes is 431;
  - the removal of hop-by-hop fields (RFC 9110, section 7.6.1): they
    describe one connection and must not be forwarded to the next;
  - trailers, which are dropped: the body is re-framed on each hop and few
    applications read trailers from HTTP/1.

A reader turns every C{feed} into a list of events, C{(kind, value)}
tuples.  llhttp parses every message in the bytes it is given and cannot be
paused between two, so a reader may return the events of several pipelined
requests at once; the server keeps those it cannot act on yet.  A protocol
error becomes a final L{ERROR} event rather than an exception, so the
events of the complete requests before it are not lost.
"""

from __future__ import annotations

from attrs import define
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser

__all__ = [
    "DATA",
    "END",
    "ERROR",
    "HEAD",
    "INFORMATIONAL",
    "UPGRADE",
    "ProtocolError",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "chunk",
    "requestHead",
    "responseHead",
]

#: Event kinds.  C{HEAD}: a L{RequestHead} or L{ResponseHead}.  C{DATA}: a
#: piece of body, unframed.  C{END}: the message is complete; its value is
#: the trailers, a list of fields, or L{None} (always from HTTP/1, whose
#: trailers this codec drops; an HTTP/2 upstream gives them).  C{UPGRADE}:
#: the connection stops being HTTP after the message just ended (a
#: C{CONNECT} or C{Upgrade} request, a 101 response); the value is the bytes
#: that followed the head.  C{INFORMATIONAL}: a 1xx response head other than
#: 101, before the final one.  C{ERROR}: a L{ProtocolError}; the reader is
#: unusable afterwards.
HEAD, DATA, END, UPGRADE, INFORMATIONAL, ERROR = range(6)

#: The end of a chunked body: the last chunk and an empty trailer section.
LAST_CHUNK = b"0\r\n\r\n"

_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
#: Connection options that name no header field.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive", b"upgrade"})


class ProtocolError(Exception):
    """
    A message that must not be forwarded.

    @ivar status: the status code to answer with (400, 414, 431; a bad
        response from an endpoint is a 502 for whoever sent the request).
    @ivar reason: what was wrong, for the log and the
        C{meshproxy-proxy-error} header.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


@define(eq=False)
class RequestHead:
    """
    A request line and header section, checked and stripped of hop-by-hop
    fields.

    @ivar method: e.g. C{b"GET"}.
    @ivar target: the request target as sent, in any form.
    @ivar version: C{b"1.1"} or C{b"1.0"}.
    @ivar headers: the end-to-end fields, C{(name, value)} pairs in their
        order and case, C{Content-Length} included.
    @ivar host: the C{Host} field value, or L{None}.
    @ivar keepAlive: whether the client may send another request on the
        connection after this one (by its version and C{Connection}).
    @ivar contentLength: the body length, or L{None} if the body is chunked
        or absent.
    @ivar chunked: whether the body is chunked.
    @ivar upgrade: the C{Upgrade} value of an upgrade request, else L{None}.
    """

    method: bytes
    target: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    host: bytes | None = None
    keepAlive: bool = True
    contentLength: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None


@define(eq=False)
class ResponseHead:
    """
    A status line and header section, stripped of hop-by-hop fields.

    @ivar status: the status code.
    @ivar reason: the reason phrase.
    @ivar headers: the end-to-end fields, as in L{RequestHead.headers}.
    @ivar keepAlive: whether the server keeps the connection open after.
    @ivar contentLength: the body length, or L{None}.
    @ivar chunked: whether the body is chunked; when neither this nor
        C{contentLength} is set, a body runs until the connection closes.
    @ivar upgrade: the C{Upgrade} value of a 101, else L{None}.
    @ivar final: whether nothing follows the head, not even trailers: an
        HTTP/2 response whose stream ended with its headers, which must
        stay one HEADERS frame when relayed (a gRPC "trailers-only"
        response).
    """

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    keepAlive: bool = True
    contentLength: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None
    final: bool = False


class _Framing:
    """
    What a header section says about its connection and body, read in one
    pass over the fields.

    @ivar headers: the end-to-end fields.
    @ivar host: the C{Host} values.
    @ivar contentLength: the body length, or L{None}.
    @ivar chunked: whether C{Transfer-Encoding: chunked} was given.
    @ivar upgrade: the C{Upgrade} value, if C{Connection} names C{upgrade}.
    """

    __slots__ = ("headers", "hosts", "contentLength", "chunked", "upgrade")

    def __init__(self, fields: list[tuple[bytes, bytes]]) -> None:
        headers = []
        hosts = []
        options: list[bytes] = []
        upgrade = None
        self.contentLength = None
        self.chunked = False
        for name, value in fields:
            lower = name.lower()
            if lower not in _HOP_BY_HOP:
                if lower == b"host":
                    hosts.append(value)
                elif lower == b"content-length":
                    # llhttp has refused anything but one run of digits.
                    self.contentLength = int(value)
                headers.append((name, value))
            elif lower == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise ProtocolError(400, "unsupported transfer-encoding")
                self.chunked = True
            elif lower == b"connection":
                options.extend(option.strip().lower() for option in value.split(b","))
            elif lower == b"upgrade":
                upgrade = value
        named = set(options) - _CONNECTION_OPTIONS
        if named:
            headers = [(name, value) for name, value in headers if name.lower() not in named]
        self.headers = headers
        self.hosts = hosts
        self.upgrade = upgrade if b"upgrade" in options else None


class _Reader:
    """
    What request and response readers share: the llhttp callbacks, limits
    and the conversion of parser failures into L{ERROR} events.

    @ivar _parser: the llhttp parser.
    @ivar _events: the events of the current C{feed}.
    @ivar _fields: the header fields of the message being read.
    @ivar _inHead: whether the head of a message is being read; fields
        that arrive otherwise are trailers.
    @ivar _size: bytes of the complete fields of the current head (or
        trailer section) so far.
    @ivar _raw: bytes of the reads that fell wholly inside the current
        head, which bound a field llhttp has not finished.
    @ivar _error: the error raised from a callback, which llhttp reports
        only as "callback failed".
    """

    def __init__(self, maxLine: int, maxHead: int) -> None:
        self._maxLine = maxLine
        self._maxHead = maxHead
        self._parser = self._newParser()
        self._events: list = []
        self._fields: list[tuple[bytes, bytes]] = []
        self._inHead = False
        self._size = 0
        self._raw = 0
        self._error: ProtocolError | None = None

    def _fail(self, status: int, reason: str) -> ProtocolError:
        self._error = ProtocolError(status, reason)
        return self._error

    @property
    def inHead(self) -> bool:
        """
        Whether a message's head has begun and not yet ended: the server
        times how long a client takes to send its head.
        """
        return self._inHead

    def on_message_begin(self) -> None:
        self._inHead = True
        self._size = 0
        self._raw = 0
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > self._maxHead:
            raise self._fail(431, "header section too large")
        if self._inHead:
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._inHead = False
        # Trailers are counted against the same limit as the head.
        self._size = 0
        self._headComplete(_Framing(self._fields))

    def on_body(self, data: bytes) -> None:
        self._events.append((DATA, data))

    def on_message_complete(self) -> None:
        self._events.append((END, None))

    def feed(self, data: bytes) -> list:
        """
        Parse C{data}, the next bytes of the connection.

        @return: the events, in order.
        """
        events = self._events = []
        wasInHead, fields = self._inHead, self._fields
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            events.append((UPGRADE, data[e.args[0]:]))
        except HttpParserError as e:
            error, self._error = self._error, None
            events.append((ERROR, error or ProtocolError(400, str(e))))
        else:
            if wasInHead and self._inHead and self._fields is fields:
                # A field llhttp has not finished grows in its buffer, unseen
                # by on_header: bound it by the reads that fell wholly inside
                # one head (on_message_begin makes a new field list).  Only
                # those: counting a read that also held the end of a head and
                # a body, or another message, would refuse a small head by
                # where the reads fell.
                self._raw += len(data)
                if self._raw > self._maxHead:
                    events.append((ERROR, ProtocolError(431, "header section too large")))
        return events


class RequestReader(_Reader):
    """
    Reads the requests of one client connection.

    @ivar _url: the pieces of the request target read so far.
    """

    def __init__(self, maxLine: int = 8192, maxHead: int = 65536) -> None:
        """
        @param maxLine: the longest request target accepted; nginx and
            HAProxy both answer 414 around 8 KiB.
        @param maxHead: the largest header section accepted.
        """
        super().__init__(maxLine, maxHead)
        self._url: list[bytes] = []
        self._urlSize = 0

    def _newParser(self):
        return HttpRequestParser(self)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url = []
        self._urlSize = 0

    def on_url(self, url: bytes) -> None:
        # llhttp hands the target over in as many pieces as it arrived in.
        self._urlSize += len(url)
        if self._urlSize > self._maxLine:
            raise self._fail(414, "request target too long")
        self._url.append(url)

    def _headComplete(self, framing: _Framing) -> None:
        parser = self._parser
        version = parser.get_http_version().encode()
        if version == b"1.0":
            if framing.chunked:
                raise self._fail(400, "transfer-encoding in an HTTP/1.0 request")
        elif len(framing.hosts) != 1:
            raise self._fail(400, "an HTTP/1.1 request needs exactly one host")
        if framing.upgrade is not None and (framing.chunked or framing.contentLength):
            raise self._fail(400, "upgrade request with a body")
        url = self._url
        self._events.append(
            (
                HEAD,
                RequestHead(
                    parser.get_method(),
                    url[0] if len(url) == 1 else b"".join(url),
                    version,
                    framing.headers,
                    framing.hosts[0] if framing.hosts else None,
                    parser.should_keep_alive(),
                    framing.contentLength,
                    framing.chunked,
                    framing.upgrade,
                ),
            )
        )


class ResponseReader(_Reader):
    """
    Reads the responses of one connection to an endpoint.

    llhttp does not know which request a response answers, so the caller
    says, with L{expectBodiless}, when the next one must have no body
    whatever its header says (the answer to a C{HEAD}).  The reader then
    ends that response at its head and starts a fresh parser for the next.

    @ivar _bodiless: whether the next final response has no body.
    @ivar _ended: whether a bodiless response was ended early; llhttp's own
        end of it is ignored and any body bytes are an error.
    @ivar _informational: whether the message being read is a 1xx.
    """

    def __init__(self, maxLine: int = 8192, maxHead: int = 65536) -> None:
        super().__init__(maxLine, maxHead)
        self._reason = b""
        self._bodiless = False
        self._ended = False
        self._informational = False

    def _newParser(self):
        return HttpResponseParser(self)

    def expectBodiless(self) -> None:
        """
        The next final response answers a C{HEAD} request.
        """
        self._bodiless = True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        # llhttp hands the reason over in as many pieces as it arrived in.
        self._reason += reason

    def _headComplete(self, framing: _Framing) -> None:
        parser = self._parser
        status = parser.get_status_code()
        head = ResponseHead(
            status,
            self._reason,
            framing.headers,
            parser.should_keep_alive(),
            framing.contentLength,
            framing.chunked,
            framing.upgrade,
        )
        if status < 200 and status != 101:
            self._informational = True
            self._events.append((INFORMATIONAL, head))
            return
        self._events.append((HEAD, head))
        if status == 101:
            # No end: the UPGRADE event follows, and with it the bytes that
            # are no longer HTTP.
            self._ended = True
        elif self._bodiless:
            self._bodiless = False
            self._ended = True
            self._events.append((END, None))

    def on_body(self, data: bytes) -> None:
        if self._ended:
            raise self._fail(502, "body in a response to HEAD")
        self._events.append((DATA, data))

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        elif not self._ended:
            self._events.append((END, None))

    def feed(self, data: bytes) -> list:
        events = super().feed(data)
        if self._ended:
            # llhttp still waits for the body it thinks the response has.
            self._ended = False
            self._parser = self._newParser()
        return events


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """
    The pieces of one chunk of a chunked body, for C{writeSequence}: the
    data itself is not copied.
    """
    return (b"%x\r\n" % len(data), data, b"\r\n")


def requestHead(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
    """
    Serialise a request head for an endpoint, always in HTTP/1.1.

    @param extra: framing and connection fields the proxy adds, each
        ending with CRLF.
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (extra, b"\r\n")
    return b"".join(parts)


def responseHead(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
    """
    Serialise a response head for a client, always in HTTP/1.1 (a server
    answers with the highest version it speaks, RFC 9110, section 6.2).

    @param extra: as for L{requestHead}.
    """
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts += (extra, b"\r\n")
    return b"".join(parts)
