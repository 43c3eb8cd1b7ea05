"""
The HTTP/1.1 data path: a sans-I/O codec (L{h1}) and router (L{router}),
the server protocol detected HTTP/1 connections are handed to (L{server}),
the per-endpoint connection pool (L{client}), and the hand-over of upgraded
connections to the opaque relay (L{tunnel}).

HTTP/2 is to live beside these as C{h2} and a server of its own, sharing
the router, the routes and the pool's seam.
"""

from .client import ConnectionPool
from .router import AuthorityRouter, OneRoute, Route
from .server import HTTPServerProtocol, ServerContext

__all__ = ["AuthorityRouter", "ConnectionPool", "HTTPServerProtocol", "OneRoute", "Route", "ServerContext"]
