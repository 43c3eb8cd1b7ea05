# -*- test-case-name: tests.test_service -*-
"""
The proxy as a Twisted service tree, built from a configuration.
"""

from __future__ import annotations

from random import Random

from twisted.application.service import MultiService

from .admin import adminSite
from .balance import BALANCERS, BalancerCollector, RoundRobin, Waiter
from .config import Config, ConfigError, Endpoint
from .discovery import discoveryService
from .endpoint import MeshConnector
from .identity.client import HTTPSCertifier, IdentityClient
from .identity.store import IdentityError, IdentityStore, readAnchors, readCredentials
from .http import AuthorityRouter, ConnectionPool, HTTPServerProtocol, OneRoute, Route, ServerContext
from .listener import ListenerService, outboundFactory, relayFactory
from .metrics import ProxyMetrics
from .readiness import Readiness
from .systemd import Notifier, NotifyService
from .tcp import Target
from .tls import MeshTLS


class ProxyService(MultiService):
    """
    One meshproxy: its listeners, the services they relay to, and the admin
    server.

    @ivar metrics: every metric of this proxy.
    @ivar readiness: what C{/ready} waits for: every listener bound, the
        identity certificate if the proxy has an identity, and each
        service's first answer from discovery.
    @ivar identity: the proxy's credentials if it has an identity
        (C{[proxy] identity}), else L{None}.  A static certificate
        (C{[identity] cert_file}) is in it from the start; otherwise the
        renewal client fills it in with L{IdentityStore.update}.
    @ivar balancers: the balancer of each configured service, by name,
        shared by its listeners and its HTTP route.
    @ivar targets: the relay target of each configured service, by name;
        its picker is the service's one L{Waiter}.
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
        self.identity = self._identityStore(config, reactor)
        issuing = config.identity
        if issuing is not None and issuing.issuer is not None:
            # The configuration check makes [identity] require [proxy] identity.
            certifier = HTTPSCertifier(reactor, issuing.issuer, issuing.issuer_identity, self.identity.trustAnchors)
            client = IdentityClient(self.identity, certifier, issuing.token_file, self.metrics, reactor, Random())
            client.setServiceParent(self)
        tls = None if self.identity is None else MeshTLS(self.identity, reactor)
        connector = MeshConnector(reactor, config.proxy.connect_timeout, tls)

        def target(name, direction, balancer):
            return Target(name, direction, Waiter(balancer, reactor), connector, self.metrics)

        def listen(description, factory):
            ListenerService(
                reactor, description, factory, self.readiness.require(f"listener {description}")
            ).setServiceParent(self)

        self.balancers = {
            name: BALANCERS[service.balancer](service.endpoints, reactor, Random())
            for name, service in config.services.items()
        }
        self.metrics.registry.register(BalancerCollector(self.balancers))
        # Each service's resolver keeps its balancer supplied with endpoints;
        # static endpoints are one resolver among others.
        for name, service in config.services.items():
            discoveryService(
                service,
                self.balancers[name],
                self.metrics,
                self.readiness,
                self.identity is not None,
                reactor,
                config.proxy.discovery_timeout,
            ).setServiceParent(self)
        self.targets = {name: target(name, "outbound", balancer) for name, balancer in self.balancers.items()}
        # HTTP requests are balanced one by one over a pool of connections
        # shared by every route; a route per service carries its metrics.
        pool = ConnectionPool(connector, reactor)
        routes = {}
        for name, service in config.services.items():
            authority = (service.authorities or (name,))[0]
            metrics = self.metrics.http("outbound", authority, "no_identity")
            routes[name] = Route(name, authority, self.balancers[name], self.targets[name].picker, metrics)

        def http(router, target=""):
            context = ServerContext(
                router, pool, reactor, self.metrics, target=target, responseTimeout=config.proxy.response_timeout
            )
            return lambda: HTTPServerProtocol(context)

        detectTimeout = config.proxy.detect_timeout
        for inbound in config.inbound:
            app = target(str(inbound.app), "inbound", RoundRobin([Endpoint(inbound.app)], reactor, Random()))
            listen(inbound.listen, relayFactory(app, reactor, self.metrics, detectTimeout, inbound.opaque, tls))
        for upstream in config.upstreams:
            service = config.services[upstream.service]
            factory = relayFactory(
                self.targets[upstream.service],
                reactor,
                self.metrics,
                detectTimeout,
                service.opaque,
                http=http(OneRoute(routes[upstream.service]), upstream.service),
            )
            listen(upstream.listen, factory)
        if config.outbound is not None:
            router = AuthorityRouter(
                (authority, routes[name])
                for name, service in config.services.items()
                if not service.opaque
                for authority in service.authorities or (name,)
            )
            listen(config.outbound.listen, outboundFactory(http(router), reactor, self.metrics, detectTimeout))
        ListenerService(
            reactor, config.admin.listen, adminSite(self.metrics, self.readiness, reactor), lambda: None
        ).setServiceParent(self)
        if notifier is not None:
            NotifyService(notifier, self.readiness).setServiceParent(self)

    def _identityStore(self, config: Config, reactor) -> IdentityStore | None:
        """
        The store of the proxy's credentials, with the readiness condition
        and the expiry gauge subscribed, loaded from the static certificate
        files if the configuration names them.

        @raise ConfigError: if the trust anchors or the static credentials
            cannot be used, naming the key and why.
        """
        proxy, identity = config.proxy, config.identity
        if proxy.identity is None:
            return None

        def error(key: str, e: IdentityError) -> ConfigError:
            return ConfigError([f"{config.path.path}: {key}: {e}"])

        try:
            store = IdentityStore(proxy.identity, readAnchors(proxy.trust_anchors), reactor)
        except IdentityError as e:
            raise error("proxy.trust_anchors", e) from None
        certified = self.readiness.require("identity certificate")
        store.subscribe(lambda credentials: certified())
        store.subscribe(lambda credentials: self.metrics.certificateUpdated(credentials.expires))
        if identity is not None and identity.cert_file is not None:
            try:
                store.update(*readCredentials(identity.cert_file, identity.key_file))
            except IdentityError as e:
                raise error("identity.cert_file", e) from None
        return store
