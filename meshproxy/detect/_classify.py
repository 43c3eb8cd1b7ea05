# -*- test-case-name: tests.test_detect -*-
"""
A sans-I/O classifier for the first bytes of a connection: TLS, HTTP/2
with prior knowledge, HTTP/1, or none of these (opaque).

Unlike linkerd2-proxy, which decides on a single read, the classifier
accumulates reads until the answer is certain, so a ClientHello or request
line split over several segments is still recognised.  Three things bound
the wait: a verdict is given as soon as the bytes cannot begin any of the
protocols; at the byte cap the connection is opaque; and the caller's timer
(L{Classifier.timeout}) and the client's half-close (L{Classifier.closed})
force a verdict.  Only the first C{maxBytes} bytes are examined, so the
verdict does not depend on how the bytes were split into reads.

What the bytes may begin with:

    - C{0x16}, a TLS handshake record: parsed by L{ClientHelloParser}.
    - The 24-byte HTTP/2 preface, C{PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n}.
    - An HTTP/1 request: optional empty lines (RFC 9112, section 2.2),
      then a method, a token starting with an upper-case letter as every
      registered method does, then a space or tab.  That rules out most
      binary and lower-case text protocols on the first byte.

Detection is lenient about HTTP/1 on purpose and the HTTP parser that takes
over is strict.  Whatever an application might parse as an HTTP request must
reach meshproxy's parser, which answers a bad request line with 400, an
over-long one with 414, and strips headers such as C{meshproxy-client-id}
that only the proxy may set.  Bytes relayed as opaque reach the application
unchecked, so a request line that detection refused for a bare LF, an
unknown version, an extra space or its sheer length would smuggle a forged
header past the proxy.  The verdict therefore comes at the end of the first
line (or at the byte cap, or the timeout) whatever the line holds.
"""

from __future__ import annotations

import re

from ._clienthello import ClientHelloParser, Malformed
from ._verdicts import HTTP1, HTTP2, Opaque, Verdict

__all__ = ["Classifier"]

_TLS_RECORD = b"\x16"
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_METHOD_CHARS = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# Leading empty lines, then a method and its separator.
_REQUEST_START = re.compile(rb"(?:\r?\n)*([A-Z][%s]*)[ \t]" % (_METHOD_CHARS,))
# What may still become a request start: empty lines, then a method.
_REQUEST_START_PREFIX = re.compile(rb"(?:\r?\n)*\r?(?:[A-Z][%s]*)?" % (_METHOD_CHARS,))
# The request line's parts, as far as they go, for the verdict.
_REQUEST_LINE = re.compile(rb"([^ \t\r\n]*)[ \t]*([^\r\n]*)")


class Classifier:
    """
    Decide what protocol a connection speaks from its first bytes.

    @ivar _maxBytes: The byte cap: how many bytes to examine at most.
    @ivar _buffer: Every byte fed so far.
    @ivar _tls: The ClientHello parser, once the first byte says TLS.
    @ivar _requestLine: Where the request line's method ends, once the
        bytes examined are the start of an HTTP/1 request; L{None} before.
    """

    def __init__(self, maxBytes: int = 8192) -> None:
        """
        @param maxBytes: The byte cap.  The default, 8 KiB, holds any
            ordinary ClientHello and request line.
        """
        self._maxBytes = maxBytes
        self._buffer = bytearray()
        self._tls: ClientHelloParser | None = None
        self._requestLine: re.Match | None = None

    @property
    def buffered(self) -> bytes:
        """
        Every byte fed so far, for the next protocol to receive first.
        """
        return bytes(self._buffer)

    def feed(self, data: bytes) -> Verdict | None:
        """
        Consume bytes from the client.

        @return: The verdict, as soon as it is certain, or L{None} if more
            bytes are needed.  Once it returns a verdict, stop feeding it.
        """
        examined = len(self._buffer)
        self._buffer += data
        head = self._buffer[: self._maxBytes]
        verdict = self._classify(head, head[examined:])
        if verdict is None and len(head) == self._maxBytes:
            if self._requestLine is not None:
                # A request line too long to examine: the parser answers 414.
                return self._request(head)
            return Opaque("byte-cap")
        return verdict

    def timeout(self) -> Verdict:
        """
        The detect timeout has expired.

        @return: L{HTTP1} if the bytes begin a request line, as from a client
            that writes the line and its ending separately (the HTTP server
            then waits for the rest as for any slow client); otherwise
            L{Opaque}, for a server-speaks-first protocol or a client that
            stalled.
        """
        return self._undecided("timeout")

    def closed(self) -> Verdict:
        """
        The client half-closed the connection before a verdict.

        @return: As for L{timeout}.
        """
        return self._undecided("closed")

    def _undecided(self, reason: str) -> Verdict:
        if self._requestLine is None:
            return Opaque(reason)
        return self._request(self._buffer[: self._maxBytes])

    def _request(self, head: bytearray) -> HTTP1:
        """
        The verdict for an HTTP/1 request starting C{head}: its method, and
        its target and version as far as the first line holds them.
        """
        start = self._requestLine
        target, version = _REQUEST_LINE.match(head, start.end()).groups()
        return HTTP1(bytes(start[1]), bytes(target), bytes(version))

    def _classify(self, head: bytearray, new: bytearray) -> Verdict | None:
        """
        @param head: The bytes examined, from the start of the connection.
        @param new: The end of C{head} that was not examined before.
        """
        if head.startswith(_TLS_RECORD):
            if self._tls is None:
                self._tls = ClientHelloParser()
            hello = self._tls.feed(bytes(new))
            if isinstance(hello, Malformed):
                return Opaque("no-match", hello.reason)
            return hello
        if head.startswith(_PREFACE):
            return HTTP2()
        if _PREFACE.startswith(head):
            # Including no bytes at all.
            return None
        if self._requestLine is None:
            self._requestLine = _REQUEST_START.match(head)
            if self._requestLine is None:
                if _REQUEST_START_PREFIX.fullmatch(head):
                    return None
                return Opaque("no-match")
            new = head[self._requestLine.end() :]
        # Only the new bytes are searched for the line's end, so a client
        # trickling a long target costs linear time, not quadratic.
        if b"\n" in new:
            return self._request(head)
        return None

