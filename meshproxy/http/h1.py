# -*- test-case-name: tests.test_http_h1 -*-
"""
A sans-I/O HTTP/1 codec: bytes in, events out; heads in, bytes to send out.

Parsing is done by C{httptools}, the binding to llhttp (the parser of
Node.js), because it is the fastest parser we measured and because llhttp is
strict where request smuggling lives: it refuses C{Content-Length} together
with C{Transfer-Encoding}, duplicate or non-numeric lengths, a
C{Transfer-Encoding} whose last coding is not C{chunked}, bare LF line ends,
obs-fold, and NUL or CR in field values.  The commonest messages (a
request without a body, a response with a length, each whole in one read)
are read by a fast path instead, which accepts a strict subset of what
llhttp accepts and hands llhttp everything else (see L{RequestReader} and
L{ResponseReader}), since llhttp calls back into Python for every field
and the fast path forwards a response's fields as the bytes they came in.
This module
adds what llhttp leaves to its caller:

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

import re

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
    "forwardedResponseHead",
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
#: The statuses whose responses have no body, whatever their header says.
_BODILESS_STATUSES = frozenset({204, 304})

# A response head read by ResponseReader's fast path (see its docstring): a
# field name is a token (RFC 9110, section 5.6.2); a field value or reason
# phrase is visible characters, obs-text, space and tab, so no NUL, bare CR
# or LF, and no obs-fold, which starts a line with white space.
#
# The same match finds the fields that frame the message or describe the
# connection, where a second pass over the lowered head cost as much again:
# "length" and "connection" hold the last Content-Length and Connection
# values, "lengths" and "connections" are set if there are several (each
# conditional looks at whether an earlier line set its group), "hop" if
# there is another hop-by-hop field, "framed" if llhttp must frame the body.
# Every group is entered only after its field's colon, past which no branch
# can fail but the line itself (a group entered by a branch that then
# fails trips a bug of Python 3.11's possessive repeats).  The repetitions
# are possessive: a line never ends where the next could start, so there is
# nothing to backtrack to, and not keeping track of it is faster.
_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TEXT = rb"[\t -~\x80-\xff]"
_RESPONSE_HEAD = re.compile(
    rb"HTTP/1\.([01]) ([2-9][0-9][0-9]) (" + _TEXT + rb"*+)\r\n("
    rb"(?:(?:(?=[CcKkPpTtUu])(?i:"
    rb"con(?:tent-length:(?(6)(?P<lengths>))(?P<length>" + _TEXT + rb"*+)"
    rb"|nection:(?(8)(?P<connections>))(?P<connection>" + _TEXT + rb"*+))"
    rb"|(?:keep-alive|proxy-connection|te|trailer):(?P<hop>)" + _TEXT + rb"*+"
    rb"|(?:transfer-encoding|upgrade):(?P<framed>)" + _TEXT + rb"*+)"
    rb"|" + _TOKEN + rb"++:" + _TEXT + rb"*+"
    rb")\r\n)*+)\r\n"
)
# A request head for RequestReader's fast path: a subset of what llhttp
# accepts, left to llhttp when in doubt.  The methods that llhttp knows and
# that neither take the connection (CONNECT) nor need a body; an
# origin-form target of the characters of RFC 3986 alone; field values of
# visible ASCII, space and tab.
_REQUEST_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|OPTIONS|PATCH|TRACE) (/[A-Za-z0-9\-._~:/?@!$&'()*+,;=%]*+) HTTP/1\.([01])\r\n"
    rb"((?:" + _TOKEN + rb"++:[\t -~]*+\r\n)*+)\r\n"
)
#: The fields a request read by the fast path may carry but not forward.
_DROPPED = frozenset({b"keep-alive", b"proxy-connection", b"te", b"trailer"})
#: The fields that send a request to llhttp: it frames the body, or says
#: why the request is refused.
_BODY_FIELDS = frozenset({b"content-length", b"transfer-encoding", b"upgrade"})

# The hop-by-hop fields of a response head read by the fast path, in the
# head lowered and starting with LF: the span of a match is that of the
# field's line (CRLF included) in the head as it came.
_HOP_FIELD = re.compile(rb"\n(connection|keep-alive|proxy-connection|te|trailer):([^\r]*)\r")


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
    @ivar raw: C{headers} as they came, each line with its CRLF, or
        L{None}: an HTTP/1 head is forwarded by copying these bytes rather
        than by serialising C{headers} again, field by field.
    @ivar whole: whether the whole response came with the head: its body,
        if any, and its end are the next events of the same C{feed}, so
        that the head can be held back and sent with the body in one
        write.
    """

    status: int
    reason: bytes
    _headers: list[tuple[bytes, bytes]] | None
    keepAlive: bool = True
    contentLength: int | None = None
    chunked: bool = False
    upgrade: bytes | None = None
    final: bool = False
    raw: bytes | None = None
    whole: bool = False

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """
        The end-to-end fields; split from C{raw} only when asked for (by an
        HTTP/2 client's stream, not by an HTTP/1 one), if not given.
        """
        if self._headers is None:
            headers = self._headers = []
            for line in self.raw.split(b"\r\n")[:-1]:
                name, _, value = line.partition(b":")
                headers.append((name, value.lstrip(b" \t")))
        return self._headers


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


