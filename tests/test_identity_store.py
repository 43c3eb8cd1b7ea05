"""
Tests for L{meshproxy.identity.store}.
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.identity.store import IdentityError, IdentityStore, readAnchors, readCredentials

from .meshca import TestCA

NAME = "web.prod.mesh.local"


class IdentityStoreTests(SynchronousTestCase):
    def setUp(self):
        self.ca = TestCA(self)
        self.clock = Clock()
        self.clock.advance(time.time())
        self.store = IdentityStore(NAME, self.ca.anchors, self.clock)
        self.seen = []
        self.store.subscribe(self.seen.append)

    def test_update(self):
        """
        Good credentials become current, and every subscriber hears of them,
        a late one at once.
        """
        self.assertIsNone(self.store.current)
        key, chain = self.ca.credentials(NAME)
        credentials = self.store.update(key, chain)
        self.assertIs(self.store.current, credentials)
        self.assertEqual(self.seen, [credentials])
        self.assertEqual(credentials.chain, tuple(chain))
        self.assertEqual(credentials.expires, chain[0].not_valid_after_utc.timestamp())
        late = []
        self.store.subscribe(late.append)
        self.assertEqual(late, [credentials])

    def assertRefused(self, key, chain, *fragments):
        """
        L{IdentityStore.update} refuses, with C{fragments} in the message;
        the current credentials and the subscribers are untouched.
        """
        before = self.store.current
        with self.assertRaises(IdentityError) as e:
            self.store.update(key, chain)
        for fragment in fragments:
            self.assertIn(fragment, str(e.exception))
        self.assertIs(self.store.current, before)
        return str(e.exception)

    def test_otherIdentity(self):
        self.assertRefused(*self.ca.credentials("db.prod.mesh.local"), "not valid for 'web.prod.mesh.local'")

    def test_foreignCA(self):
        self.assertRefused(*TestCA(self).credentials(NAME), "under the trust anchors")

    def test_expired(self):
        self.assertRefused(*self.ca.expired(NAME), "not now")

    def test_wrongKey(self):
        _, chain = self.ca.credentials(NAME)
        self.assertRefused(ec.generate_private_key(ec.SECP256R1()), chain, "not the key of the certificate")

    def test_keyType(self):
        _, chain = self.ca.credentials(NAME)
        self.assertRefused(ec.generate_private_key(ec.SECP384R1()), chain, "P-256")

    def test_missingIntermediate(self):
        key, chain = self.ca.credentials(NAME)
        self.assertRefused(key, chain[:1], "under the trust anchors")

    def test_refusalKeepsCurrent(self):
        """
        A bad renewal leaves the credentials in use.
        """
        good = self.store.update(*self.ca.credentials(NAME))
        self.assertRefused(*self.ca.expired(NAME))
        self.assertIs(self.store.current, good)
        self.assertEqual(self.seen, [good])

    def test_noAnchors(self):
        self.assertRaises(IdentityError, IdentityStore, NAME, [], self.clock)

    def test_keyNeverShown(self):
        """
        Neither the C{repr} of credentials nor any refusal shows the key.
        """
        key, chain = self.ca.credentials(NAME)
        credentials = self.store.update(key, chain)
        secret = hex(key.private_numbers().private_value)[2:]
        self.assertNotIn(secret, repr(credentials))
        self.assertIn(NAME, repr(credentials))


class ReadTests(SynchronousTestCase):
    """
    Static credentials and anchors from PEM files.
    """

    def setUp(self):
        self.ca = TestCA(self)
        self.directory = FilePath(self.mktemp())
        self.directory.makedirs()

    def test_roundTrip(self):
        certFile, keyFile = self.ca.write(self.directory, NAME)
        before = keyFile.getContent()
        key, chain = readCredentials(certFile, keyFile)
        clock = Clock()
        clock.advance(time.time())
        store = IdentityStore(NAME, readAnchors(self.ca.anchorsFile), clock)
        self.assertEqual(store.update(key, chain).chain, tuple(chain))
        self.assertEqual(len(chain), 2)
        self.assertEqual(keyFile.getContent(), before)

    def test_notPEM(self):
        certFile, keyFile = self.ca.write(self.directory, NAME)
        keyFile.setContent(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
        with self.assertRaises(IdentityError) as e:
            readCredentials(certFile, keyFile)
        self.assertEqual(str(e.exception), f"{keyFile.path}: expected an unencrypted PEM private key")
        with self.assertRaises(IdentityError) as e:
            readAnchors(keyFile)
        self.assertIn(keyFile.path, str(e.exception))

    def test_missing(self):
        missing = self.directory.child("missing.pem")
        with self.assertRaises(IdentityError) as e:
            readAnchors(missing)
        self.assertIn("cannot read the trust anchors", str(e.exception))
