# -*- test-case-name: tests.test_service -*-
"""
The proxy as a Twisted service tree, built from a configuration.

It stops gracefully (SIGTERM, SIGINT or C{POST /shutdown}): C{/ready}
turns 503 and systemd hears C{STOPPING=1}, the listeners stop accepting,
every open connection is asked to finish (see L{meshproxy.drain}), and the
rest of the tree (the admin server among it) stops once none is left or
the grace period (C{[proxy] shutdown_grace}) is over.  twistd waits for
that before the process exits.

It reloads its configuration file on SIGHUP (L{ProxyService.reloadFile}):
services, their endpoints, sources and balancers change in place, with no
connection dropped.  Listeners, identity and C{[proxy]} settings are bound
into the running listeners: changing them needs a restart, which the log
says.
"""

from __future__ import annotations

from random import Random

from attrs import define, evolve
from twisted.application.service import MultiService
from twisted.internet.base import _ISupportsExitSignalCapturing
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger

from .admin import adminSite
from .balance import BALANCERS, BalancerCollector, IBalancer, RoundRobin, Waiter
from .config import Config, ConfigError, Endpoint, Service, load
from .discovery import DiscoveryService, discoveryService, resolverFor
from .drain import ConnectionRegistry
from .endpoint import MeshConnector
from .identity.client import HTTPSCertifier, IdentityClient
from .identity.store import IdentityError, IdentityStore, readAnchors, readCredentials
from .detect import HTTP1
from .http import (
    AuthorityRouter,
    ConnectionPool,
    H2Pool,
    H2ServerProtocol,
    HTTPServerProtocol,
    OneRoute,
    Route,
    ServerContext,
)
from .limits import Limits, LimitsCollector, connectionsFor, raiseFileLimit
from .listener import ListenerService, outboundFactory, relayFactory
from .metrics import ProxyMetrics
from .readiness import Readiness
from .systemd import Notifier, NotifyService
from .tcp import Target
from .tls import MeshTLS


@define(eq=False)
class _Running:
    """
    What the proxy runs for one configured service.  A reload changes it
    in place, so that the listeners and routers holding its target and
    route need not be rebuilt.

    @ivar service: the configuration applied.
    @ivar balancer: the balancer in use.
    @ivar waiter: picks from it for the target and the route.
    @ivar target: where upstream listeners relay connections.
    @ivar route: where HTTP requests for the service go.
    @ivar discovery: keeps the balancer supplied with endpoints.
    """

    service: Service
    balancer: IBalancer
    waiter: Waiter
    target: Target
    route: Route
    discovery: DiscoveryService | None = None

    def update(self, endpoints) -> None:
        """
        The discovery sink's update, for whichever balancer is in use.
        """
        self.balancer.update(endpoints)


def _authoritiesOf(service: Service) -> tuple[str, ...]:
    """
    The authorities C{service} answers for: those configured, or else its
    name.  The first names its route and its HTTP metrics.
    """
    return service.authorities or (service.name,)


