"""
The twistd plugins of meshproxy: C{twistd meshproxy} and
C{twistd meshproxy-identity}.

L{_LoggingServiceMaker} imports L{meshproxy.tap} (L{meshproxy.identity.tap})
only when the plugin is used, so listing plugins (C{twistd --help}) neither
imports meshproxy nor installs a reactor.
"""

from twisted.application.service import ServiceMaker


class _LoggingServiceMaker(ServiceMaker):
    """
    A L{ServiceMaker} that, once the service is made, has twistd log through
    a L{meshproxy.logsink.LogSink} if it logs to standard output, so that a
    log reader that stalls cannot block the reactor.  Here because twistd
    opens its log after C{makeService} returns, and before the service
    starts.
    """

    def makeService(self, options):
        from meshproxy.logsink import logThroughSink

        service = super().makeService(options)
        # A proxy counts in its metrics' registry; the parent of workers in
        # a registry of its own, merged with its workers' metrics; the
        # issuer has no metrics.
        metrics = getattr(service, "metrics", None)
        registry = getattr(service, "registry", None) if metrics is None else metrics.registry
        logThroughSink(options.parent, registry)
        return service


meshproxy = _LoggingServiceMaker(
    "meshproxy",
    "meshproxy.tap",
    "A service-mesh sidecar proxy: protocol detection, mTLS, balancing, metrics.",
    "meshproxy",
)

meshproxyIdentity = _LoggingServiceMaker(
    "meshproxy-identity",
    "meshproxy.identity.tap",
    "The meshproxy identity issuer: certificates for join tokens and renewals.",
    "meshproxy-identity",
)
