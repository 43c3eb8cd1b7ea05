# -*- test-case-name: tests.test_config -*-
"""
The meshproxy configuration file: TOML in, frozen value objects out.

Loading never stops at the first mistake.  An operator who runs
C{meshproxy check} wants every wrong key of the file at once, each named with
the file, its dotted key path and what was expected, so the whole file is
walked and every problem collected into one L{ConfigError}.

This module is a leaf: it imports nothing from the rest of meshproxy, so the
CLI can validate a file without building any part of the proxy.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from attrs import field, frozen
from twisted.python.filepath import FilePath

__all__ = [
    "Address",
    "Admin",
    "BALANCERS",
    "Config",
    "ConfigError",
    "DNSDiscovery",
    "EtcdDiscovery",
    "FileDiscovery",
    "Endpoint",
    "Identity",
    "Inbound",
    "Outbound",
    "Proxy",
    "Service",
    "Upstream",
    "load",
    "Reader",
    "Table",
    "isDNSName",
    "parseAddress",
    "parseDuration",
    "readDocument",
    "readEndpoint",
    "readEndpoints",
]

#: Balancer names a service may ask for.  The first is the default.
BALANCERS = ("p2c-peak-ewma", "round-robin", "least-request", "random")
#: How HTTP/1 requests travel to a service's meshed endpoints: upgraded to
#: HTTP/2 (the default) or left HTTP/1.1 (C{upgrade = "none"}).
UPGRADES = ("h2", "none")

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"^(\d+)(B|KiB|MiB|GiB)$")
_SIZES = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_DNS_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: The problem with an endpoint identity, static or discovered, in a proxy
#: without one of its own.
_NEEDS_MTLS = "reaching an endpoint over mTLS needs proxy.identity and proxy.trust_anchors"
#: The keys of C{[identity]} that get certificates from an issuer.
_ISSUER_KEYS = frozenset({"issuer", "issuer_identity", "token_file"})


class ConfigError(Exception):
    """
    A configuration file is wrong.

    @ivar errors: one human-readable line per problem, each naming the file
        and the key.
    """

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def parseDuration(text: str) -> float:
    """
    Parse a duration such as C{"250ms"}, C{"10s"}, C{"5m"}, C{"24h"} or
    C{"0"} into seconds.

    A unit is required (except for zero) because a bare number is ambiguous
    and a wrong guess is off by a factor of a thousand.

    @raise ValueError: if C{text} is not a duration.
    """
    if text == "0":
        return 0.0
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"expected a duration like \"250ms\" or \"10s\", got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parseSize(text: str) -> int:
    """
    Parse a size in bytes such as C{"64KiB"}, C{"10MiB"} or C{"0"}.

    A unit is required (except for zero), for the same reason as in
    L{parseDuration}; only the binary units exist, so that C{"1MiB"} means
    one thing.

    @raise ValueError: if C{text} is not a size.
    """
    if text == "0":
        return 0
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"expected a size like \"64KiB\" or \"10MiB\", got {text!r}")
    return int(match.group(1)) * _SIZES[match.group(2)]


@frozen(cache_hash=True)
class Address:
    """
    A host and a TCP port, written C{host:port} or C{[v6]:port}.

    Its hash is cached, as is L{Endpoint}'s: the balancers and pools look
    endpoints up in dictionaries several times per request.
    """

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parseAddress(text: str) -> Address:
    """
    Parse C{host:port} (C{[::1]:port} for IPv6).

    @raise ValueError: if C{text} has no valid port or no host.
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected \"host:port\", got {text!r}")
    return Address(host, int(port))


def isDNSName(name: str) -> bool:
    """
    Is C{name} a lower-case DNS name such as C{web.prod.mesh.local}?
    Identities travel as TLS SNI and certificate DNS SANs, which only hold
    such names.
    """
    return len(name) <= 253 and all(_DNS_LABEL.match(label) for label in name.split("."))


