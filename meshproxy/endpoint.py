# -*- test-case-name: tests.test_tcp -*-
"""
The seam through which the data paths open connections to endpoints.

The TCP relay and the HTTP client ask an L{IConnector} for a connection to a
L{meshproxy.config.Endpoint} and never see how it is made: plain TCP for an
endpoint outside the mesh, mutual TLS for one with an identity.  Tests give
them a connector whose L{Deferred} they fire by hand.
"""

from __future__ import annotations

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from zope.interface import Interface, implementer

from .config import Address, Endpoint
from .tls import HandshakeFailed, MeshTLS, TLSProtocol

__all__ = ["IConnector", "MeshConnector", "TCPConnector"]


class IConnector(Interface):
    """
    Opens connections to endpoints.
    """

    def connect(endpoint, protocolFactory):
        """
        Open a connection to C{endpoint}.

        @param endpoint: the L{meshproxy.config.Endpoint} to connect to.
        @param protocolFactory: the L{IProtocolFactory} that builds the
            protocol for the connection.
        @return: a L{Deferred} that fires with the connected L{IProtocol}, or
            fails with the reason no connection was made (refused, timed
            out, name not found).  Cancelling it abandons the attempt.
        """


def _tcpEndpoint(reactor, address: Address, timeout: float) -> IStreamClientEndpoint:
    """
    The client endpoint for one TCP address.

    L{HostnameEndpoint} would handle IP literals too, but it resolves every
    name, literals included, with C{getaddrinfo} in the reactor's thread
    pool: a thread round trip per connection that an address from service
    discovery, nearly always a literal, does not need.

    @param timeout: seconds to wait for each connection attempt.
    """
    if isIPAddress(address.host):
        return TCP4ClientEndpoint(reactor, address.host, address.port, timeout)
    if isIPv6Address(address.host):
        return TCP6ClientEndpoint(reactor, address.host, address.port, timeout)
    return HostnameEndpoint(reactor, address.host, address.port, timeout=timeout)


def _tune(protocol: IProtocol) -> IProtocol:
    """
    Set the socket options a relay wants on a new connection.

    C{TCP_NODELAY}, because a proxy forwards each chunk as soon as it
    arrives and Nagle's algorithm would hold small writes (a request line, a
    TLS record) back until the previous one is acknowledged.  C{SO_KEEPALIVE},
    so that a peer that vanished without a FIN is eventually noticed on an
    otherwise idle, long-lived connection.
    """
    protocol.transport.setTcpNoDelay(True)
    protocol.transport.setTcpKeepAlive(True)
    return protocol


@implementer(IConnector)
class TCPConnector:
    """
    Plain TCP connections, for endpoints outside the mesh.

    @ivar _reactor: the L{IReactorTCP} (and L{IReactorTime}, for the
        timeout) that makes the connections.
    @ivar _timeout: seconds to wait for each connection attempt.
    """

    def __init__(self, reactor, timeout: float) -> None:
        self._reactor = reactor
        self._timeout = timeout

    def connect(self, endpoint: Endpoint, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        d = _tcpEndpoint(self._reactor, endpoint.address, self._timeout).connect(protocolFactory)
        return d.addCallback(_tune)


@implementer(IConnector)
class MeshConnector:
    """
    Mutual TLS to endpoints that have an identity, plain TCP to the others.

    A connection to a meshed endpoint is made only once its server proved
    the endpoint's identity: until then the L{Deferred} has not fired, so
    the relay has written nothing, and a wrong or untrusted certificate
    fails the attempt like a refused connection, which moves the relay on
    to another endpoint.  There is no fallback to plaintext.

    @ivar _tcp: connects endpoints without an identity.
    @ivar _tls: the proxy's mTLS, or L{None} if it has no identity, in
        which case meshed endpoints cannot be reached (the configuration
        check refuses that combination).
    """

    def __init__(self, reactor, timeout: float, tls: MeshTLS | None) -> None:
        """
        @param timeout: seconds to wait for the TCP connection, and then
            again for the TLS handshake.
        """
        self._reactor = reactor
        self._timeout = timeout
        self._tcp = TCPConnector(reactor, timeout)
        self._tls = tls

    def connect(self, endpoint: Endpoint, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        if endpoint.identity is None:
            return self._tcp.connect(endpoint, protocolFactory)
        if self._tls is None:
            return fail(HandshakeFailed(f"{endpoint.address} needs mTLS as {endpoint.identity}, and this proxy has no identity"))
        try:
            factory = self._tls.clientFactory(endpoint.identity, protocolFactory, self._timeout)
        except HandshakeFailed:
            return fail()
        d = _tcpEndpoint(self._reactor, endpoint.address, self._timeout).connect(factory)
        return d.addCallback(_tune).addCallback(TLSProtocol.whenVerified)
