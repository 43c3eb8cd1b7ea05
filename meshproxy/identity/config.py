# -*- test-case-name: tests.test_identity_issuer -*-
"""
The issuer's configuration file, C{identity.toml}::

    [issuer]
    listen = "tcp:8443:interface=127.0.0.1"   # a Twisted endpoint string
    ca_dir = "ca"                             # made by `meshproxy ca init`; relative to this file
    cert_lifetime = "24h"                     # lifetime of the certificates issued

Read with the proxy configuration's table readers (L{meshproxy.config}), so
problems are reported the same way: every one of them, each naming the file
and the key.  The CA directory is loaded while reading, so a missing or
broken CA is a configuration error found at start, not at the first
request.
"""

from __future__ import annotations

from typing import Any, Mapping

from attrs import frozen
from twisted.python.filepath import FilePath

from ..config import ConfigError, Reader, Table, parseDuration, readDocument
from .ca import CAError, CertificateAuthority

__all__ = ["DEFAULT_LIFETIME", "DEFAULT_LISTEN", "IssuerConfig", "MINIMUM_LIFETIME", "load"]

#: Where the issuer listens unless told: loopback only, so that exposing it
#: is a decision.
DEFAULT_LISTEN = "tcp:8443:interface=127.0.0.1"

#: The lifetime of the certificates issued unless told, as linkerd's.
DEFAULT_LIFETIME = 86400.0

#: The shortest certificate lifetime accepted.  Tests and demos run short
#: lifetimes to watch renewals happen; proxies renew at 70 % of the
#: lifetime but at least 10 seconds apart, so a certificate must outlive
#: those 10 seconds with a margin (70 % of 15 s is 10.5 s).
MINIMUM_LIFETIME = 15.0


@frozen
class IssuerConfig:
    """
    A whole, valid issuer configuration.

    @ivar path: the file it was read from.
    @ivar listen: the endpoint string of the HTTPS listener.
    @ivar authority: the CA loaded from C{ca_dir}.
    @ivar cert_lifetime: seconds a certificate is issued for.
    """

    path: FilePath
    listen: str
    authority: CertificateAuthority
    cert_lifetime: float = DEFAULT_LIFETIME


def _read(reader: Reader, document: Mapping[str, Any]) -> IssuerConfig:
    root = Table(reader, "", document)
    section = root.get("issuer", dict, "a table", required=True)
    root.done()
    if section is None:
        raise ConfigError(reader.errors)
    table = Table(reader, root.path("issuer"), section)
    listen = reader.listen(table, "listen", DEFAULT_LISTEN)

    def authority(text: str) -> CertificateAuthority:
        try:
            return CertificateAuthority.load(reader.relative(text))
        except CAError as e:
            raise ValueError(f"not a usable CA directory: {e}") from None

    ca = table.convert("ca_dir", authority, required=True)
    lifetime = table.convert("cert_lifetime", parseDuration, DEFAULT_LIFETIME)
    if lifetime < MINIMUM_LIFETIME:
        table.error("cert_lifetime", f"expected at least {MINIMUM_LIFETIME:g}s, got {lifetime:g}s")
    table.done()
    if reader.errors:
        raise ConfigError(reader.errors)
    return IssuerConfig(reader.path, listen, ca, lifetime)


def load(path: FilePath | str) -> IssuerConfig:
    """
    Read and check an issuer configuration file, and load its CA.

    @raise ConfigError: naming every problem found.
    """
    if not isinstance(path, FilePath):
        path = FilePath(path)
    return _read(Reader(path), readDocument(path))
