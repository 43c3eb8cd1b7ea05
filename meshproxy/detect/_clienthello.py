# -*- test-case-name: tests.test_detect -*-
"""
A strict, sans-I/O parser for the TLS ClientHello, the first message of a
TLS connection, to learn the server name (SNI) and the application
protocols (ALPN) a client asks for before any TLS library sees the bytes.

It works in two steps:

    1. Reassemble the handshake message from TLS records.  A client may
       split the ClientHello over several records (RFC 8446, section 5.1),
       and the records over several reads, so whole records are collected
       until the handshake header's length is satisfied.  This is done
       incrementally: re-reading every record on each read would let a
       client that sends tiny records one byte at a time make the work
       quadratic.
    2. Parse the complete message.  Every byte it declares is now at hand,
       so a length that overruns its enclosing structure is a lie and the
       message is malformed, never "incomplete".

The bytes come from an unauthenticated peer: every length is checked
against the structure that encloses it before anything is read, and
nothing here raises on any input.  What the parser rejects is not TLS that
it understands, and the caller forwards it untouched.
"""

from __future__ import annotations

import re

from attrs import frozen

from ._verdicts import TLS

__all__ = ["ClientHelloParser", "Malformed"]

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_ALPN = 16
_HOST_NAME = 0

# RFC 8446, section 5.1: an initial ClientHello's record may say TLS 1.0
# for the sake of old middleboxes; anything else says TLS 1.2.
_RECORD_VERSIONS = frozenset({0x0301, 0x0303})
# TLS 1.3 clients say TLS 1.2 here and list their real versions in an
# extension; TLS 1.0 and 1.1 clients are obsolete, but their SNI is as good
# as anyone's for routing a pass-through connection.
_CLIENT_VERSIONS = frozenset({0x0301, 0x0302, 0x0303})
_MAX_RECORD = 2**14
_MAX_HOST_NAME = 253

