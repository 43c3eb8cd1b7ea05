# -*- test-case-name: tests.test_identity_issuer -*-
"""
The certify exchange, as both ends see it: the JSON bodies of
C{POST /v1/certify}, and the client's part (a key that never leaves memory,
a CSR for it, and the checks on what comes back).

Request::

    {"csr": "<PEM certificate signing request>", "token": "<join token>"}

C{token} is left out to renew with the client certificate presented over
TLS.  Response (200)::

    {"certificate": "<leaf PEM>", "chain": ["<intermediate PEM>", ...], "expires": <unix seconds>}

A refusal is C{{"error": "<reason>", "detail": "<sentence>"}} with a 4xx or
5xx status; see L{meshproxy.identity.issuer} for the reasons.

Sans-I/O: bytes in, values out.  The identity client that renews a proxy's
certificate does the HTTP and the timing around these functions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = [
    "Issued",
    "MalformedMessage",
    "decodeError",
    "decodeRequest",
    "decodeResponse",
    "encodeError",
    "encodeRequest",
    "encodeResponse",
    "makeCSR",
    "makeKey",
]


class MalformedMessage(ValueError):
    """
    A certify request or response body is not what this module writes.
    """


@frozen
class Issued:
    """
    A certificate the issuer signed, with the chain that links it to the
    trust anchors.

    @ivar certificate: the leaf.
    @ivar chain: the intermediates, leaf's issuer first; a TLS endpoint
        sends them after the leaf.
    """

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    @property
    def expires(self) -> float:
        """
        When the leaf expires, in seconds since the epoch.
        """
        return self.certificate.not_valid_after_utc.timestamp()


def makeKey() -> ec.EllipticCurvePrivateKey:
    """
    A new ECDSA P-256 private key, the only kind the issuer certifies.
    """
    return ec.generate_private_key(ec.SECP256R1())


def makeCSR(key: ec.EllipticCurvePrivateKey, identity: str) -> bytes:
    """
    A PEM certificate signing request for C{identity}, with the name as both
    common name and sole DNS subject alternative name, as the issuer wants.
    """
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity)]))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(identity)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _object(body: bytes, fields: dict[str, bool]) -> dict:
    """
    Decode a JSON object whose keys are among C{fields} (name: required).
    Unknown keys are an error, not ignored: a misspelled C{"tokn"} should
    not turn a first issuance into a confusing renewal failure.
    """
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedMessage("the body is not JSON") from None
    if not isinstance(message, dict):
        raise MalformedMessage("the body is not a JSON object")
    unknown = sorted(set(message) - set(fields))
    missing = sorted(name for name, required in fields.items() if required and name not in message)
    if unknown or missing:
        raise MalformedMessage(f"unknown fields {unknown}, missing fields {missing}")
    return message


def encodeRequest(csr: bytes, token: str | None = None) -> bytes:
    """
    The body of a certify request: with C{token} for a first certificate,
    without to renew with the client certificate presented over TLS.
    """
    message = {"csr": csr.decode("ascii")}
    if token is not None:
        message["token"] = token
    return json.dumps(message).encode()


def decodeRequest(body: bytes) -> tuple[bytes, str | None]:
    """
    The CSR PEM and the join token (or L{None}) of a certify request.

    @raise MalformedMessage: if C{body} is not a certify request.
    """
    message = _object(body, {"csr": True, "token": False})
    csr, token = message["csr"], message.get("token")
    if not isinstance(csr, str) or not (token is None or isinstance(token, str)):
        raise MalformedMessage("csr and token must be strings")
    try:
        return csr.encode("ascii"), token
    except UnicodeEncodeError:
        raise MalformedMessage("the CSR is not ASCII PEM") from None


def encodeResponse(issued: Issued) -> bytes:
    """
    The body of a successful certify response.
    """
    return json.dumps(
        {
            "certificate": _pem(issued.certificate),
            "chain": [_pem(c) for c in issued.chain],
            "expires": int(issued.expires),
        }
    ).encode()


def decodeResponse(body: bytes, key: ec.EllipticCurvePrivateKey, identity: str) -> Issued:
    """
    The certificate in a successful certify response, checked against what
    was asked for: a certificate for another key or another name would make
    every handshake fail, so it is refused here rather than installed.

    Whether the chain leads to the trust anchors is for the caller to check
    with its anchors (the TLS layer does it at each handshake).

    @param key: the private key whose CSR was sent.
    @param identity: the identity asked for.

    @raise MalformedMessage: if C{body} is not a certify response, or
        certifies another key or name.
    """
    message = _object(body, {"certificate": True, "chain": True, "expires": True})
    chain = message["chain"]
    if not isinstance(chain, list) or not all(isinstance(pem, str) for pem in [message["certificate"], *chain]):
        raise MalformedMessage("certificate and chain must be PEM strings")
    try:
        leaf = x509.load_pem_x509_certificate(message["certificate"].encode("ascii"))
        intermediates = tuple(x509.load_pem_x509_certificate(pem.encode("ascii")) for pem in chain)
    except (ValueError, UnicodeEncodeError) as e:
        raise MalformedMessage(f"not a PEM certificate: {e}") from None
    issued = Issued(leaf, intermediates)
    if leaf.public_key() != key.public_key():
        raise MalformedMessage("the certificate is for another key")
    if _names(leaf) != [identity]:
        raise MalformedMessage(f"the certificate is for {_names(leaf)}, not {identity!r}")
    if message["expires"] != int(issued.expires):
        raise MalformedMessage("expires does not match the certificate")
    return issued


def _names(certificate: x509.Certificate) -> Sequence[str]:
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return names.get_values_for_type(x509.DNSName)


def encodeError(reason: str, detail: str) -> bytes:
    """
    The body of a refusal.
    """
    return json.dumps({"error": reason, "detail": detail}).encode()


def decodeError(body: bytes) -> str:
    """
    The reason and detail of a refusal, as one line for a log; whatever
    came back if the body is not one (a proxy in the way may have answered).
    """
    try:
        message = _object(body, {"error": True, "detail": True})
    except MalformedMessage:
        return body[:200].decode("utf-8", "replace")
    return f"{message['error']}: {message['detail']}"
