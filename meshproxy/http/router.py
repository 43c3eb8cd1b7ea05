# -*- test-case-name: tests.test_http_router -*-
"""
Sans-I/O request routing: which route serves a request, by its authority.

The outbound listener serves many services, told apart by the authority a
request names: its C{Host} field, or the authority of an absolute-form
target (C{GET http://web/ HTTP/1.1}, as applications with C{http_proxy}
send), which RFC 9112, section 3.2.2, says wins over C{Host}.  Authorities
compare without case and without the default port, so C{Web}, C{web} and
C{web:80} are one.  An upstream listener serves one service and routes
every request there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from attrs import define

from .h1 import ProtocolError

__all__ = ["AuthorityRouter", "OneRoute", "Route", "normalizeAuthority", "splitTarget"]


@define(eq=False)
class Route:
    """
    Where a request goes, and under which labels it is counted.

    A reload of the configuration changes a route in place (a new balancer,
    new authorities), so that the routers and listeners that hold it need
    not be rebuilt; a request keeps the route it started with, and the
    pick it holds finishes on the balancer that made it.

    @ivar service: the service name, for logs.
    @ivar authority: the C{authority} label of the route's metrics, and
        the C{Host} of requests that came without one.
    @ivar balancer: the service's L{meshproxy.balance.IBalancer}.
    @ivar waiter: the L{meshproxy.balance.Waiter} of that balancer, which a
        request asks only when the balancer has no usable endpoint, so that
        the common case costs no L{Deferred}.
    @ivar metrics: the route's L{meshproxy.metrics.HTTPMetrics}, resolved
        once for all its requests.
    @ivar upgrade: whether HTTP/1 requests to the service's meshed
        endpoints travel as HTTP/2 (C{upgrade = "h2"}, the default), or
        stay HTTP/1.1 on pooled connections (C{"none"}).
    """

    service: str
    authority: str
    balancer: object
    waiter: object
    metrics: object
    upgrade: bool = True


def normalizeAuthority(authority: bytes) -> bytes:
    """
    An authority as routing compares it: lower case, without the default
    port 80.
    """
    authority = authority.lower()
    if authority.endswith(b":80"):
        return authority[:-3]
    return authority


def splitTarget(method: bytes, target: bytes) -> tuple[bytes | None, bytes]:
    """
    The authority a request target names, if any, and the target to send on
    to an endpoint.

    Origin-form (C{/path}) and asterisk-form (C{*}) targets name no
    authority and are sent as they are.  An absolute-form target is sent in
    origin form, since an endpoint is a server and not a proxy.  The
    authority form (C{host:port}) belongs to C{CONNECT} alone.

    @raise ProtocolError: for a target of the wrong form, or an absolute
        form other than C{http}.
    """
    if method == b"CONNECT":
        if b"/" in target or b":" not in target:
            raise ProtocolError(400, "CONNECT needs a host:port target")
        return target, target
    if target[:1] == b"/" or target == b"*":
        return None, target
    scheme, sep, rest = target.partition(b"://")
    if not sep or scheme.lower() != b"http":
        raise ProtocolError(400, "request target is not origin-form or an http URL")
    authority, slash, path = rest.partition(b"/")
    authority, query, after = authority.partition(b"?")
    if not authority or b"@" in authority:
        raise ProtocolError(400, "bad authority in the request target")
    if query:
        return authority, b"/?" + after
    return authority, slash + path if slash else b"/"


class OneRoute:
    """
    The router of an upstream listener: every request takes one route.
    """

    def __init__(self, route: Route) -> None:
        self._route = route

    def route(self, authority: bytes | None) -> Route:
        return self._route


class AuthorityRouter:
    """
    The router of the outbound listener: the route whose authorities
    include the request's.

    A C{CONNECT} to C{host:port} takes the route of that exact authority,
    else the route of C{host} alone, so C{CONNECT web:443} reaches a
    service known as C{web}.

    @ivar _routes: routes by normalised authority.
    """

    def __init__(self, routes: Mapping[str, Route] | Iterable[tuple[str, Route]]) -> None:
        self.update(routes)

    def update(self, routes: Mapping[str, Route] | Iterable[tuple[str, Route]]) -> None:
        """
        Route by C{routes} from now on, all at once: a reload added,
        removed or renamed services.
        """
        items = routes.items() if isinstance(routes, Mapping) else routes
        self._routes = {normalizeAuthority(a.encode()): route for a, route in items}

    def route(self, authority: bytes | None) -> Route | None:
        if authority is None:
            return None
        key = normalizeAuthority(authority)
        route = self._routes.get(key)
        if route is None and not key.endswith(b"]"):
            host, sep, port = key.rpartition(b":")
            if sep and port.isdigit():
                route = self._routes.get(host)
        return route
