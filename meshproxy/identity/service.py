# -*- test-case-name: tests.test_identity_issuer -*-
"""
The issuer as a Twisted service: one TLS listener serving the issuer's site.
"""

from __future__ import annotations

from twisted.application.service import MultiService
from twisted.internet.base import _ISupportsExitSignalCapturing
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from ..listener import ListenerService
from ..readiness import Readiness
from ..systemd import Notifier, NotifyService
from .config import IssuerConfig
from .issuer import Issuer, IssuerMetrics, issuerSite, issuerTLS

__all__ = ["IssuerService"]


class IssuerService(MultiService):
    """
    One issuer replica.  It keeps no state beyond the CA directory, so any
    number of replicas can share one and answer the same clients.

    @ivar metrics: the issuer's metrics.
    @ivar readiness: what C{/ready} waits for: the listener bound.
    @ivar _reactor: the reactor, whose exit signal a stop clears.
    """

    _log = Logger()

    def __init__(self, config: IssuerConfig, reactor, notifier: Notifier | None = None) -> None:
        """
        @param notifier: tells systemd when the issuer is ready and when it
            stops, when it runs as a C{Type=notify} unit.
        """
        super().__init__()
        self.config = config
        self._reactor = reactor
        self.metrics = IssuerMetrics(config.authority)
        self.readiness = Readiness()
        site = issuerSite(Issuer(config.authority, config.cert_lifetime), self.metrics, self.readiness, reactor)
        factory = TLSMemoryBIOFactory(issuerTLS(config.authority), False, site, reactor)
        ListenerService(
            reactor, config.listen, factory, self.readiness.require(f"listener {config.listen}")
        ).setServiceParent(self)
        if notifier is not None:
            NotifyService(notifier, self.readiness).setServiceParent(self)

    def startService(self) -> None:
        authority = self.config.authority
        self._log.info(
            "Issuing {lifetime:g}s certificates for the trust domain {trustDomain} as {issuer};"
            " the issuing CA expires {expires}",
            lifetime=self.config.cert_lifetime,
            trustDomain=authority.trustDomain,
            issuer=authority.issuerIdentity,
            expires=authority.issuingCertificate.not_valid_after_utc.isoformat(),
        )
        super().startService()

    def stopService(self):
        if _ISupportsExitSignalCapturing.providedBy(self._reactor):
            # As the proxy does (L{meshproxy.service.ProxyService}): a stop
            # asked for by SIGTERM or SIGINT exits 0 rather than by
            # twistd killing itself with the signal, which would skip the
            # exit handlers, and with them the flush of the queued log
            # (L{meshproxy.logsink}).
            self._reactor._exitSignal = None
        return super().stopService()