_NO_OPTIONS = frozenset()
_KEEP_ALIVE = frozenset({b"keep-alive"})
_CLOSE_OR_KEEP_ALIVE = frozenset({b"close", b"keep-alive"})


def _connectionOptions(value: bytes) -> frozenset[bytes] | None:
    """
    The options of a lowered C{Connection} value, for the fast paths: only
    C{close} and C{keep-alive}, or L{None} if it names anything else (a
    field to remove, an upgrade), which is llhttp's and L{_Framing}'s to
    handle.  Those options accumulate over repeated fields, as llhttp's
    flags do.
    """
    value = value.strip(b" \t")
    if value == b"keep-alive":
        return _KEEP_ALIVE
    options = frozenset(option.strip(b" \t") for option in value.split(b","))
    if options <= _CLOSE_OR_KEEP_ALIVE:
        return options
    return None


class _Reader:
    """
    What request and response readers share: the llhttp callbacks, limits
    and the conversion of parser failures into L{ERROR} events.

    @ivar _parser: the llhttp parser.
    @ivar _events: the events of the current C{feed}.
    @ivar _fields: the header fields of the message being read.
    @ivar inHead: whether the head of a message is being read (begun and
        not yet ended); fields that arrive otherwise are trailers.  The
        server reads it after every read of a client, to time how long the
        client takes to send its head.
    @ivar _size: bytes of the complete fields of the current head (or
        trailer section) so far.
    @ivar _raw: bytes of the reads that fell wholly inside the current
        head, which bound a field llhttp has not finished.
    @ivar _error: the error raised from a callback, which llhttp reports
        only as "callback failed".
    @ivar _idle: whether llhttp is between messages, so that the next bytes
        start a message a fast path may read (see L{RequestReader} and
        L{ResponseReader}); never again after an upgrade or an error.
    """

    _idle = True

    def __init__(self, maxLine: int, maxHead: int) -> None:
        self._maxLine = maxLine
        self._maxHead = maxHead
        self._parser = self._newParser()
        self._events: list = []
        self._fields: list[tuple[bytes, bytes]] = []
        self.inHead = False
        self._size = 0
        self._raw = 0
        self._error: ProtocolError | None = None

    def _fail(self, status: int, reason: str) -> ProtocolError:
        self._error = ProtocolError(status, reason)
        return self._error

    def on_message_begin(self) -> None:
        self._idle = False
        self.inHead = True
        self._size = 0
        self._raw = 0
        self._fields = []

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value) + 4
        if self._size > self._maxHead:
            raise self._fail(431, "header section too large")
        if self.inHead:
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.inHead = False
        # Trailers are counted against the same limit as the head.
        self._size = 0
        self._headComplete(_Framing(self._fields))

    def on_body(self, data: bytes) -> None:
        self._events.append((DATA, data))

    def on_message_complete(self) -> None:
        # After a message that closes the connection llhttp refuses more.
        self._idle = self._parser.should_keep_alive()
        self._events.append((END, None))

    def feed(self, data: bytes) -> list:
        """
        Parse C{data}, the next bytes of the connection.

        @return: the events, in order.
        """
        events = self._events = []
        wasInHead, fields = self.inHead, self._fields
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._idle = False
            events.append((UPGRADE, data[e.args[0]:]))
        except HttpParserError as e:
            self._idle = False
            error, self._error = self._error, None
            events.append((ERROR, error or ProtocolError(400, str(e))))
        else:
            if wasInHead and self.inHead and self._fields is fields:
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

    A request without a body whose head came whole, the common case, is
    read without llhttp, by a regular expression that accepts a subset of
    what llhttp accepts and a loop over its fields: llhttp would call back
    into Python five times or more for it.  Every other request, and any
    that the expression refuses or whose fields say anything about a body
    or an upgrade, goes to llhttp, which then has the whole message: the
    fast path only takes a message it reads from its first byte, when
    llhttp is between messages.  So the checks that refuse a request (a
    missing or repeated C{Host}, the limits, every framing field) are
    llhttp's and L{_Framing}'s alone.

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

    def feed(self, data: bytes) -> list:
        events: list = []
        start = 0
        while self._idle:
            match = _REQUEST_HEAD.match(data, start)
            if match is None:
                break
            end = match.end()
            if end - start > self._maxHead or len(match.group(2)) > self._maxLine:
                break
            head = self._readHead(match)
            if head is None:
                break
            events += ((HEAD, head), (END, None))
            start = end
        if start < len(data):
            events += super().feed(data[start:] if start else data)
        return events

    def _readHead(self, match: re.Match) -> RequestHead | None:
        """
        The bodiless request whose head C{match}ed, or L{None} if it is not
        one for the fast path.
        """
        http11 = match.group(3) == b"1"
        connection: set[bytes] = set()
        headers = []
        host = None
        hosts = 0
        for line in match.group(4).split(b"\r\n")[:-1]:
            name, _, value = line.partition(b":")
            value = value.lstrip(b" \t")
            lower = name.lower()
            if lower == b"host":
                hosts += 1
                host = value
            elif lower == b"connection":
                options = _connectionOptions(value.lower())
                if options is None:
                    return None
                connection |= options
                continue
            elif lower in _DROPPED:
                continue
            elif lower in _BODY_FIELDS:
                return None
            headers.append((name, value))
        keepAlive = b"close" not in connection if http11 else b"keep-alive" in connection
        if not keepAlive or hosts > 1 or (http11 and not hosts):
            return None
        return RequestHead(match.group(1), match.group(2), b"1." + match.group(3), headers, host, keepAlive)

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