_LABEL = re.compile("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


@frozen
class Malformed:
    """
    The bytes are not a TLS ClientHello that this parser accepts.

    @ivar reason: What is wrong, for the logs.
    """

    reason: str


class _Invalid(Exception):
    """
    Raised inside this module to abandon parsing; it never escapes.
    """


class _Reader:
    """
    A cursor over a piece of the message that refuses to read past its end.

    @ivar _data: The bytes this reader may read.
    @ivar _offset: How many of them it has read.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._offset = 0

    def __len__(self) -> int:
        """
        @return: How many bytes are left to read.
        """
        return len(self._data) - self._offset

    # take, integer and opaque are called a few times per extension, and a
    # ClientHello has a dozen or more: they do their own arithmetic rather
    # than call each other and __len__, which took a third of the time of
    # parsing one, on every TLS connection.

    def take(self, count: int, what: str) -> bytes:
        start = self._offset
        end = start + count
        if end > len(self._data):
            raise _Invalid(f"{what} overruns its enclosing structure")
        self._offset = end
        return self._data[start:end]

    def integer(self, size: int, what: str) -> int:
        return int.from_bytes(self.take(size, what), "big")

    def opaque(self, lengthSize: int, what: str) -> bytes:
        """
        Read a TLS variable-length vector: a big-endian length of
        C{lengthSize} bytes, then that many bytes.
        """
        data = self._data
        start = self._offset + lengthSize
        if start > len(data):
            raise _Invalid(f"{what} overruns its enclosing structure")
        end = start + int.from_bytes(data[self._offset : start], "big")
        if end > len(data):
            raise _Invalid(f"{what} overruns its enclosing structure")
        self._offset = end
        return data[start:end]

    def vector(self, lengthSize: int, what: str) -> _Reader:
        """
        Like L{opaque}, but return a reader confined to the vector.
        """
        return _Reader(self.opaque(lengthSize, what))

    def lastVector(self, lengthSize: int, what: str) -> _Reader:
        """
        Like L{vector}, for a vector that must fill the rest of this reader,
        as a list fills the extension that carries it: bytes left over mean
        the two lengths disagree.
        """
        vector = self.vector(lengthSize, what)
        if len(self):
            raise _Invalid(f"{len(self)} bytes after the {what}")
        return vector


class ClientHelloParser:
    """
    Parse the ClientHello at the start of a connection, from bytes fed in
    as they arrive.

    @ivar _records: Bytes received but not yet part of a complete record.
    @ivar _handshake: The handshake bytes of the complete records so far.
    """

    def __init__(self) -> None:
        self._records = bytearray()
        self._handshake = bytearray()

    def feed(self, data: bytes) -> TLS | Malformed | None:
        """
        Consume more bytes from the client.

        @return: The L{TLS} verdict once the whole ClientHello has arrived;
            L{Malformed} once the bytes cannot be one; L{None} while they
            still might.  Once it returns a result, stop feeding it.
        """
        self._records += data
        try:
            message = self._reassemble()
            return None if message is None else _parseClientHello(_Reader(message))
        except _Invalid as e:
            return Malformed(str(e))

    def _reassemble(self) -> bytes | None:
        """
        Move complete records' payloads to the handshake bytes.

        @return: The first handshake message's body, without its header,
            or L{None} if more records are needed.

        @raise _Invalid: If a record or the handshake header is invalid.
        """
        while len(self._records) >= 5:
            contentType = self._records[0]
            version = int.from_bytes(self._records[1:3], "big")
            length = int.from_bytes(self._records[3:5], "big")
            if contentType != _HANDSHAKE:
                # This also rejects an alert or application data between the
                # fragments of the ClientHello, which RFC 8446 forbids.
                raise _Invalid(f"record type {contentType} is not handshake")
            if version not in _RECORD_VERSIONS:
                raise _Invalid(f"record version {version:#06x}")
            if not 0 < length <= _MAX_RECORD:
                # Zero-length handshake records are forbidden as well, and
                # would let a client hold detection open at no cost.
                raise _Invalid(f"record length {length}")
            if len(self._records) < 5 + length:
                return None
            self._handshake += self._records[5 : 5 + length]
            del self._records[: 5 + length]
            handshakeType = self._handshake[0]
            if handshakeType != _CLIENT_HELLO:
                raise _Invalid(f"handshake type {handshakeType} is not ClientHello")
            if len(self._handshake) >= 4:
                end = 4 + int.from_bytes(self._handshake[1:4], "big")
                if len(self._handshake) >= end:
                    return self._handshake[4:end]
        return None


def _parseClientHello(hello: _Reader) -> TLS:
    """
    Parse a complete ClientHello (RFC 8446, section 4.1.2), whose
    extensions are optional before TLS 1.3.

    @raise _Invalid: If it is malformed.
    """
    if hello.integer(2, "client version") not in _CLIENT_VERSIONS:
        raise _Invalid("client version")
    hello.take(32, "random")
    if len(hello.opaque(1, "session id")) > 32:
        raise _Invalid("session id longer than 32 bytes")
    suites = len(hello.opaque(2, "cipher suites"))
    if suites == 0 or suites % 2:
        raise _Invalid(f"cipher suites of {suites} bytes")
    if not hello.opaque(1, "compression methods"):
        raise _Invalid("no compression methods")
    if not len(hello):
        return TLS(None)

    extensions = hello.lastVector(2, "extensions")
    seen = set()
    sni = None
    alpn: tuple[str, ...] = ()
    while len(extensions):
        kind = extensions.integer(2, "extension type")
        body = extensions.opaque(2, f"extension {kind}")
        if kind in seen:
            raise _Invalid(f"duplicate extension {kind}")
        seen.add(kind)
        if kind == _SERVER_NAME:
            sni = _serverName(_Reader(body))
        elif kind == _ALPN:
            alpn = _protocols(_Reader(body))
    return TLS(sni, alpn)


def _serverName(extension: _Reader) -> str:
    """
    Parse the C{server_name} extension (RFC 6066, section 3).

    @return: Its host name, lower-cased, as DNS names compare.

    @raise _Invalid: If the list is empty, has a name type other than
        C{host_name} (the only one defined, whose encoding alone is known),
        or has more than one host name, or if the name is not a DNS name.
    """
    names = extension.lastVector(2, "server name list")
    hostNames = []
    while len(names):
        if names.integer(1, "server name type") != _HOST_NAME:
            raise _Invalid("server name type is not host_name")
        hostNames.append(names.opaque(2, "host name"))
    if len(hostNames) != 1:
        raise _Invalid(f"{len(hostNames)} host names")
    return _dnsName(hostNames[0])


def _dnsName(raw: bytes) -> str:
    """
    Validate a host name from the C{server_name} extension.

    RFC 6066 allows only an ASCII DNS host name without a trailing dot, and
    no IP address literal; it also rules out anything that would put control
    characters or look-alikes into routing decisions and logs.

    @raise _Invalid: If C{raw} is not such a name.
    """
    if not raw.isascii():
        raise _Invalid("host name is not ASCII")
    name = raw.decode("ascii").lower()
    labels = name.split(".")
    if (
        len(name) > _MAX_HOST_NAME
        or not all(_LABEL.fullmatch(label) for label in labels)
        # An all-numeric last label is an IPv4 address, not a name.
        or labels[-1].isdigit()
    ):
        raise _Invalid(f"host name {name[:_MAX_HOST_NAME]!r} is not a DNS name")
    return name


def _protocols(extension: _Reader) -> tuple[str, ...]:
    """
    Parse the ALPN extension (RFC 7301, section 3.1).

    Protocol names are opaque bytes; they are decoded as Latin-1 so that
    each byte maps to one character and no name is lost or rejected.

    @return: The protocol names, GREASE values (RFC 8701) left out, since
        they exist only to be ignored.

    @raise _Invalid: If the list or one of its names is empty.
    """
    names = extension.lastVector(2, "ALPN protocol list")
    if not len(names):
        raise _Invalid("empty ALPN protocol list")
    protocols = []
    while len(names):
        name = names.opaque(1, "ALPN protocol")
        if not name:
            raise _Invalid("empty ALPN protocol")
        if not _isGrease(name):
            protocols.append(name.decode("latin-1"))
    return tuple(protocols)


def _isGrease(name: bytes) -> bool:
    """
    @return: Whether C{name} is one of the ALPN values RFC 8701 reserves:
        two equal bytes of the form C{0x?A}.
    """
    return len(name) == 2 and name[0] == name[1] and name[0] & 0x0F == 0x0A
