# -*- test-case-name: tests.test_http_h2 -*-
"""
The sans-I/O side of HTTP/2: how the proxy configures C{h2}, and how a
message maps between HTTP/2 header lists and the heads of L{h1}.

Both servers and all upstreams of the proxy speak in L{RequestHead} and
L{ResponseHead}; a request that arrives as HTTP/2 is turned into one here
(C{version} C{b"2"}), and turned back into a header list by the upstream
that sends it as HTTP/2.  Between proxies an HTTP/1 request travels as
HTTP/2 with C{meshproxy-orig-proto: HTTP/1.1}, which the inbound proxy
reads to give the request its version back and which it puts on the
response, so the client's proxy knows the answer came from HTTP/1 too.

The mapping follows RFC 9113, section 8.3 and RFC 9110, section 7.6.1:

  - pseudo-header fields become the method, target and authority; C{Host}
    and C{:authority} are one (C{:authority} wins, RFC 9113, section
    8.3.1), kept in the head as a C{Host} field so the HTTP/1 upstream
    needs no second copy;
  - connection-specific fields never appear in HTTP/2; C{h2} refuses them
    on input (a stream error), which is what protects an HTTP/1
    application behind the proxy from a smuggled C{Transfer-Encoding};
  - C{TE: trailers} may travel between HTTP/2 peers (gRPC requires it) and
    is dropped when the request goes down to HTTP/1, where it is
    hop-by-hop;
  - field names are lower case in HTTP/2; HTTP/1 names are lowered here,
    which is why C{h2}'s own outbound normalisation is switched off.

C{h2} is configured for speed where that is safe: header values stay
bytes (no decoding), outbound headers built here are neither validated nor
normalised again, inbound headers are (a peer's input is where smuggling
and abuse live).
"""

from __future__ import annotations

from collections import deque
from http import HTTPStatus

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import DenialOfServiceError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hyperframe.frame import ContinuationFrame, HeadersFrame

from .h1 import ProtocolError, RequestHead, ResponseHead

__all__ = [
    "CONNECTION_WINDOW",
    "MAX_CONCURRENT_STREAMS",
    "MAX_HEADER_LIST_SIZE",
    "MAX_FRAME_SIZE",
    "ORIG_PROTO",
    "STREAM_WINDOW",
    "FloodBudget",
    "HeaderBoundFrameBuffer",
    "ResetBudget",
    "StreamSender",
    "newConnection",
    "origProtoOf",
    "reasonOf",
    "requestFromHeaders",
    "requestHeaders",
    "responseFromHeaders",
    "responseHeaders",
]

#: The header that carries an HTTP/1 request's version across an HTTP/2 hop.
ORIG_PROTO = b"meshproxy-orig-proto"

#: The receive window of each stream: what a peer may send on one stream
#: before the consumer has taken it.  linkerd2-proxy uses 64 KiB; a larger
#: window keeps a single fast stream from stalling on round trips, and is
#: still bounded by the connection window below.
STREAM_WINDOW = 256 * 1024

#: The receive window of a whole connection, shared by its streams: the
#: most this proxy holds unacknowledged per connection (linkerd2-proxy:
#: 1 MiB, "about 16 streams at capacity").
CONNECTION_WINDOW = 4 * 1024 * 1024

#: Streams a peer may have open at once; each one costs an exchange, a pick
#: and possibly a connection, so a client may not open without bound.
MAX_CONCURRENT_STREAMS = 256

#: The largest header list accepted, as for HTTP/1 (L{h1.RequestReader}):
#: the HPACK decoder refuses bigger ones, which caps decompression bombs.
MAX_HEADER_LIST_SIZE = 65536

#: Frames up to this size may be sent to us: fewer, larger DATA frames cost
#: fewer events per byte.
MAX_FRAME_SIZE = 65536



class _ProxyConnection(H2Connection):
    """
    An C{h2} connection that remembers fewer closed streams.

    C{h2} keeps the ids of the last 65,536 closed streams, to tell a frame
    still in flight on a stream it reset (a stream error) from one on a
    stream that never existed (a connection error): about 150 bytes each,
    10 MB for every long-lived connection between two proxies, which
    carries every request between them (the soak showed each proxy's RSS
    growing by that much).  Frames in flight after a reset arrive within a
    round trip, in which at most C{MAX_CONCURRENT_STREAMS} streams can
    close, so a few times that is plenty.
    """

    MAX_CLOSED_STREAMS = 4 * MAX_CONCURRENT_STREAMS