class _FastHead:
    """
    A response head as the fast path of L{ResponseReader} read it.

    @ivar size: the length of the head, from the status line to the empty
        line: where the body starts in the bytes it was read from.
    @ivar status: the status code.
    @ivar reason: the reason phrase.
    @ivar raw: the end-to-end field lines (L{ResponseHead.raw}).
    @ivar keepAlive: whether the endpoint keeps the connection open.
    @ivar contentLength: the body length, or L{None} for a status that has
        no body.
    """

    __slots__ = ("size", "status", "reason", "raw", "keepAlive", "contentLength")

    def __init__(
        self, size: int, status: int, reason: bytes, raw: bytes, keepAlive: bool, contentLength: int | None
    ) -> None:
        self.size = size
        self.status = status
        self.reason = reason
        self.raw = raw
        self.keepAlive = keepAlive
        self.contentLength = contentLength


class ResponseReader(_Reader):
    """
    Reads the responses of one connection to an endpoint.

    llhttp does not know which request a response answers, so the caller
    says, with L{expectBodiless}, when the next one must have no body
    whatever its header says (the answer to a C{HEAD}).  The reader then
    ends that response at its head and starts a fresh parser for the next.

    The common response, read whole or at least its whole head, with a
    C{Content-Length} or no body, is read without llhttp: one regular
    expression checks its head as strictly as llhttp would and finds the
    fields that frame it, where llhttp would call back into Python for
    each field, which costs more than the rest of the exchange's parsing.  Any
    other response (a head split over reads, C{Transfer-Encoding}, a body
    running to the close, a 1xx, an upgrade, a C{Connection} naming
    fields, anything the expression refuses) goes to llhttp, which then
    has the whole message: the fast path only takes a message it reads
    from its first byte, when llhttp is between messages.

    @ivar _bodiless: whether the next final response has no body.
    @ivar _ended: whether a bodiless response was ended early; llhttp's own
        end of it is ignored and any body bytes are an error.
    @ivar _informational: whether the message being read is a 1xx.
    @ivar _remaining: the body bytes still to come of a response read by
        the fast path.
    """

    _remaining = 0

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
        self._idle = self._parser.should_keep_alive()
        if self._informational:
            self._informational = False
        elif not self._ended:
            self._events.append((END, None))

    def feed(self, data: bytes) -> list:
        events: list = []
        while data:
            remaining = self._remaining
            if remaining:
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    events.append((DATA, data))
                    return events
                self._remaining = 0
                events += ((DATA, data[:remaining]), (END, None))
                data = data[remaining:]
                continue
            if self._idle:
                match = _RESPONSE_HEAD.match(data)
                if match is not None and match.end() <= self._maxHead:
                    head = self._readHead(match, data)
                    if head is not None:
                        data = self._readBody(head, data, events)
                        continue
            events += self._parse(data)
            break
        return events

    def _readHead(self, match: re.Match, data: bytes) -> _FastHead | None:
        """
        Read the head C{match}ed at the start of C{data}.

        @return: the head, or L{None} if the response is not one for the
            fast path.
        """
        length, connection, hop, framed, lengths = match.group(
            "length", "connection", "hop", "framed", "lengths"
        )
        if framed is not None or lengths is not None:
            # llhttp reads Transfer-Encoding and refuses a repeated
            # Content-Length: let it say why.
            return None
        contentLength = None
        if length is not None:
            length = length.strip(b" \t")
            if not length.isdigit() or len(length) > 15:
                return None
            contentLength = int(length)
        options = _NO_OPTIONS
        raw = match.group(4)
        if hop is not None or match.group("connections") is not None:
            # Several lines to leave out: find them all.
            options = set()
            cut = 0
            for field in _HOP_FIELD.finditer(b"\n" + raw.lower()):
                name, value = field.groups()
                if name == b"connection":
                    more = _connectionOptions(value)
                    if more is None:
                        return None
                    options |= more
                start, end = field.span()
                raw = raw[: start - cut] + raw[end - cut :]
                cut += end - start
        elif connection is not None:
            options = _connectionOptions(connection.lower())
            if options is None:
                return None
            # The field's line, from its name to its CRLF, is left out.
            start = match.start(4)
            raw = data[start : match.start(8) - 11] + data[match.end(8) + 2 : match.end(4)]
        http11 = match.group(1) == b"1"
        keepAlive = b"close" not in options if http11 else b"keep-alive" in options
        status = int(match.group(2))
        if not keepAlive or (contentLength is None and status not in _BODILESS_STATUSES):
            # What follows is llhttp's to judge: bytes after the last
            # response, or a body that runs to the close.
            return None
        return _FastHead(match.end(), status, match.group(3), raw, keepAlive, contentLength)

    def _readBody(self, head: _FastHead, data: bytes, events: list) -> bytes:
        """
        Read the response whose C{head} starts C{data}, and as much of its
        body as C{data} holds, into C{events}.

        @return: the bytes after what was read.
        """
        status = head.status
        contentLength = head.contentLength
        bodiless = self._bodiless or status in _BODILESS_STATUSES
        rest = data[head.size :]
        whole = bodiless or len(rest) >= contentLength
        events.append(
            (
                HEAD,
                ResponseHead(
                    status, head.reason, None, head.keepAlive, contentLength, False, None, False, head.raw, whole
                ),
            )
        )
        if bodiless:
            events.append((END, None))
            if self._bodiless:
                self._bodiless = False
                if rest and contentLength and status not in _BODILESS_STATUSES:
                    # llhttp would read them as the body its header gives.
                    self._idle = False
                    events.append((ERROR, ProtocolError(502, "body in a response to HEAD")))
                    return b""
            return rest
        if contentLength:
            if len(rest) < contentLength:
                self._remaining = contentLength - len(rest)
                if rest:
                    events.append((DATA, rest))
                return b""
            events.append((DATA, rest[:contentLength]))
        events.append((END, None))
        return rest[contentLength:]

    def _parse(self, data: bytes) -> list:
        """
        Parse C{data} with llhttp.
        """
        events = super().feed(data)
        if self._ended:
            # llhttp still waits for the body it thinks the response has.
            self._ended = False
            self._idle = True
            self._parser = self._newParser()
        return events


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """
    The pieces of one chunk of a chunked body, for C{writeSequence}: the
    data itself is not copied.
    """
    return (b"%x\r\n" % len(data), data, b"\r\n")


def forwardedResponseHead(head: ResponseHead, extra: bytes = b"") -> bytes:
    """
    Serialise a response head to forward to a client, from the bytes it
    came in when it came over HTTP/1 (L{ResponseHead.raw}).

    @param extra: as for L{requestHead}.
    """
    if head.raw is None:
        return responseHead(head.status, head.reason, head.headers, extra)
    return b"HTTP/1.1 %d %s\r\n%s%s\r\n" % (head.status, head.reason, head.raw, extra)


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
