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
    - An HTTP/1 request line, C{method SP request-target SP HTTP/1.x CRLF}
      (RFC 9112, section 3).  The method is a token starting with an
      upper-case letter, as every registered method does, which rules out
      most binary and lower-case text protocols on the first byte.  The
      target is any run of visible characters, so the origin, absolute,
      authority (C{CONNECT}) and asterisk forms are all accepted; the HTTP
      parser that takes over validates it properly.
"""

from __future__ import annotations

import re

from ._clienthello import ClientHelloParser, Malformed
from ._verdicts import HTTP1, HTTP2, Opaque, Verdict

__all__ = ["Classifier"]

_TLS_RECORD = b"\x16"
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

_TOKEN_CHARS = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_VISIBLE_CHARS = rb"[\x21-\x7e]"
_METHOD = rb"[A-Z]%s*" % (_TOKEN_CHARS,)
_TARGET = rb"%s+" % (_VISIBLE_CHARS,)
_REQUEST_LINE_START = rb"(%s) (%s) (HTTP/1\.[01])" % (_METHOD, _TARGET)
_REQUEST_LINE = re.compile(_REQUEST_LINE_START + rb"\r\n")
_UNTERMINATED_REQUEST_LINE = re.compile(_REQUEST_LINE_START)
# Method, then optionally SP and a target, then optionally SP and whatever
# follows, which must be a prefix of the version and CRLF.
_REQUEST_LINE_PREFIX = re.compile(
    rb"%s(?: (?:%s(?: (.*))?)?)?" % (_METHOD, _TARGET), re.DOTALL
)
_VERSIONS = (b"HTTP/1.1\r\n", b"HTTP/1.0\r\n")
# By how many spaces a request line has so far: the bytes that keep it in
# its method or its target without deciding anything.
_UNDECIDING = {
    0: re.compile(rb"%s*" % (_TOKEN_CHARS,)),
    1: re.compile(rb"%s*" % (_VISIBLE_CHARS,)),
}


class Classifier:
    """
    Decide what protocol a connection speaks from its first bytes.

    @ivar _maxBytes: The byte cap: how many bytes to examine at most.
    @ivar _buffer: Every byte fed so far.
    @ivar _tls: The ClientHello parser, once the first byte says TLS.
    @ivar _requestLine: Whether the bytes examined so far are the start of
        a request line.
    """

    def __init__(self, maxBytes: int = 8192) -> None:
        """
        @param maxBytes: The byte cap.  The default, 8 KiB, holds any
            ordinary ClientHello and request line.
        """
        self._maxBytes = maxBytes
        self._buffer = bytearray()
        self._tls: ClientHelloParser | None = None
        self._requestLine = False

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
            return Opaque("byte-cap")
        return verdict

    def timeout(self) -> Verdict:
        """
        The detect timeout has expired.

        @return: L{HTTP1} if the bytes are a request line missing only its
            CRLF, as from a client that writes the line and its ending
            separately; otherwise L{Opaque}, for a server-speaks-first
            protocol or a client that stalled.
        """
        return self._undecided("timeout")

    def closed(self) -> Verdict:
        """
        The client half-closed the connection before a verdict.

        @return: As for L{timeout}.
        """
        return self._undecided("closed")

    def _undecided(self, reason: str) -> Verdict:
        line = _UNTERMINATED_REQUEST_LINE.match(self._buffer, 0, self._maxBytes)
        if line is None:
            return Opaque(reason)
        return HTTP1(*line.groups())

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
        if self._requestLine:
            # A client may trickle a long target a byte at a time; matching
            # the whole line again on each read would cost quadratic time,
            # so bytes that cannot decide anything are let through at once.
            undeciding = _UNDECIDING.get(head.count(b" "))
            if undeciding is not None and undeciding.fullmatch(new):
                return None
        line = _REQUEST_LINE.match(head)
        if line is not None:
            return HTTP1(*line.groups())
        prefix = _REQUEST_LINE_PREFIX.fullmatch(head)
        if prefix is not None:
            rest = prefix[1] or b""
            if any(version.startswith(rest) for version in _VERSIONS):
                self._requestLine = True
                return None
        return Opaque("no-match")