@frozen(cache_hash=True)
class Endpoint:
    """
    One backend of a service.

    @ivar identity: the workload identity the endpoint's proxy proves with
        its certificate, or L{None} for an endpoint outside the mesh.
    @ivar labels: free-form metadata, kept sorted so endpoints compare equal
        whatever order the file listed them in.
    """

    address: Address
    identity: str | None = None
    weight: int = 1
    labels: tuple[tuple[str, str], ...] = ()


@frozen
class FileDiscovery:
    """
    Endpoints from a watched JSON file (C{discovery = { file = ... }}): a
    list of endpoint objects with the keys of C{endpoints}.
    """

    path: FilePath


@frozen
class DNSDiscovery:
    """
    Endpoints from the DNS SRV records of C{name}, asked of C{nameserver}
    (C{discovery = { dns_srv = ..., nameserver = ... }}).

    @ivar identity: the identity of every endpoint, where C{{target}}
        stands for the SRV target's name; or L{None} to read it from a TXT
        record C{identity=NAME} at each target.
    """

    name: str
    nameserver: Address
    identity: str | None = None


@frozen
class EtcdDiscovery:
    """
    Endpoints from the keys under C{prefix} in etcd (C{discovery = { etcd =
    ..., prefix = ... }}), one endpoint object as JSON per key.

    @ivar urls: the client URLs of the etcd cluster's members, tried in
        turn.
    """

    urls: tuple[str, ...]
    prefix: str
    username: str | None = None
    password: str | None = None


@frozen
class Service:
    """
    A named set of endpoints and how to spread load over them.

    @ivar endpoints: the static endpoints, empty if C{discovery} is set.
    @ivar discovery: where the endpoints come from when they are not
        static, or L{None}.
    @ivar upgrade: one of L{UPGRADES}.
    """

    name: str
    endpoints: tuple[Endpoint, ...]
    balancer: str = BALANCERS[0]
    authorities: tuple[str, ...] = ()
    opaque: bool = False
    discovery: FileDiscovery | DNSDiscovery | EtcdDiscovery | None = None
    upgrade: str = UPGRADES[0]


@frozen
class Inbound:
    """
    A listener in front of one local application port.
    """

    listen: str
    app: Address
    opaque: bool = False


@frozen
class Upstream:
    """
    A local listener whose every connection goes to one service.
    """

    listen: str
    service: str


@frozen
class Outbound:
    """
    The listener that routes HTTP by authority (C{[outbound]}), for
    applications that send to it with C{http_proxy} or by address.
    """

    listen: str


@frozen
class Proxy:
    """
    Proxy-wide settings (C{[proxy]}).
    """

    identity: str | None = None
    trust_anchors: FilePath | None = None
    detect_timeout: float = 10.0
    connect_timeout: float = 1.0
    shutdown_grace: float = 30.0
    response_timeout: float = 30.0
    header_timeout: float = 10.0
    #: How long an HTTP/2 client may stay silent before it is sent a PING.
    h2_keepalive: float = 10.0
    discovery_timeout: float = 10.0
    #: Reactor processes sharing the listeners (L{meshproxy.workers}).
    workers: int = 1
    #: Accepted connections open at once, per process; 0 derives it from
    #: the open-files limit (L{meshproxy.limits}).
    max_connections: int = 0
    #: HTTP requests in progress at once, per process; 0 for no limit.
    max_requests: int = 10000
    #: The largest HTTP/1 header section (and HTTP/2 header list) accepted.
    max_header_bytes: int = 64 * 1024
    #: The largest request body accepted; 0 for no limit.
    max_request_body: int = 0


@frozen
class Identity:
    """
    Where the proxy's certificate comes from (C{[identity]}): an issuer
    with a join token, or a static certificate and key.
    """

    issuer: Address | None = None
    issuer_identity: str | None = None
    token_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None


