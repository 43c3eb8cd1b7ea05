"""
The HTTP data path: sans-I/O codecs for HTTP/1 (L{h1}) and HTTP/2 (L{h2})
and the router (L{router}); the server protocols detected connections are
handed to (L{server} for HTTP/1, L{h2server} for HTTP/2), which share the
per-request steps of L{exchange}; the upstreams, a pool of HTTP/1.1
connections (L{client}) and one multiplexed HTTP/2 connection per endpoint
(L{h2client}); and the hand-over of upgraded connections to the opaque
relay (L{tunnel}).
"""

from .client import ConnectionPool
from .h2client import H2Pool
from .h2server import H2ServerProtocol
from .router import AuthorityRouter, OneRoute, Route
from .server import HTTPServerProtocol, ServerContext

__all__ = [
    "AuthorityRouter",
    "ConnectionPool",
    "H2Pool",
    "H2ServerProtocol",
    "HTTPServerProtocol",
    "OneRoute",
    "Route",
    "ServerContext",
]
