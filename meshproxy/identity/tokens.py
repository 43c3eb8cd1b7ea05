# -*- test-case-name: tests.test_identity_tokens -*-
"""
Join tokens: a signed, expiring statement "may obtain a certificate for
IDENTITY", which C{meshproxy ca token} prints and a proxy presents once, to
get its first certificate.

A token is three dot-separated fields::

    mpt1.<base64url(payload)>.<base64url(HMAC-SHA256(token.key, "mpt1." + base64url(payload)))>

where the payload is the JSON object C{{"sub": identity, "iat": issued,
"exp": expires, "jti": nonce}} (times in whole seconds since the epoch).

Why an HMAC and not a signature: only the CA's own issuers check tokens,
and they hold C{token.key} anyway; any issuer replica sharing the CA
directory can check any token, so there is no token database to share.  The
nonce only makes two tokens minted in the same second for the same identity
differ; a token can be used more than once until it expires, so keep its
lifetime short.

Verification authenticates before it interprets: the MAC is compared (in
constant time) over the exact bytes received before a byte of the payload
is decoded as JSON, so nothing an attacker wrote is parsed unless the key
holder wrote it.  Base64 must be canonical (unpadded, no stray bits), so a
token has exactly one spelling.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets

__all__ = [
    "BAD_SIGNATURE",
    "EXPIRED",
    "MALFORMED",
    "TokenError",
    "UNSUPPORTED_VERSION",
    "mintToken",
    "verifyToken",
]

#: The token is not three base64url fields with a JSON payload of the
#: expected shape.
MALFORMED = "malformed_token"
#: The token is of a format version this code does not know.
UNSUPPORTED_VERSION = "unsupported_token_version"
#: The MAC does not match: the token was altered or made with another key.
BAD_SIGNATURE = "bad_token_signature"
#: The token's lifetime is over.
EXPIRED = "expired_token"

_VERSION = "mpt1"
_FIELD = re.compile(r"^[A-Za-z0-9_-]+$")
# Far more than a token with a 253-character identity needs; a bound before
# any work keeps a hostile request from making the issuer hash megabytes.
_MAX_LENGTH = 1024


class TokenError(Exception):
    """
    A join token is not acceptable.

    @ivar reason: why, one of L{MALFORMED}, L{UNSUPPORTED_VERSION},
        L{BAD_SIGNATURE}, L{EXPIRED}: a short, fixed word for metrics labels
        and API clients.
    @ivar detail: a sentence for the operator.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(field: str) -> bytes:
    """
    Decode one canonical unpadded base64url field.

    @raise ValueError: if C{field} is not one.
    """
    if not _FIELD.match(field):
        raise ValueError("not base64url")
    try:
        data = base64.urlsafe_b64decode(field + "=" * (-len(field) % 4))
    except binascii.Error as e:
        raise ValueError(str(e)) from None
    if _encode(data) != field:
        raise ValueError("not canonical base64url")
    return data


def _mac(key: bytes, signed: str) -> bytes:
    return hmac.new(key, signed.encode("ascii"), hashlib.sha256).digest()


def mintToken(key: bytes, identity: str, now: float, lifetime: float) -> str:
    """
    Make a token for C{identity}.

    @param key: the CA's C{token.key}.
    @param now: the current time in seconds since the epoch.
    @param lifetime: seconds the token is valid for, at least 1.

    @raise ValueError: if C{lifetime} is less than a second.
    """
    if lifetime < 1:
        raise ValueError(f"a token must be valid for at least a second, not {lifetime!r}")
    issued = int(now)
    claims = {"sub": identity, "iat": issued, "exp": issued + int(lifetime), "jti": secrets.token_urlsafe(12)}
    signed = f"{_VERSION}.{_encode(json.dumps(claims, separators=(',', ':'), sort_keys=True).encode())}"
    return f"{signed}.{_encode(_mac(key, signed))}"


def verifyToken(key: bytes, token: str, now: float) -> str:
    """
    Check a token and return the identity it grants.

    @param key: the CA's C{token.key}.
    @param now: the current time in seconds since the epoch.

    @raise TokenError: if the token is malformed, of another version, not
        made with C{key}, or expired at C{now}.
    """
    if len(token) > _MAX_LENGTH:
        raise TokenError(MALFORMED, f"longer than {_MAX_LENGTH} characters")
    fields = token.split(".")
    if len(fields) != 3:
        raise TokenError(MALFORMED, "expected three dot-separated fields")
    version, payload, signature = fields
    if version != _VERSION:
        if re.match(r"^mpt[0-9]+$", version):
            raise TokenError(UNSUPPORTED_VERSION, f"version {version!r}, expected {_VERSION!r}")
        raise TokenError(MALFORMED, "not a meshproxy join token")
    try:
        mac = _decode(signature)
        _decode(payload)
    except ValueError as e:
        raise TokenError(MALFORMED, str(e)) from None
    if not hmac.compare_digest(mac, _mac(key, f"{version}.{payload}")):
        raise TokenError(BAD_SIGNATURE, "the token was altered or made by another CA")
    claims = _claims(_decode(payload))
    if now >= claims["exp"]:
        raise TokenError(EXPIRED, f"the token for {claims['sub']} expired at {claims['exp']}")
    return claims["sub"]


def _claims(payload: bytes) -> dict:
    """
    The claims of an authentic payload, checked for shape: the key holder
    wrote it, but perhaps a different release of meshproxy did.

    @raise TokenError: L{MALFORMED} if the payload is not the expected JSON
        object.
    """
    try:
        claims = json.loads(payload)
    except ValueError:
        raise TokenError(MALFORMED, "the payload is not JSON") from None
    if (
        not isinstance(claims, dict)
        or set(claims) != {"sub", "iat", "exp", "jti"}
        or not isinstance(claims["sub"], str)
        or not all(type(claims[k]) is int for k in ("iat", "exp"))
        or not isinstance(claims["jti"], str)
        or claims["iat"] > claims["exp"]
    ):
        raise TokenError(MALFORMED, "the payload does not have the claims of a join token")
    return claims