@frozen
class Admin:
    """
    The admin listener (C{[admin]}).

    @ivar shutdown: whether C{POST /shutdown} from a loopback address
        starts a graceful shutdown.  Off by default, as in linkerd2-proxy:
        anyone who can reach the port could stop the proxy.  A batch job's
        last step turns it on, to end its sidecar.
    """

    listen: str = "tcp:4191:interface=127.0.0.1"
    shutdown: bool = False


@frozen
class Config:
    """
    A whole, valid configuration file.

    @ivar path: the file it was read from, for messages and reloads.
    """

    path: FilePath
    proxy: Proxy = Proxy()
    identity: Identity | None = None
    admin: Admin = Admin()
    inbound: tuple[Inbound, ...] = ()
    upstreams: tuple[Upstream, ...] = ()
    outbound: Outbound | None = None
    services: Mapping[str, Service] = field(factory=dict)


class Table:
    """
    One TOML table being read: typed getters that record a problem, rather
    than raise, and a final check for keys nobody asked for (misspellings).

    @ivar _path: the dotted key path of this table, for messages.
    @ivar _seen: the keys a getter has looked at.
    """

    def __init__(self, reader: Reader, path: str, data: Mapping[str, Any]) -> None:
        self._reader = reader
        self._path = path
        self._data = data
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def keys(self) -> list[str]:
        return list(self._data)

    def get(self, key: str, kind: type, expected: str, default: Any = None, required: bool = False) -> Any:
        """
        The value of C{key} if it is of type C{kind}, else C{default} (with a
        problem recorded unless the key is absent and not C{required}).
        """
        self._seen.add(key)
        if key not in self._data:
            if required:
                self.error(key, f"missing: expected {expected}")
            return default
        value = self._data[key]
        # bool is an int in Python, but "weight = true" is a mistake.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.error(key, f"expected {expected}, got {value!r}")
            return default
        return value

    def convert(self, key: str, parse: Callable[[str], Any], default: Any = None, required: bool = False) -> Any:
        """
        The string at C{key} passed through C{parse}, whose C{ValueError}
        message becomes the problem recorded.
        """
        text = self.get(key, str, "a string", None, required)
        if text is None:
            return default
        try:
            return parse(text)
        except ValueError as e:
            self.error(key, str(e))
            return default

    def table(self, key: str) -> Table | None:
        value = self.get(key, dict, "a table")
        return None if value is None else Table(self._reader, self.path(key), value)

    def tables(self, key: str) -> list[Table]:
        """
        An array of tables (C{[[key]]}); each item gets its index in the path.
        """
        items = self.get(key, list, "an array of tables", [])
        result = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                result.append(Table(self._reader, f"{self.path(key)}[{index}]", item))
            else:
                self.error(f"{key}[{index}]", f"expected a table, got {item!r}")
        return result

    def error(self, key: str, message: str) -> None:
        self._reader.errors.append(f"{self._reader.name}: {self.path(key)}: {message}")

    def done(self) -> None:
        """
        Record every key no getter asked for: the usual cause is a typo.
        """
        for key in sorted(set(self._data) - self._seen):
            self.error(key, "unknown key")


