"""
Tests for L{meshproxy.http.router}: which route serves a request.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.http.h1 import ProtocolError
from meshproxy.http.router import AuthorityRouter, OneRoute, normalizeAuthority, splitTarget


class SplitTargetTests(SynchronousTestCase):
    """
    L{splitTarget} finds the authority a target names and the target an
    endpoint gets.
    """

    def test_forms(self):
        self.assertEqual(splitTarget(b"GET", b"/a?b"), (None, b"/a?b"))
        self.assertEqual(splitTarget(b"OPTIONS", b"*"), (None, b"*"))
        self.assertEqual(splitTarget(b"GET", b"http://web:8080/a/b?c"), (b"web:8080", b"/a/b?c"))
        self.assertEqual(splitTarget(b"GET", b"HTTP://web"), (b"web", b"/"))
        self.assertEqual(splitTarget(b"GET", b"http://web?q"), (b"web", b"/?q"))
        self.assertEqual(splitTarget(b"CONNECT", b"web:443"), (b"web:443", b"web:443"))

    def test_refused(self):
        """
        Targets of the wrong form, other schemes and user information are
        400s.
        """
        for method, target in [
            (b"GET", b"https://web/"),
            (b"GET", b"web/"),
            (b"GET", b"http:///x"),
            (b"GET", b"http://user@web/"),
            (b"CONNECT", b"/x"),
            (b"CONNECT", b"web"),
        ]:
            with self.assertRaises(ProtocolError, msg=target) as raised:
                splitTarget(method, target)
            self.assertEqual(raised.exception.status, 400)


class RouterTests(SynchronousTestCase):
    """
    Routers choose by normalised authority.
    """

    def test_normalize(self):
        self.assertEqual(normalizeAuthority(b"Web:80"), b"web")
        self.assertEqual(normalizeAuthority(b"web:8080"), b"web:8080")

    def test_authority(self):
        """
        Case and the default port do not matter; a port not listed falls
        back to the bare host; an unknown or missing authority has no route.
        """
        web, api = object(), object()
        router = AuthorityRouter({"web": web, "api:9000": api})
        self.assertIs(router.route(b"WEB"), web)
        self.assertIs(router.route(b"web:80"), web)
        self.assertIs(router.route(b"web:443"), web)
        self.assertIs(router.route(b"api:9000"), api)
        self.assertIsNone(router.route(b"api"))
        self.assertIsNone(router.route(b"other"))
        self.assertIsNone(router.route(None))
        self.assertIsNone(router.route(b"[::1]"))

    def test_one(self):
        route = object()
        self.assertIs(OneRoute(route).route(None), route)
        self.assertIs(OneRoute(route).route(b"anything"), route)
