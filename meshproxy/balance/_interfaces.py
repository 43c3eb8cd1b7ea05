# -*- test-case-name: tests.test_balance -*-
"""
The balancer seam: what the data paths need from a load balancer.

A balancer is pure: it is given its endpoints, asked for one per request or
connection, and told how each went.  It does no I/O and owns no timers, so
its decisions can be replayed in tests with a fixed clock and seed.  What
waits for time to pass (a request queued until an ejected endpoint may be
probed) lives outside, in L{meshproxy.balance.Waiter}.
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
        established: the latency sample ends here.  Called at most once,
        before L{finished}.
        """

    def finished(success: bool, refused: bool = False) -> None:
        """
        The request or connection is over.  Called exactly once.

        @param success: C{False} for a failed connect or a transport error
            (not for an HTTP error status: the endpoint answered).
        @param refused: the endpoint refused the connection
            (C{ECONNREFUSED}), which takes it out of rotation at once
            rather than after several failures: nothing listens there.
            Implies C{success} is C{False}.
        """


class IBalancer(Interface):
    """
    Chooses one endpoint of a service for each request or connection, and
    keeps endpoints that keep failing out of rotation for a while.

    An endpoint is I{usable} when it is in rotation, or when its ejection
    is over and the one probe request that decides its fate may go to it.
    """

    ready = Attribute("Whether some endpoint is usable now.")

    def update(endpoints) -> None:
        """
        Replace the endpoint set.  Endpoints that stay keep their state;
        picks on removed endpoints may still finish.

        @param endpoints: an iterable of L{meshproxy.config.Endpoint}.
        """

    def pick(exclude=frozenset()):
        """
        Choose a usable endpoint, counting the request as started on it.

        @param exclude: endpoints not to choose, such as ones a connection
            attempt already failed on.
        @return: an L{IPick}, or L{None} when no endpoint outside
            C{exclude} is usable.
        """

    def nextProbe():
        """
        When the earliest ejection still running ends.

        @return: a time on the balancer's clock, or L{None} when no ejection
            is waiting for time to pass (an endpoint whose probe is in
            flight becomes usable when the probe succeeds, which
            L{subscribe} reports).
        """

    def subscribe(listener) -> None:
        """
        Call C{listener()} whenever the endpoint set changes or an endpoint
        is ejected or taken back, so that whoever waits for a usable
        endpoint looks again.  Not called for the passing of time: see
        L{nextProbe}.
        """

    def snapshots():
        """
        The state of every endpoint, for metrics.  Cheap enough for every
        scrape and free of side effects: reading does not change what the
        balancer picks next.

        @return: a sequence of L{meshproxy.balance.EndpointSnapshot}, in
            endpoint order.
        """