class Reader:
    """
    Turns a parsed TOML document into a L{Config}, collecting problems.

    Other configuration files of the project (the issuer's) read their
    tables with the same L{Table} and helpers, so that every file reports
    its problems alike.
    """

    def __init__(self, path: FilePath, name: str | None = None) -> None:
        """
        @param name: names the source in messages, if not the file's path.
        """
        self.path = path
        self.name = path.path if name is None else name
        self.errors: list[str] = []
        #: Whether C{[proxy]} names an identity and trust anchors, without
        #: which endpoints with an identity cannot be reached; set by
        #: L{proxy}, which is read before the services.
        self.mtls = False
        #: Whether C{[proxy]} names an identity, valid or not: the checks
        #: that pair it with C{[identity]} look at the key, so that one
        #: mistake in the name is one error, not two.
        self.named = False

    def relative(self, text: str) -> FilePath:
        """
        A path as written in the file: absolute, or relative to the
        configuration file's directory (C{..} included).
        """
        return FilePath(os.path.normpath(os.path.join(self.path.parent().path, text)))

    def file(self, table: Table, key: str) -> FilePath | None:
        """
        A file path, relative to the configuration file's directory, which
        must exist: a missing trust bundle found at start beats one found at
        the first connection.
        """

        def parse(text: str) -> FilePath:
            child = self.relative(text)
            if not child.isfile():
                raise ValueError(f"no such file: {child.path}")
            return child

        return table.convert(key, parse)

    def listen(self, table: Table, key: str, default: str | None = None) -> str | None:
        return table.convert(key, _parseListen, default, required=default is None)

    def identityName(self, table: Table, key: str) -> str | None:
        def parse(text: str) -> str:
            if not isDNSName(text):
                raise ValueError(f"expected a lower-case DNS name such as \"web.prod.mesh.local\", got {text!r}")
            return text

        return table.convert(key, parse)

    def read(self, document: Mapping[str, Any]) -> Config:
        root = Table(self, "", document)
        proxy = self.proxy(root.table("proxy"))
        identity = self.identity(root.table("identity"))
        admin = self.admin(root.table("admin"))
        inboundTables = root.tables("inbound")
        inbound = tuple(filter(None, map(self.inbound, inboundTables)))
        outbound = self.outbound(root.table("outbound"))
        if identity is not None and not self.named:
            root.error("identity", "this table certifies proxy.identity, which is not set")
        if identity is None and self.named:
            # Without a source of certificates the proxy would never be ready.
            root.error(
                "identity",
                "missing: proxy.identity needs an [identity] table to get its certificate from:"
                " issuer, issuer_identity and token_file, or cert_file and key_file",
            )
        services = self.services(root.table("services"))
        upstreamTables = root.tables("upstreams")
        upstreams = tuple(filter(None, (self.upstream(t, services) for t in upstreamTables)))
        root.done()
        if not (inboundTables or upstreamTables or outbound):
            root.error("inbound", "no listeners: configure at least one [[inbound]], [[upstreams]] or [outbound]")
        if self.errors:
            raise ConfigError(self.errors)
        return Config(
            path=self.path,
            proxy=proxy,
            identity=identity,
            admin=admin,
            inbound=inbound,
            upstreams=upstreams,
            outbound=outbound,
            services=services,
        )

    def proxy(self, table: Table | None) -> Proxy:
        if table is None:
            return Proxy()
        defaults = Proxy()
        proxy = Proxy(
            identity=self.identityName(table, "identity"),
            trust_anchors=self.file(table, "trust_anchors"),
            detect_timeout=table.convert("detect_timeout", parseDuration, defaults.detect_timeout),
            connect_timeout=table.convert("connect_timeout", parseDuration, defaults.connect_timeout),
            shutdown_grace=table.convert("shutdown_grace", parseDuration, defaults.shutdown_grace),
            response_timeout=table.convert("response_timeout", parseDuration, defaults.response_timeout),
            header_timeout=table.convert("header_timeout", parseDuration, defaults.header_timeout),
            h2_keepalive=table.convert("h2_keepalive", parseDuration, defaults.h2_keepalive),
            discovery_timeout=table.convert("discovery_timeout", parseDuration, defaults.discovery_timeout),
            workers=table.get("workers", int, "a positive number of processes", defaults.workers),
            max_connections=table.get("max_connections", int, "a number of connections", defaults.max_connections),
            max_requests=table.get("max_requests", int, "a number of requests", defaults.max_requests),
            max_header_bytes=table.convert("max_header_bytes", parseSize, defaults.max_header_bytes),
            max_request_body=table.convert("max_request_body", parseSize, defaults.max_request_body),
        )
        if proxy.workers < 1:
            table.error("workers", f"expected a positive number of processes, got {proxy.workers}")
        for key in ("max_connections", "max_requests"):
            if getattr(proxy, key) < 0:
                table.error(key, f"expected 0 (no limit of its own) or more, got {getattr(proxy, key)}")
        if proxy.max_header_bytes < 1024:
            table.error("max_header_bytes", f"expected at least 1KiB, got {proxy.max_header_bytes} bytes")
        keys = set(table.keys())
        if "identity" in keys and "trust_anchors" not in keys:
            table.error("trust_anchors", "missing: an identity needs the trust anchors that verify its peers")
        self.mtls = {"identity", "trust_anchors"} <= keys
        self.named = "identity" in keys
        table.done()
        return proxy

    def identity(self, table: Table | None) -> Identity | None:
        if table is None:
            return None
        identity = Identity(
            issuer=table.convert("issuer", parseAddress),
            issuer_identity=self.identityName(table, "issuer_identity"),
            token_file=self.file(table, "token_file"),
            cert_file=self.file(table, "cert_file"),
            key_file=self.file(table, "key_file"),
        )
        keys = set(table.keys())
        for key, other in (("cert_file", "key_file"), ("key_file", "cert_file")):
            if key in keys and other not in keys:
                table.error(other, f"missing: {key} needs {other} too")
        issuerKeys = sorted(keys & _ISSUER_KEYS)
        if issuerKeys and keys & {"cert_file", "key_file"}:
            table.error(
                "cert_file", f"a static certificate and an issuer ({', '.join(issuerKeys)}) exclude each other: use one"
            )
        # Without a static certificate the issuer is the only source, usable
        # only with all three keys: else the proxy would never be ready.
        if not keys & {"cert_file", "key_file"}:
            for key in sorted(_ISSUER_KEYS - keys):
                table.error(
                    key, "missing: without cert_file and key_file, an issuer needs issuer, issuer_identity and token_file"
                )
        table.done()
        return identity

    def admin(self, table: Table | None) -> Admin:
        if table is None:
            return Admin()
        admin = Admin(
            listen=self.listen(table, "listen", Admin().listen),
            shutdown=table.get("shutdown", bool, "true or false", False),
        )
        table.done()
        return admin

    def inbound(self, table: Table) -> Inbound | None:
        listen = self.listen(table, "listen")
        app = table.convert("app", parseAddress, required=True)
        opaque = table.get("opaque", bool, "true or false", False)
        table.done()
        return Inbound(listen, app, opaque) if listen and app else None

    def outbound(self, table: Table | None) -> Outbound | None:
        if table is None:
            return None
        listen = self.listen(table, "listen")
        table.done()
        return Outbound(listen) if listen else None

    def upstream(self, table: Table, services: Mapping[str, Service]) -> Upstream | None:
        listen = self.listen(table, "listen")
        service = table.get("service", str, "a service name", required=True)
        if service is not None and service not in services:
            table.error("service", f"no [services.{service}] table")
        table.done()
        return Upstream(listen, service) if listen and service else None

    def services(self, table: Table | None) -> dict[str, Service]:
        if table is None:
            return {}
        services = {}
        for name in table.keys():
            service = self.service(name, table.table(name))
            if service is not None:
                services[name] = service
        table.done()
        return services

    def service(self, name: str, table: Table | None) -> Service | None:
        if table is None:
            return None
        balancer = table.get("balancer", str, "a balancer name", BALANCERS[0])
        if balancer not in BALANCERS:
            table.error("balancer", f"expected one of {', '.join(BALANCERS)}, got {balancer!r}")
        authorities = table.get("authorities", list, "a list of host names", [name])
        if not all(isinstance(a, str) for a in authorities):
            table.error("authorities", f"expected a list of strings, got {authorities!r}")
        opaque = table.get("opaque", bool, "true or false", False)
        upgrade = table.get("upgrade", str, '"h2" or "none"', "h2")
        if upgrade not in UPGRADES:
            table.error("upgrade", f'expected "h2" or "none", got {upgrade!r}')
        discovery = self.discovery(table.table("discovery"))
        if ("endpoints" in table.keys()) == ("discovery" in table.keys()):
            table.error("endpoints", "expected either endpoints or discovery (exactly one source per service)")
        items = table.get("endpoints", list, "a list of endpoint tables", [])
        endpoints = self.endpoints(table.path("endpoints"), items)
        table.done()
        return Service(
            name=name,
            endpoints=tuple(endpoints),
            balancer=balancer,
            authorities=tuple(authorities),
            opaque=opaque,
            discovery=discovery,
            upgrade=upgrade,
        )

    def endpoints(self, path: str, items: list) -> list[Endpoint]:
        """
        The valid endpoints of a list of endpoint tables at C{path}.
        """
        endpoints = []
        for index, item in enumerate(items):
            itemPath = f"{path}[{index}]"
            if not isinstance(item, dict):
                self.errors.append(f"{self.name}: {itemPath}: expected an endpoint table, got {item!r}")
                continue
            endpoint = self.endpoint(Table(self, itemPath, item))
            if endpoint is not None:
                endpoints.append(endpoint)
        return endpoints

    def discovery(self, table: Table | None) -> FileDiscovery | DNSDiscovery | EtcdDiscovery | None:
        """
        The one live source of C{discovery}, keyed by C{file}, C{dns_srv}
        or C{etcd}.
        """
        if table is None:
            return None
        sources = [key for key in ("file", "dns_srv", "etcd") if key in table.keys()]
        if len(sources) != 1:
            # No table.done(): the keys of several sources are not unknown.
            table.error("file", f"expected exactly one of file, dns_srv or etcd, got {sources or 'none'}")
            return None
        if sources == ["file"]:
            discovery = self._fileDiscovery(table)
        elif sources == ["dns_srv"]:
            discovery = self._dnsDiscovery(table)
        else:
            discovery = self._etcdDiscovery(table)
        table.done()
        return discovery

    def _fileDiscovery(self, table: Table) -> FileDiscovery | None:
        # The file need not exist yet: the resolver waits for it.
        path = table.convert("file", self.relative)
        return None if path is None else FileDiscovery(path)

    def _dnsDiscovery(self, table: Table) -> DNSDiscovery | None:
        name = table.convert("dns_srv", _parseDNSName, required=True)
        nameserver = table.convert("nameserver", parseAddress, required=True)

        def pattern(text: str) -> str:
            if not isDNSName(text.replace("{target}", "target")):
                raise ValueError(f"expected a DNS name in which {{target}} stands for the SRV target, got {text!r}")
            if not self.mtls:
                raise ValueError(_NEEDS_MTLS)
            return text

        identity = table.convert("identity", pattern)
        if name is None or nameserver is None:
            return None
        return DNSDiscovery(name, nameserver, identity)

    def _etcdDiscovery(self, table: Table) -> EtcdDiscovery | None:
        urls = table.get("etcd", (str, list), "a URL or a list of URLs", required=True)
        urls = [urls] if isinstance(urls, str) else urls
        if not urls or not all(isinstance(u, str) and u.startswith(("http://", "https://")) for u in urls):
            table.error("etcd", f"expected http:// or https:// URLs of etcd members, got {urls!r}")
        prefix = table.get("prefix", str, "a key prefix such as \"/meshproxy/services/web/\"", required=True)
        if prefix == "":
            table.error("prefix", "expected a non-empty key prefix: an empty one would read all of etcd")
        username = table.get("username", str, "a string")
        password = table.get("password", str, "a string")
        if (username is None) != (password is None):
            table.error("username", "expected username and password together, or neither")
        if not prefix or not urls:
            return None
        return EtcdDiscovery(tuple(u.rstrip("/") for u in urls), prefix, username, password)

    def endpoint(self, table: Table) -> Endpoint | None:
        address = table.convert("address", parseAddress, required=True)
        identity = self.identityName(table, "identity")
        if identity is not None and not self.mtls:
            table.error("identity", _NEEDS_MTLS)
        weight = table.get("weight", int, "a positive integer", 1)
        if weight < 1:
            table.error("weight", f"expected a positive integer, got {weight!r}")
        labels = table.get("labels", dict, "a table of strings", {})
        if not all(isinstance(v, str) for v in labels.values()):
            table.error("labels", f"expected a table of strings, got {labels!r}")
        table.done()
        if address is None:
            return None
        return Endpoint(address, identity, weight, tuple(sorted(labels.items())))


