# -*- test-case-name: tests.test_balance -*-
"""
The balancer seam: what the data paths need from a load balancer.

A balancer is pure: it is given its endpoints, asked for one per request or
connection, and told how each went.  It does no I/O and owns no timers, so
its decisions can be replayed in tests with a fixed clock and seed.
"""

from zope.interface import Attribute, Interface


class IPick(Interface):
    """
    One request or connection sent to one endpoint.

    The balancer learns from it: the time to the first response byte (or the
    connect time, for opaque TCP) is a latency sample, and the outcome feeds
    endpoint health.
    """

    endpoint = Attribute("The L{meshproxy.config.Endpoint} chosen.")

    def responded() -> None:
        """
        The first response byte arrived, or the TCP connection was
        established: the latency sample ends here.
        """

    def finished(success: bool) -> None:
        """
        The request or connection is over.  C{success} is C{False} for a
        failed connect or a transport error.  Called exactly once.
        """


class IBalancer(Interface):
    """
    Chooses one endpoint of a service for each request or connection.
    """

    def update(endpoints) -> None:
        """
        Replace the endpoint set.  Endpoints that stay keep their state;
        picks on removed endpoints may still finish.

        @param endpoints: an iterable of L{meshproxy.config.Endpoint}.
        """

    def pick(exclude=frozenset()):
        """
        Choose an endpoint.

        @param exclude: endpoints not to choose, such as ones a connection
            attempt already failed on.
        @return: an L{IPick}, or L{None} when no endpoint is usable.
        """