_ORIG_VERSIONS = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}
_ORIG_PROTOS = {b"1.1": b"HTTP/1.1", b"1.0": b"HTTP/1.0"}
_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
_STATUS = {status: b"%d" % status for status in _REASONS}


def newConnection(clientSide: bool, maxHeaderList: int = MAX_HEADER_LIST_SIZE) -> H2Connection:
    """
    An C{h2} connection configured as the proxy uses it, with its preface
    and settings already queued in C{data_to_send()}.

    @param maxHeaderList: the largest header list the peer may send
        (C{[proxy] max_header_bytes} on the server side).
    """
    config = H2Configuration(
        client_side=clientSide,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=True,
        normalize_inbound_headers=True,
    )
    connection = _ProxyConnection(config)
    connection.incoming_buffer = HeaderBoundFrameBuffer(server=not clientSide)
    connection.local_settings = Settings(
        client=clientSide,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: maxHeaderList,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE,
            SettingCodes.ENABLE_PUSH: 0,
        },
    )
    # h2 derives these limits from the settings it was created with, and
    # updates them only for settings that change later: ours are in force
    # from the start.
    connection.max_inbound_frame_size = MAX_FRAME_SIZE
    connection.decoder.max_header_list_size = maxHeaderList
    connection.initiate_connection()
    # The connection window is not a setting: only a WINDOW_UPDATE grows it.
    connection.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return connection


def requestFromHeaders(headers: list[tuple[bytes, bytes]], ended: bool, origProto: bool) -> RequestHead:
    """
    The head of a request that arrived as HTTP/2.

    @param headers: the header list, validated by C{h2}.
    @param ended: whether the stream ended with the headers (no body).
    @param origProto: whether to honour C{meshproxy-orig-proto}, which only
        a peer proxy sends (the inbound side); elsewhere it is dropped.

    @return: a head whose C{version} is C{b"2"}, or the HTTP/1 version the
        request had before a proxy upgraded it.  Its C{chunked} says the
        body's length is unknown (it runs to the end of the stream), so an
        HTTP/1 upstream frames it in chunks.

    @raise ProtocolError: for a request HTTP/1 could not carry.
    """
    method = path = authority = host = None
    version = b"2"
    contentLength = None
    fields = []
    te = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name == b":protocol":
                raise ProtocolError(501, "extended CONNECT is not supported")
        elif name == b"host":
            host = value
        elif name == ORIG_PROTO:
            if origProto:
                version = _ORIG_VERSIONS.get(value)
                if version is None:
                    raise ProtocolError(400, "unknown meshproxy-orig-proto")
        elif name == b"te":
            te = value
        else:
            if name == b"content-length":
                if not value.isdigit():
                    raise ProtocolError(400, "bad content-length")
                contentLength = int(value)
            fields.append((name, value))
    if method == b"CONNECT":
        raise ProtocolError(501, "CONNECT over HTTP/2 is not supported")
    authority = authority or host
    if authority is None:
        raise ProtocolError(400, "request without :authority or host")
    fields.append((b"host", authority))
    if te is not None and version == b"2":
        fields.append((b"te", te))
    return RequestHead(
        method,
        path,
        version,
        fields,
        authority,
        True,
        contentLength,
        not ended and contentLength is None,
        None,
    )


