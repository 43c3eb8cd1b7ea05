# -*- test-case-name: tests.test_service -*-
"""
The proxy as a Twisted service tree, built from a configuration.
"""

from __future__ import annotations

from twisted.application.service import MultiService

from .admin import adminSite
from .balance import BALANCERS, RoundRobin
from .config import Config, Endpoint
from .endpoint import TCPConnector
from .listener import ListenerService, relayFactory
from .metrics import ProxyMetrics
from .readiness import Readiness
from .systemd import Notifier, NotifyService
from .tcp import Target


class ProxyService(MultiService):
    """
    One meshproxy: its listeners, the services they relay to, and the admin
    server.

    @ivar metrics: every metric of this proxy.
    @ivar readiness: what C{/ready} waits for: every listener bound.
    @ivar targets: the relay target of each configured service, by name;
        upstream listeners of one service share its balancer.
    """

    def __init__(self, config: Config, reactor, notifier: Notifier | None = None) -> None:
        """
        @param notifier: tells systemd when the proxy is ready and when it
            stops, when it runs as a C{Type=notify} unit.
        """
        super().__init__()
        self.config = config
        self.metrics = ProxyMetrics()
        self.readiness = Readiness()
        connector = TCPConnector(reactor, config.proxy.connect_timeout)

        def target(name, direction, balancer):
            return Target(name=name, direction=direction, balancer=balancer, connector=connector, metrics=self.metrics)

        def listen(description, factory):
            ListenerService(
                reactor, description, factory, self.readiness.require(f"listener {description}")
            ).setServiceParent(self)

        self.targets = {
            name: target(name, "outbound", BALANCERS[service.balancer](service.endpoints))
            for name, service in config.services.items()
        }
        detectTimeout = config.proxy.detect_timeout
        for inbound in config.inbound:
            app = target(str(inbound.app), "inbound", RoundRobin([Endpoint(inbound.app)]))
            listen(inbound.listen, relayFactory(app, reactor, self.metrics, detectTimeout, inbound.opaque))
        for upstream in config.upstreams:
            service = config.services[upstream.service]
            factory = relayFactory(self.targets[upstream.service], reactor, self.metrics, detectTimeout, service.opaque)
            listen(upstream.listen, factory)
        ListenerService(
            reactor, config.admin.listen, adminSite(self.metrics, self.readiness, reactor), lambda: None
        ).setServiceParent(self)
        if notifier is not None:
            NotifyService(notifier, self.readiness).setServiceParent(self)
