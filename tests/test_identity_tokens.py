"""
Tests for L{meshproxy.identity.tokens}: join tokens.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.identity.tokens import (
    BAD_SIGNATURE,
    EXPIRED,
    MALFORMED,
    UNSUPPORTED_VERSION,
    TokenError,
    mintToken,
    verifyToken,
)

KEY = bytes(range(32))
NOW = 1_800_000_000.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes, key: bytes = KEY, version: str = "mpt1") -> str:
    """
    A token with any payload, correctly MACed: what only the key holder
    could write.
    """
    head = f"{version}.{b64(payload)}"
    return f"{head}.{b64(hmac.new(key, head.encode(), hashlib.sha256).digest())}"


class TokenTests(SynchronousTestCase):
    def assertReason(self, reason: str, token: str, now: float = NOW, key: bytes = KEY) -> TokenError:
        error = self.assertRaises(TokenError, verifyToken, key, token, now)
        self.assertEqual(error.reason, reason)
        return error

    def test_roundTrip(self) -> None:
        """
        A token minted for an identity verifies, until its expiry, to that
        identity.
        """
        token = mintToken(KEY, "web.prod.mesh.local", NOW, 3600)
        self.assertTrue(token.startswith("mpt1."))
        self.assertEqual(verifyToken(KEY, token, NOW), "web.prod.mesh.local")
        self.assertEqual(verifyToken(KEY, token, NOW + 3599.9), "web.prod.mesh.local")

    def test_claims(self) -> None:
        """
        The payload states the identity, the issue and expiry times, and a
        nonce that makes every token unique.
        """
        first, second = (mintToken(KEY, "web.mesh.local", NOW, 600) for _ in range(2))
        claims = json.loads(base64.urlsafe_b64decode(first.split(".")[1] + "=="))
        self.assertEqual(
            {k: claims[k] for k in ("sub", "iat", "exp")},
            {"sub": "web.mesh.local", "iat": int(NOW), "exp": int(NOW) + 600},
        )
        self.assertNotEqual(first, second)

    def test_expired(self) -> None:
        token = mintToken(KEY, "web.mesh.local", NOW, 60)
        error = self.assertReason(EXPIRED, token, NOW + 60)
        self.assertIn("web.mesh.local", error.detail)
        self.assertReason(EXPIRED, token, NOW + 10**6)

    def test_otherKey(self) -> None:
        """
        A token made by another CA does not verify.
        """
        token = mintToken(bytes(32), "web.mesh.local", NOW, 60)
        self.assertReason(BAD_SIGNATURE, token)

    def test_tamperedPayload(self) -> None:
        """
        Changing the payload (a longer expiry, another identity) without the
        key breaks the MAC.
        """
        version, payload, mac = mintToken(KEY, "web.mesh.local", NOW, 60).split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        for change in [{"exp": claims["exp"] + 10**6}, {"sub": "db.mesh.local"}]:
            forged = b64(json.dumps({**claims, **change}).encode())
            self.assertReason(BAD_SIGNATURE, f"{version}.{forged}.{mac}")

    def test_tamperedSignature(self) -> None:
        version, payload, mac = mintToken(KEY, "web.mesh.local", NOW, 60).split(".")
        raw = bytearray(base64.urlsafe_b64decode(mac + "="))
        raw[0] ^= 1
        self.assertReason(BAD_SIGNATURE, f"{version}.{payload}.{b64(bytes(raw))}")
        self.assertReason(BAD_SIGNATURE, f"{version}.{payload}.{b64(bytes(raw[:16]))}")

    def test_wrongVersion(self) -> None:
        """
        A token of another format version is refused as such, even with a
        valid MAC, so that an operator mixing releases sees why.
        """
        _, payload, _ = mintToken(KEY, "web.mesh.local", NOW, 60).split(".")
        self.assertReason(UNSUPPORTED_VERSION, signed(base64.urlsafe_b64decode(payload + "=="), version="mpt2"))

    def test_garbage(self) -> None:
        token = mintToken(KEY, "web.mesh.local", NOW, 60)
        version, payload, mac = token.split(".")
        for garbage in [
            "",
            "hello",
            "a.b",
            "jwt.eyJ.sig",
            "mpt1..",
            f"mpt1.{payload}",
            f"{token}.extra",
            f"mpt1.{payload}=.{mac}",
            f"mpt1.{payload}.{mac}=",
            f"mpt1.{payload}.{mac[:-1]}!",
            f"mpt1.{payload}+/.{mac}",
            " " + token,
            "mpt1." + "A" * 2000 + "." + mac,
        ]:
            self.assertReason(MALFORMED, garbage)

    def test_nonCanonicalBase64(self) -> None:
        """
        Unused bits set in the last base64 character give another spelling of
        the same MAC; it is refused so that a token has one spelling.
        """
        version, payload, mac = mintToken(KEY, "web.mesh.local", NOW, 60).split(".")
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        # 32 bytes are 43 characters whose last carries 2 unused bits.
        respelled = mac[:-1] + alphabet[alphabet.index(mac[-1]) ^ 1]
        self.assertReason(MALFORMED, f"{version}.{payload}.{respelled}")

    def test_authenticButWrongShape(self) -> None:
        """
        A payload with a valid MAC but not the claims of a join token (as
        another release might write) is malformed, not trusted.
        """
        for payload in [
            b"not json",
            b"[]",
            b'{"sub": "web.mesh.local"}',
            b'{"sub": "web.mesh.local", "iat": 1, "exp": true, "jti": "x"}',
            b'{"sub": 5, "iat": 1, "exp": 2000000000, "jti": "x"}',
            b'{"sub": "web.mesh.local", "iat": 2000000001, "exp": 2000000000, "jti": "x"}',
            b'{"sub": "web.mesh.local", "iat": 1, "exp": 2000000000, "jti": "x", "admin": true}',
        ]:
            self.assertReason(MALFORMED, signed(payload))

    def test_lifetimeAtLeastASecond(self) -> None:
        self.assertRaises(ValueError, mintToken, KEY, "web.mesh.local", NOW, 0.5)

    @given(st.text(max_size=300))
    def test_anyText(self, text: str) -> None:
        """
        Whatever a client sends, verification refuses it with a reason and
        never fails otherwise.
        """
        self.assertRaises(TokenError, verifyToken, KEY, text, NOW)
