# -*- test-case-name: tests.test_demo -*-
"""
The files of the demo's mesh: a CA, a join token per proxy, the issuer's
configuration and one configuration per proxy, all written with the same
library calls and in the same shape as an operator's (C{meshproxy ca
init}, C{meshproxy ca token}, README.rst), so the demo shows the real
thing rather than a special mode.

Every listener is on 127.0.0.1 on a port free when the files are written.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from attrs import frozen
from twisted.python.filepath import FilePath

from .identity.ca import initialize
from .identity.tokens import mintToken

__all__ = ["SERVICE", "TRUST_DOMAIN", "Member", "Mesh", "writeMesh"]

#: The trust domain of the demo's CA; every identity ends with it.
TRUST_DOMAIN = "mesh.local"

#: The service the client-side proxy balances over the server-side ones.
SERVICE = "web"

#: How long the demo's join tokens and certificates last: longer than any
#: demo runs, short enough to be worthless if the files leaked.
_LIFETIME = 3600.0


def _freePort() -> int:
    """
    A TCP port of 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@frozen
class Member:
    """
    One C{twistd} process of the mesh.

    @ivar name: how the demo calls it.
    @ivar plugin: the twistd plugin, C{meshproxy} or C{meshproxy-identity}.
    @ivar config: its configuration file.
    @ivar port: the port that says it is up: the admin port of a proxy
        (whose C{/ready} answers 200 when it is), the issuer's listener.
    @ivar address: the address of its inbound listener, for a server-side
        proxy: the endpoint of the service it stands for.
    """

    name: str
    plugin: str
    config: FilePath
    port: int
    address: str = ""


@frozen
class Mesh:
    """
    Everything the demo wrote and where it listens.

    @ivar issuer: the identity issuer.
    @ivar servers: the server-side proxies, one per application.
    @ivar client: the client-side proxy.
    @ivar upstream: the client proxy's listener bound to L{SERVICE}.
    @ivar outbound: the client proxy's HTTP proxy listener, which routes by
        authority.
    """

    issuer: Member
    servers: Sequence[Member]
    client: Member
    upstream: int
    outbound: int

    @property
    def members(self) -> list[Member]:
        return [self.issuer, *self.servers, self.client]


def _toml(path: FilePath, text: str) -> FilePath:
    path.setContent(text.encode())
    return path


def writeMesh(directory: FilePath, apps: Sequence[tuple[str, int]], now: float | None = None) -> Mesh:
    """
    Write a CA, an issuer configuration, a server-side proxy configuration
    in front of each application and a client-side proxy configuration
    that balances service L{SERVICE} over the server-side proxies with
    p2c-peak-ewma, over mTLS.

    @param directory: an empty directory to write into.
    @param apps: the name and port of each application.
    @param now: the time to date the CA and tokens from.
    """
    now = time.time() if now is None else now
    authority = initialize(directory.child("ca"), TRUST_DOMAIN, now)
    anchors = directory.child("ca").child("ca.pem").path
    issuerPort = _freePort()
    issuer = Member(
        "issuer",
        "meshproxy-identity",
        _toml(
            directory.child("identity.toml"),
            f'[issuer]\nlisten = "tcp:{issuerPort}:interface=127.0.0.1"\nca_dir = "ca"\ncert_lifetime = "1h"\n',
        ),
        issuerPort,
    )

    def proxy(name: str, listeners: str, address: str = "") -> Member:
        identity = f"{name}.{TRUST_DOMAIN}"
        authority.checkIdentity(identity)
        token = directory.child(f"{name}.token")
        token.setContent(mintToken(authority.tokenKey, identity, now, _LIFETIME).encode())
        admin = _freePort()
        config = _toml(
            directory.child(f"{name}.toml"),
            f'[proxy]\nidentity = "{identity}"\ntrust_anchors = "{anchors}"\nshutdown_grace = "2s"\n\n'
            f'[identity]\nissuer = "127.0.0.1:{issuerPort}"\nissuer_identity = "{authority.issuerIdentity}"\n'
            f'token_file = "{token.path}"\n\n'
            f'[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n\n{listeners}',
        )
        return Member(name, "meshproxy", config, admin, address)

    servers = []
    for name, app in apps:
        inbound = _freePort()
        servers.append(
            proxy(
                name,
                f'[[inbound]]\nlisten = "tcp:{inbound}:interface=127.0.0.1"\napp = "127.0.0.1:{app}"\n',
                f"127.0.0.1:{inbound}",
            )
        )
    endpoints = ",\n".join(
        f'  {{ address = "{server.address}", identity = "{server.name}.{TRUST_DOMAIN}" }}' for server in servers
    )
    upstream, outbound = _freePort(), _freePort()
    client = proxy(
        "client",
        f'[[upstreams]]\nlisten = "tcp:{upstream}:interface=127.0.0.1"\nservice = "{SERVICE}"\n\n'
        f'[outbound]\nlisten = "tcp:{outbound}:interface=127.0.0.1"\n\n'
        f'[services.{SERVICE}]\nbalancer = "p2c-peak-ewma"\nendpoints = [\n{endpoints},\n]\n',
    )
    return Mesh(issuer, servers, client, upstream, outbound)
