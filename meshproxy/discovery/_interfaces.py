# -*- test-case-name: tests.test_discovery -*-
"""
The discovery seam: where a service's endpoints come from, and where they
go.

A resolver watches one source (the configuration, a file, DNS, etcd) for
the endpoints of one service and pushes what it finds into a sink, either
as a whole set or as endpoints added and removed, whichever its source
naturally says.  The sink is the one place where discovery meets the
balancer, so resolvers need know nothing of balancing, metrics or
readiness.
"""

from zope.interface import Attribute, Interface


class IEndpointSink(Interface):
    """
    Receives the endpoint set of one service.  Each call is an answer from
    the source, even if it changes nothing: the first one is what C{/ready}
    waits for.
    """

    def replace(endpoints) -> None:
        """
        The service's endpoints are now exactly C{endpoints}.

        @param endpoints: an iterable of L{meshproxy.config.Endpoint}.
        """

    def add(endpoints) -> None:
        """
        C{endpoints} join the set; those already in it are left alone.
        """

    def remove(endpoints) -> None:
        """
        C{endpoints} leave the set; those not in it are ignored.
        """


class IResolver(Interface):
    """
    Produces the endpoint set of one service from one source, for as long
    as it runs, and pushes each change to a sink.

    A resolver that loses its source (a parse error, a timeout, a dropped
    connection) keeps quiet rather than push an empty set: the last good
    set stays in use until the source says otherwise.
    """

    source = Attribute(
        'What the resolver reads, for metrics and messages: "static", "file", "dns" or "etcd".'
    )

    def start(sink) -> None:
        """
        Start resolving, pushing every change to C{sink}, an
        L{IEndpointSink}.
        """

    def stop():
        """
        Stop resolving: nothing more is pushed.

        @return: L{None}, or a L{Deferred} that fires once the resolver has
            let go of its source.
        """