def _restartNeeded(old: Config, new: Config) -> list[str]:
    """
    The tables of C{new} that differ from C{old} and that a reload cannot
    apply: the listeners, the identity, the admin server and the
    proxy-wide settings are built into what is listening.
    """
    tables = ("proxy", "identity", "admin", "inbound", "upstreams", "outbound")
    return [table for table in tables if getattr(old, table) != getattr(new, table)]


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
    @ivar connections: every connection the listeners accepted, drained
        when the proxy stops.
    @ivar limits: the caps on connections and requests (C{[proxy] max_*}).
    @ivar _services: what runs for each configured service, by name.
    @ivar _pool: the HTTP/1.1 connections to endpoints, shared by every
        route.
    @ivar _h2: the HTTP/2 connections to endpoints, shared likewise.
    @ivar _apps: the endpoints of the inbound listeners' applications,
        which their routes use for as long as the proxy runs.
    @ivar _router: the outbound listener's router, if there is one.
    @ivar _listeners: the listeners of the data path (not the admin
        server), stopped first when the proxy stops.
    @ivar _notify: the systemd notifier's service, if any.
    @ivar _stopping: whether a graceful shutdown began.
    """

    _log = Logger()

    def __init__(self, config: Config, reactor, notifier: Notifier | None = None) -> None:
        """
        @param notifier: tells systemd when the proxy is ready and when it
            stops, when it runs as a C{Type=notify} unit.
        """
        super().__init__()
        self.config = config
        self._reactor = reactor
        self._stopping = False
        self.metrics = ProxyMetrics()
        self.readiness = Readiness()
        proxy = config.proxy
        self.limits = Limits(
            proxy.max_connections or connectionsFor(raiseFileLimit()),
            proxy.max_requests,
            proxy.max_header_bytes,
            proxy.max_request_body,
        )
        self.connections = ConnectionRegistry(self.limits.connections)
        self.metrics.registry.register(LimitsCollector(self.limits))
        self.identity = self._identityStore(config, reactor)
        issuing = config.identity
        if issuing is not None and issuing.issuer is not None:
            # The configuration check makes [identity] require [proxy] identity.
            certifier = HTTPSCertifier(reactor, issuing.issuer, issuing.issuer_identity, self.identity.trustAnchors)
            client = IdentityClient(self.identity, certifier, issuing.token_file, self.metrics, reactor, Random())
            client.setServiceParent(self)
        tls = None if self.identity is None else MeshTLS(self.identity, reactor)
        connector = self._connector = MeshConnector(reactor, config.proxy.connect_timeout, tls)
        self._listeners: list[ListenerService] = []

        def listen(description, factory):
            listener = ListenerService(
                reactor,
                description,
                self.connections.track(factory),
                self.readiness.require(f"listener {description}"),
                self.limits.connections,
            )
            listener.setServiceParent(self)
            self._listeners.append(listener)

        # HTTP requests are balanced one by one over a pool of HTTP/1.1
        # connections and one HTTP/2 connection per endpoint, shared by
        # every route; a route per service carries its metrics.
        pool = self._pool = ConnectionPool(connector, reactor)
        h2 = self._h2 = H2Pool(connector, reactor)
        self._apps = frozenset(Endpoint(inbound.app) for inbound in config.inbound)
        self.balancers: dict[str, IBalancer] = {}
        self.targets: dict[str, Target] = {}
        self._services: dict[str, _Running] = {}
        self.metrics.registry.register(BalancerCollector(self.balancers))
        for service in config.services.values():
            self._serve(service, self.readiness)
        routes = {name: running.route for name, running in self._services.items()}

        def http(routers, target="", direction="outbound"):
            """
            The builder of a listener's HTTP protocols; C{routers} gives
            the router of each C{tls} label.  The contexts of each label and
            client identity are made once and kept.
            """
            contexts = {}

            def build(verdict, tls, clientId):
                context = contexts.get((tls, clientId))
                if context is None:
                    context = contexts[tls, clientId] = ServerContext(
                        routers(tls),
                        pool,
                        reactor,
                        self.metrics,
                        direction=direction,
                        tls=tls,
                        target=target,
                        responseTimeout=config.proxy.response_timeout,
                        headerTimeout=config.proxy.header_timeout,
                        registry=self.connections,
                        limits=self.limits,
                        h2=h2,
                        clientId=clientId,
                    )
                if isinstance(verdict, HTTP1):
                    return HTTPServerProtocol(context)
                return H2ServerProtocol(context, config.proxy.h2_keepalive)

            return build

        detectTimeout = config.proxy.detect_timeout
        for inbound in config.inbound:
            name = str(inbound.app)
            balancer = RoundRobin([Endpoint(inbound.app)], reactor, Random())
            app = Target(name, "inbound", Waiter(balancer, reactor), connector, self.metrics)
            # The application is counted under its address, per tls label.
            inboundRoutes = {
                label: OneRoute(Route(name, name, balancer, app.picker, self.metrics.http("inbound", name, label)))
                for label in ("true", "no_identity")
            }
            factory = relayFactory(
                app, reactor, self.metrics, detectTimeout, inbound.opaque, tls, http(inboundRoutes.get, name, "inbound")
            )
            listen(inbound.listen, factory)
        for upstream in config.upstreams:
            service = config.services[upstream.service]
            factory = relayFactory(
                self.targets[upstream.service],
                reactor,
                self.metrics,
                detectTimeout,
                service.opaque,
                http=http(lambda tls, route=OneRoute(routes[upstream.service]): route, upstream.service),
            )
            listen(upstream.listen, factory)
        self._router = None
        if config.outbound is not None:
            self._router = AuthorityRouter(self._authorities())
            router = self._router
            listen(config.outbound.listen, outboundFactory(http(lambda tls: router), reactor, self.metrics, detectTimeout))
        shutdown = self.shutdown if config.admin.shutdown else None
        ListenerService(
            reactor, config.admin.listen, adminSite(self.metrics, self.readiness, reactor, shutdown), lambda: None
        ).setServiceParent(self)
        self._notify = None
        if notifier is not None:
            self._notify = NotifyService(notifier, self.readiness)
            self._notify.setServiceParent(self)

    def _serve(self, service: Service, readiness: Readiness | None) -> _Running:
        """
        Run a configured service: its balancer, the waiter, target and
        route built on it, and its discovery, which starts with the proxy
        (or at once, if the proxy runs).

        @param readiness: what waits for the service's first endpoints, or
            L{None} for a service added by a reload.
        """
        name, reactor = service.name, self._reactor
        balancer = BALANCERS[service.balancer](service.endpoints, reactor, Random())
        waiter = Waiter(balancer, reactor)
        authority = _authoritiesOf(service)[0]
        running = _Running(
            service,
            balancer,
            waiter,
            Target(name, "outbound", waiter, self._connector, self.metrics),
            Route(
                name,
                authority,
                balancer,
                waiter,
                self.metrics.http("outbound", authority, "no_identity"),
                service.upgrade == "h2",
            ),
        )

        def update(endpoints) -> None:
            running.update(endpoints)
            self._retainEndpoints()

        # Each service's resolver keeps its balancer supplied with endpoints;
        # static endpoints are one resolver among others.
        running.discovery = discoveryService(
            service,
            update,
            self.metrics,
            readiness,
            self.identity is not None,
            reactor,
            self.config.proxy.discovery_timeout,
        )
        # In the table before its resolver starts: a static one answers at
        # once, and its endpoints must count as in use.
        self._services[name] = running
        self.balancers[name] = balancer
        self.targets[name] = running.target
        running.discovery.setServiceParent(self)
        return running

    def _retainEndpoints(self) -> None:
        """
        Let the connection pools keep connections only to the endpoints
        some service still lists, or an inbound application: whenever an
        endpoint leaves a service (discovery, a reload), its connections
        would otherwise live on, unused, until the endpoint closed them.
        The pools are shared by every route, so an endpoint that another
        service still lists keeps its connections.
        """
        endpoints = self._apps.union(*(running.discovery.sink.endpoints for running in self._services.values()))
        self._pool.retain(endpoints)
        self._h2.retain(endpoints)

    def _authorities(self):
        """
        The outbound router's table: each authority of each service that
        is not opaque, with the service's route.
        """
        return (
            (authority, running.route)
            for running in self._services.values()
            if not running.service.opaque
            for authority in _authoritiesOf(running.service)
        )

    # Reload.

    def reloadFile(self) -> None:
        """
        Read the configuration file again and apply it (SIGHUP).  A file
        with problems is refused: each one is logged and the configuration
        in use stays.
        """
        if self._stopping:
            self._log.warn("Not reloading {path}: the proxy is shutting down", path=self.config.path.path)
            return
        try:
            config = load(self.config.path)
        except ConfigError as e:
            for error in e.errors:
                self._log.error("Reload refused: {error}", error=error)
            self._log.error(
                "Reload of {path} refused ({count} problems): the configuration in use stays",
                path=self.config.path.path,
                count=len(e.errors),
            )
            return
        self.reload(config)

    def reload(self, config: Config) -> None:
        """
        Apply C{config}'s services without dropping a connection: services
        added and removed, endpoints and their source, balancing algorithm,
        authorities.  What cannot change while listening is kept as it is,
        and the log says that it needs a restart.

        A service whose algorithm changes gets a new balancer, seeded with
        the current endpoints; the requests and connections in flight
        finish on the old one.  An upstream listener's service stays while
        the listener does.
        """
        old = self.config
        restart = _restartNeeded(old, config)
        listening = {upstream.service for upstream in old.upstreams}
        changes = []
        for name in sorted(self._services.keys() - config.services.keys()):
            if name in listening:
                restart.append(f"services.{name} (an upstream listener relays to it)")
            else:
                self._unserve(name)
                changes.append(f"-{name}")
        for name, service in config.services.items():
            running = self._services.get(name)
            if running is None:
                self._serve(service, None)
                changes.append(f"+{name}")
            else:
                changes.extend(f"{name}: {change}" for change in self._reconfigure(running, service))
                if name in listening and running.service.opaque != service.opaque:
                    restart.append(f"services.{name}.opaque (an upstream listener relays to it)")
                running.service = service
        if self._router is not None:
            self._router.update(self._authorities())
        self.config = evolve(old, services={name: running.service for name, running in self._services.items()})
        self._log.info(
            "Reloaded {path}: {changes}", path=config.path.path, changes="; ".join(changes) or "no service changed"
        )
        if restart:
            self._log.warn(
                "Changes to {tables} need a restart to take effect; until then the proxy runs as before",
                tables=", ".join(restart),
            )

    def _reconfigure(self, running: _Running, service: Service) -> list[str]:
        """
        Change one running service to C{service}'s configuration.

        @return: what changed, for the log.
        """
        old, changes = running.service, []
        if service.balancer != old.balancer:
            balancer = BALANCERS[service.balancer](running.discovery.sink.endpoints, self._reactor, Random())
            running.balancer = running.route.balancer = self.balancers[service.name] = balancer
            running.waiter.replace(balancer)
            changes.append(f"balancer {old.balancer} -> {service.balancer}")
        if (service.discovery, service.endpoints) != (old.discovery, old.endpoints):
            # The new source feeds the same sink, and so the balancer in use.
            resolver = resolverFor(service, self.identity is not None, self._reactor, Random())
            running.discovery.resolveWith(resolver)
            changes.append(f"endpoints ({resolver.source})")
        if service.authorities != old.authorities:
            authority = _authoritiesOf(service)[0]
            running.route.authority = authority
            running.route.metrics = self.metrics.http("outbound", authority, "no_identity")
            changes.append("authorities")
        if service.opaque != old.opaque:
            changes.append("opaque" if service.opaque else "not opaque")
        if service.upgrade != old.upgrade:
            running.route.upgrade = service.upgrade == "h2"
            changes.append(f"upgrade {old.upgrade} -> {service.upgrade}")
        return changes

    def _unserve(self, name: str) -> None:
        """
        Stop running a service a reload removed.  Its requests and
        connections in flight finish; new ones find no route.  The pooled
        connections to its endpoints that no other service lists close
        (idle ones at once, busy ones after their request).
        """
        running = self._services.pop(name)
        del self.balancers[name], self.targets[name]
        running.discovery.disownServiceParent()
        self._retainEndpoints()

    # Shutdown.

    def shutdown(self) -> None:
        """
        Stop the process gracefully, as SIGTERM does (C{POST /shutdown}):
        stopping the reactor stops this service, which drains, and twistd
        waits for that.  Asking again does nothing.
        """
        if not self._stopping:
            self._stopping = True
            self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        Stop gracefully: C{/ready} turns 503 and systemd hears
        C{STOPPING=1}, the listeners of the data path stop accepting, the
        open connections finish or the grace period ends, and then the
        rest of the tree stops.  The admin server answers until then.
        """
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        self._stopping = True
        self.readiness.drain()
        grace = self.config.proxy.shutdown_grace
        self._log.info(
            "Shutting down gracefully: {count} connections open, {grace:g}s to finish",
            count=len(self.connections),
            grace=grace,
        )
        # Removing a running child stops it: these stop first, once.
        first = [service for service in (self._notify, *self._listeners) if service is not None]
        await gatherResults([maybeDeferred(service.disownServiceParent) for service in first])
        aborted = await self.connections.drain(grace, self._reactor)
        if not aborted:
            self._log.info("Every connection finished")
        if _ISupportsExitSignalCapturing.providedBy(self._reactor):
            # twistd kills itself with the signal that stopped the reactor,
            # for an exit status of "killed by SIGTERM".  The proxy handled
            # the signal and stopped as asked: it exits 0, as linkerd2-proxy
            # does, so that a Job whose sidecar stops this way succeeds.
            self._reactor._exitSignal = None
        await super().stopService()

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