def readEndpoint(source: str, data: Any, mtls: bool) -> Endpoint:
    """
    One endpoint object found by service discovery (an etcd key's value),
    with the keys and checks of a service's C{endpoints}.

    @param source: what to name in messages, as a file name is named.
    @param data: the decoded object.
    @param mtls: whether the proxy can reach endpoints with an identity.
    @raise ConfigError: naming every problem.
    """

    def read(reader: Reader) -> Endpoint | None:
        if isinstance(data, dict):
            return reader.endpoint(Table(reader, "", data))
        reader.errors.append(f"{source}: expected an endpoint object, got {data!r}")
        return None

    return _readDiscovered(source, mtls, read)


def readEndpoints(source: str, data: Any, mtls: bool) -> tuple[Endpoint, ...]:
    """
    A list of endpoint objects found by service discovery (a watched file),
    with the keys and checks of a service's C{endpoints}: all or nothing,
    so that a half-written list never replaces a good one.

    @param source: what to name in messages, as a file name is named.
    @param data: the decoded list.
    @param mtls: whether the proxy can reach endpoints with an identity.
    @raise ConfigError: naming every problem.
    """

    def read(reader: Reader) -> tuple[Endpoint, ...]:
        if isinstance(data, list):
            return tuple(reader.endpoints("", data))
        reader.errors.append(f"{source}: expected a list of endpoint objects, got {data!r}")
        return ()

    return _readDiscovered(source, mtls, read)


