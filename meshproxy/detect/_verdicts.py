# -*- test-case-name: tests.test_detect -*-
"""
The verdicts of protocol detection: what the first bytes of a connection
say it speaks.

A verdict is an immutable value, so the classifier, the protocol that acts on
it, logs and metrics can share one without copying.  Each verdict has a
C{result}, the value of the C{detect_total{result}} metric label; the whole
set of labels is L{RESULTS}.
"""

from __future__ import annotations

from typing import ClassVar, Union

from attrs import field, frozen
from attrs.validators import in_

__all__ = ["HTTP1", "HTTP2", "RESULTS", "TLS", "Opaque", "Verdict"]

RESULTS = frozenset({"tls", "h2", "http1", "opaque", "timeout", "skipped"})


@frozen
class TLS:
    """
    The connection starts with a TLS ClientHello.

    @ivar sni: The host name the client asked for with the C{server_name}
        extension, lower-cased, or L{None} if it sent none.  It decides
        whether the proxy terminates TLS or passes the connection through.
    @ivar alpn: The application protocols the client offered, in its order of
        preference, without GREASE values.
    """

    result: ClassVar[str] = "tls"

    sni: str | None
    alpn: tuple[str, ...] = ()


@frozen
class HTTP2:
    """
    The connection starts with the HTTP/2 connection preface: a client that
    speaks HTTP/2 with prior knowledge.
    """

    result: ClassVar[str] = "h2"


@frozen
class HTTP1:
    """
    The connection starts with an HTTP/1 request line.

    The parts are kept as the raw bytes of the request line because the HTTP
    parser that takes over validates them in full; they are here so that the
    chooser can tell, say, a C{CONNECT} from an ordinary request.

    @ivar method: The request method, such as C{b"GET"}.
    @ivar target: The request target, in any of its forms.
    @ivar version: C{b"HTTP/1.1"} or C{b"HTTP/1.0"}.
    """

    result: ClassVar[str] = "http1"

    method: bytes
    target: bytes
    version: bytes


@frozen
class Opaque:
    """
    The connection is to be forwarded as a byte stream, uninterpreted.

    @ivar reason: Why:
        - C{"no-match"}: the bytes cannot begin any protocol we know;
        - C{"timeout"}: the client sent too little before the detect timeout,
          as a server-speaks-first protocol does;
        - C{"byte-cap"}: the client sent the byte cap's worth without a
          verdict;
        - C{"closed"}: the client half-closed the connection first;
        - C{"skipped"}: detection did not run because the port is opaque.
    @ivar detail: For C{"no-match"} from a malformed ClientHello, what was
        wrong with it, for the logs; otherwise L{None}.
    """

    reason: str = field(
        validator=in_({"no-match", "timeout", "byte-cap", "closed", "skipped"})
    )
    detail: str | None = None

    @property
    def result(self) -> str:
        """
        The metric label: C{"timeout"} and C{"skipped"} get their own, as
        they point at configuration (a server-speaks-first protocol on a port
        that is not marked opaque; an opaque port) rather than at a client;
        the other reasons are all C{"opaque"}.
        """
        return self.reason if self.reason in RESULTS else "opaque"


Verdict = Union[TLS, HTTP2, HTTP1, Opaque]
