# -*- test-case-name: tests.test_detect -*-
"""
Protocol detection: read the first bytes of a connection to learn whether
it speaks TLS (and for which server name), HTTP/2, HTTP/1 or something
else, then hand the connection, bytes included, to the right protocol.

L{Classifier} is the sans-I/O decision; L{DetectingProtocol} and
L{DetectingFactory} apply it to Twisted connections.
"""

from ._classify import Classifier
from ._protocol import Chooser, DelegatingProtocol, DetectingFactory, DetectingProtocol
from ._verdicts import HTTP1, HTTP2, RESULTS, TLS, Opaque, Verdict

__all__ = [
    "HTTP1",
    "HTTP2",
    "RESULTS",
    "TLS",
    "Chooser",
    "Classifier",
    "DelegatingProtocol",
    "DetectingFactory",
    "DetectingProtocol",
    "Opaque",
    "Verdict",
]