def _readDiscovered(source: str, mtls: bool, read: Callable[[Reader], Any]) -> Any:
    """
    What C{read} makes of a discovered document with a L{Reader} that names
    C{source} in its messages.

    @raise ConfigError: if C{read} recorded any problem.
    """
    reader = Reader(FilePath("."), source)
    reader.mtls = mtls
    result = read(reader)
    if reader.errors:
        raise ConfigError(reader.errors)
    return result


def _parseDNSName(text: str) -> str:
    """
    An SRV owner name such as C{_web._tcp.mesh.local}: a DNS name whose
    labels may start with an underscore.
    """
    if not isDNSName(text.replace("_", "x")):
        raise ValueError(f"expected a DNS name such as \"_web._tcp.mesh.local\", got {text!r}")
    return text


def _parseListen(text: str) -> str:
    """
    Check a Twisted server endpoint string without listening.

    C{systemd:} strings are only checked for their prefix: parsing one reads
    the inherited descriptors, which exist only under socket activation, and
    C{meshproxy check} must work anywhere.
    """
    from twisted.internet.endpoints import serverFromString

    if text.startswith("systemd:"):
        return text
    try:
        serverFromString(None, text)
    except Exception as e:
        raise ValueError(f"expected a Twisted endpoint string like \"tcp:4143\", got {text!r} ({e})") from None
    return text


def readDocument(path: FilePath) -> Mapping[str, Any]:
    """
    Read a TOML file.

    @raise ConfigError: if the file cannot be read or is not TOML.
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError([f"{path.path}: cannot read: {e.strerror}"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path.path}: not valid TOML: {e}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path.path}: not valid TOML: not UTF-8 ({e.reason} at byte {e.start})"]) from None


def load(path: FilePath | str) -> Config:
    """
    Read and check a configuration file.

    @raise ConfigError: naming every problem found, including a file that
        cannot be read or is not TOML.
    """
    if not isinstance(path, FilePath):
        path = FilePath(path)
    return Reader(path).read(readDocument(path))