def requestHeaders(head: RequestHead, target: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list of a request to send upstream.

    @param head: the request; an HTTP/1 one is marked with
        C{meshproxy-orig-proto}.
    @param target: its target in origin form (or C{*}).
    @param headers: its end-to-end fields, C{Host} among them.
    """
    out = [(b":method", head.method), (b":scheme", b"http"), (b":authority", b""), (b":path", target)]
    for name, value in headers:
        name = name.lower()
        if name == b"host":
            out[2] = (b":authority", value)
        else:
            out.append((name, value))
    proto = _ORIG_PROTOS.get(head.version)
    if proto is not None:
        out.append((ORIG_PROTO, proto))
    return out


def responseFromHeaders(headers: list[tuple[bytes, bytes]], ended: bool) -> ResponseHead:
    """
    The head of a response that arrived as HTTP/2.

    Its body is delimited by the stream, so it is C{chunked} unless a
    length was given; C{final} says the stream ended with the headers (a
    gRPC "trailers-only" response must stay one HEADERS frame).

    @raise ProtocolError: for a response without a usable C{:status}.
    """
    status = None
    contentLength = None
    fields = []
    for name, value in headers:
        if name == b":status":
            status = value
        elif name == ORIG_PROTO:
            pass
        else:
            if name == b"content-length" and value.isdigit():
                contentLength = int(value)
            fields.append((name, value))
    if status is None or not status.isdigit():
        raise ProtocolError(502, "response without :status")
    code = int(status)
    return ResponseHead(
        code, _REASONS.get(code, b"Unknown"), fields, True, contentLength, contentLength is None, None, ended
    )


def responseHeaders(head: ResponseHead, origProto: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list of a response (or an informational one).

    @param origProto: the C{meshproxy-orig-proto} value to add, when the
        request came down from HTTP/1 on a peer proxy.
    """
    status = head.status
    out = [(b":status", _STATUS.get(status) or b"%d" % status)]
    out += [(name.lower(), value) for name, value in head.headers]
    if origProto is not None:
        out.append((ORIG_PROTO, origProto))
    return out


def origProtoOf(head: RequestHead) -> bytes | None:
    """
    The C{meshproxy-orig-proto} value of a request that came down from
    HTTP/1, to put on its response; L{None} for an HTTP/2 request.
    """
    return _ORIG_PROTOS.get(head.version)


def reasonOf(status: int) -> bytes:
    """
    The reason phrase an HTTP/1 status line gives C{status}.
    """
    return _REASONS.get(status, b"Unknown")


class ResetBudget:
    """
    Protection against HTTP/2 Rapid Reset (CVE-2023-44487): a client that
    opens streams and resets them at once makes the proxy route, pick and
    connect for each, while the client itself does almost nothing and
    never hits the concurrent streams limit.

    Streams a client resets are counted in fixed windows of C{window}
    seconds; past C{limit} in one window the connection is to be closed
    with C{ENHANCE_YOUR_CALM}.  A legitimate client (gRPC cancellations,
    a browser navigating away) resets far fewer.
    """

    def __init__(self, limit: int = 200, window: float = 10.0) -> None:
        self._limit = limit
        self._window = window
        self._start = 0.0
        self._count = 0

    def reset(self, now: float) -> bool:
        """
        Count one reset at C{now}; whether the client is over its budget.
        """
        if now - self._start >= self._window:
            self._start = now
            self._count = 0
        self._count += 1
        return self._count > self._limit


class StreamSender:
    """
    The sending half of one stream: body and end go out as far as the
    peer's flow-control windows allow, the rest waits here.

    What waits is bounded by the other side's flow control, not by this
    class: the owner stops reading (or acknowledging) its source as soon as
    L{send} says the windows are spent, and starts again when L{flush}
    drains the queue.  C{h2} itself would refuse to exceed a window, so
    nothing is ever handed to it that it cannot frame now.

    @ivar streamId: the stream, or 0 while it is not open yet (a client
        stream waiting for the peer's concurrency limit); everything waits
        until then.
    @ivar closed: whether our end of the stream went out.
    @ivar _queue: body pieces waiting for window.
    @ivar _end: the trailers (or C{[]}) of an end waiting behind the queue,
        or L{None}.
    """

    def __init__(self, connection: H2Connection, streamId: int = 0) -> None:
        self._connection = connection
        self.streamId = streamId
        self.closed = False
        self._queue: deque[bytes] = deque()
        self._end: list | None = None

    @property
    def waiting(self) -> bool:
        """
        Whether anything waits for window.
        """
        return bool(self._queue) or self._end is not None

    def send(self, data: bytes) -> bool:
        """
        Send a piece of body, or queue it.

        @return: whether all of it went out; if not, the owner should stop
            its source until L{flush} returns L{True}.
        """
        if self._queue or not self.streamId:
            self._queue.append(data)
            return False
        rest = self._sendWithin(data)
        if rest:
            self._queue.append(rest)
            return False
        return True

    def end(self, trailers: list | None) -> None:
        """
        End the stream, with trailers if there are any, after whatever
        waits.
        """
        if self._queue or not self.streamId:
            self._end = trailers or []
        else:
            self._close(trailers)

    def flush(self) -> bool:
        """
        Send what waits as far as the windows now allow.

        @return: whether nothing waits any more.
        """
        if not self.streamId:
            return False
        queue = self._queue
        while queue:
            rest = self._sendWithin(queue.popleft())
            if rest:
                queue.appendleft(rest)
                return False
        end, self._end = self._end, None
        if end is not None:
            self._close(end)
        return True

    def _sendWithin(self, data: bytes) -> bytes:
        """
        Send as much of C{data} as the windows allow, in frames the peer
        accepts; return the rest.
        """
        connection = self._connection
        streamId = self.streamId
        size = len(data)
        window = connection.local_flow_control_window(streamId)
        frame = connection.max_outbound_frame_size
        if size <= window and size <= frame:
            connection.send_data(streamId, data)
            return b""
        allowed = min(size, window)
        for start in range(0, allowed, frame):
            connection.send_data(streamId, data[start : min(start + frame, allowed)])
        return data[allowed:]

    def _close(self, trailers: list | None) -> None:
        self.closed = True
        if trailers:
            self._connection.send_headers(self.streamId, trailers, end_stream=True)
        else:
            self._connection.end_stream(self.streamId)


class FloodBudget:
    """
    Protection against floods of frames that make the proxy work without
    carrying a request or a response: PING and SETTINGS (CVE-2019-9512,
    CVE-2019-9515), empty DATA frames (CVE-2019-9518), PRIORITY
    (CVE-2019-9513), WINDOW_UPDATE, frames on streams already reset,
    frames of unknown types.  Each is cheap, but a client may send them
    for ever, and C{h2} answers some by itself (a PING or a SETTINGS with
    an acknowledgement, a frame on a reset stream with C{RST_STREAM}).

    As in nginx's "http2 flood detected", what a client sends is weighed
    against the work it asks for, rather than counted by frame kind (no
    list of kinds keeps up with the next flood): every byte received is
    spent from a balance, and request heads and bodies received and
    response bodies sent earn twice their size back, so a connection that
    moves requests and responses never runs short (a download's
    C{WINDOW_UPDATE}s, an upload's frame headers).  Time earns C{rate}
    bytes a second, so keep-alive PINGs on a quiet connection cost
    nothing.  The balance never exceeds C{ceiling}: what a connection did
    long ago does not pay for a flood now.  Below zero, the connection is
    to be closed with C{ENHANCE_YOUR_CALM}.

    @ivar _balance: bytes the peer may still send without progress.
    @ivar _since: when time last earned.
    """

    def __init__(self, ceiling: int = 256 * 1024, rate: float = 4096.0) -> None:
        self._ceiling = ceiling
        self._rate = rate
        self._balance = float(ceiling)
        self._since = 0.0

    def earn(self, size: int) -> None:
        """
        Progress: C{size} bytes of request or response.
        """
        balance = self._balance + 2 * size
        self._balance = balance if balance < self._ceiling else self._ceiling

    def charge(self, size: int) -> None:
        """
        Work the peer caused beyond the bytes it sent (a SETTINGS frame
        walks every stream): it counts as C{size} more bytes.
        """
        self._balance -= size

    def spend(self, size: int, now: float) -> bool:
        """
        Count C{size} bytes received at C{now}; whether the peer is over
        its budget.
        """
        balance = self._balance + (now - self._since) * self._rate
        self._since = now
        if balance > self._ceiling:
            balance = self._ceiling
        balance -= size
        self._balance = balance
        return balance < 0


#: The frame types a header block is made of.
_HEADER_TYPES = (HeadersFrame.type, ContinuationFrame.type)


class HeaderBoundFrameBuffer(FrameBuffer):
    """
    C{h2}'s frame buffer, with the header block in progress bounded in
    bytes, and observable.

    C{h2} gathers the CONTINUATION frames of a header block until its
    C{END_HEADERS} and bounds only their number (64): at our frame size
    that is 4 MiB held per connection and then decoded in one go, while
    the HPACK decoder's list size limit only acts once decoding runs (the
    CONTINUATION flood class, CVE-2024-27316 and kin).  No encoded field
    is longer than the name, value and 32 octets the header list size
    counts for it (a literal adds a few octets of lengths, and Huffman
    coding is only used where it is shorter), so a block beyond
    L{MAX_HEADER_LIST_SIZE} encoded could never be accepted decoded: it is
    refused as it grows, with C{ENHANCE_YOUR_CALM}.

    @ivar _blockSize: the bytes of the header block in progress.
    """

    _blockSize = 0

    @property
    def headerPending(self) -> bool:
        """
        Whether a header block has begun and not ended: HEADERS waiting
        for its CONTINUATION frames, or a frame of either kind only partly
        received.  The connection can do nothing else meanwhile, which is
        why the server times it (slowloris).
        """
        data = self._data
        return bool(self._headers_buffer) or (len(data) > 3 and data[3] in _HEADER_TYPES)

    def _update_header_buffer(self, f):
        if isinstance(f, (HeadersFrame, ContinuationFrame)) and (self._headers_buffer or "END_HEADERS" not in f.flags):
            self._blockSize += len(f.data)
            if self._blockSize > MAX_HEADER_LIST_SIZE:
                raise DenialOfServiceError("header block larger than %d bytes" % MAX_HEADER_LIST_SIZE)
        frame = super()._update_header_buffer(f)
        if not self._headers_buffer:
            self._blockSize = 0
        return frame
