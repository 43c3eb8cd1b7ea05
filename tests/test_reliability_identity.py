"""
Reliability of the mesh identity: the issuer down for twice the renewal
window (the last 30 % of a certificate's lifetime, from the first renewal
attempt to the expiry) causes no outage before the certificates expire,
and the proxies renew soon after it comes back.  Real C{twistd} processes.
"""

from __future__ import annotations

import re
import time

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from .realprocess import Proxy, freePort, get, run, tool
from .test_identity_client import Echo, PingPong, echoMesh, servedCertificate
from .test_identity_issuer import IssuerProcess

#: The certificates' lifetime, in seconds: the proxies renew at 70 %.
LIFETIME = 40.0
#: The renewal window: from the first renewal attempt to the expiry.
WINDOW = 0.3 * LIFETIME
#: How long the issuer is down.
OUTAGE = 2 * WINDOW
#: How long before the first expiry the issuer is started again; it is
#: back a second or two later.  Late, so that a backoff doubling on to the
#: expiry would likely have made its last attempt before it is back (the
#: retries come 1, 2 and 4 s, 20 % either way, after the first attempt a
#: window before the expiry: the last 6.4 to 3.6 s before it); early
#: enough for the issuer's start on a loaded machine.
MARGIN = 5.0


class IssuerOutageTests(TestCase):
    """
    Two proxies with short-lived certificates carry traffic over mTLS while
    their issuer is stopped and started again.
    """

    timeout = 90
    _log = Logger()

    async def test_issuerDownTwiceTheRenewalWindow(self) -> None:
        """
        The issuer stops before either proxy's first renewal and stays
        down for twice the renewal window, coming back a few seconds before
        the first certificate expires.  Meanwhile a new connection through
        both proxies (a new mTLS handshake each) every tenth of a second
        succeeds, C{/ready} stays 200, and each proxy's renewal attempts
        fail; once the issuer is back (on the same port) both renew with
        their current certificate before it expires, and new connections
        get the new one.
        """
        caDir = FilePath(self.mktemp())
        code, output = await run([tool("meshproxy", "the meshproxy package"), "ca", "init", caDir.path])
        self.assertEqual(code, 0, output)
        config = f'cert_lifetime = "{LIFETIME:g}s"\n'
        issuer = IssuerProcess(self, caDir)
        issuer.config.setContent(issuer.config.getContent().replace(b'cert_lifetime = "1h"\n', config.encode()))
        app = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Echo))
        self.addCleanup(app.stopListening)
        inbound, outbound = freePort(), freePort()
        proxies = await echoMesh(self, caDir, issuer.port, app.getHost().port, inbound, outbound)
        await issuer.start()
        for proxy in proxies:
            await proxy.start()
        first = [await expiry(proxy) for proxy in proxies]
        # The issuer stops a full outage plus the margin before the first
        # expiry, so before the first renewal, a window before it; it is
        # started again a full outage later (and so back a little later).
        stopAt = min(first) - OUTAGE - MARGIN
        self.assertLess(time.time(), stopAt, "the proxies took too long to start")

        traffic = Traffic(outbound, proxies)
        running = Deferred.fromCoroutine(traffic.run())

        def stopTraffic() -> Deferred[None]:
            traffic.done = True
            return running

        self.addCleanup(stopTraffic)
        await deferLater(reactor, stopAt - time.time(), lambda: None)
        stopped, tripsBefore = time.time(), traffic.trips
        await issuer.stop()
        await deferLater(reactor, stopped + OUTAGE - time.time(), lambda: None)
        back = IssuerProcess(self, caDir, config=issuer.config.getContent().decode())
        back.port = issuer.port
        await back.start()
        returned, tripsDuring = time.time(), traffic.trips - tripsBefore

        renewed: list[float | None] = [None, None]
        while None in renewed:
            self.assertLess(time.time(), min(first), f"no renewal before the expiry:\n{renewals(proxies)}")
            for index, proxy in enumerate(proxies):
                if renewed[index] is None and await expiry(proxy) != first[index]:
                    renewed[index] = time.time()
            await deferLater(reactor, 0.05, lambda: None)
        await stopTraffic()

        self.assertGreater(tripsDuring, 50)
        self.assertEqual(traffic.failures, [])
        self.assertEqual(traffic.notReady, [])
        for proxy, expires, when in zip(proxies, first, renewed):
            self.assertLess(when, expires)
            samples = await proxy.samples()
            self.assertGreater(samples("identity_cert_refreshes_total", result="failure"), 0)
            self.assertEqual(samples("identity_cert_refreshes_total", result="success"), 2)
            self.assertGreater(await expiry(proxy), expires)
            self.assertIn("the current one stays in use", proxy.output)
            self.assertNotIn("EXPIRED", proxy.output)

        # A new connection gets the server's new certificate.
        served = await servedCertificate(self, inbound, caDir)
        self.assertEqual(served.not_valid_after_utc.timestamp(), await expiry(proxies[0]))
        report = (
            f"issuer down {returned - stopped:.1f}s (window {WINDOW:g}s, lifetime {LIFETIME:g}s),"
            f" back {min(first) - returned:.1f}s before the first expiry; {traffic.trips} connections,"
            f" {len(traffic.failures)} failed; renewed "
            + ", ".join(
                f"{when - returned:.2f}s after the issuer returned, {expires - when:.1f}s before expiry"
                f" (retries: {', '.join(re.findall(r'retrying in ([0-9.]+s)', proxy.output))})"
                for proxy, expires, when in zip(proxies, first, renewed)
            )
        )
        self._log.info("{report}", report=report)


async def expiry(proxy: Proxy) -> float | None:
    """
    When the proxy's current certificate expires, from its metrics.
    """
    return (await proxy.samples())("identity_cert_expiration_timestamp_seconds")


def renewals(proxies: list[Proxy]) -> str:
    """
    The identity client's log lines of C{proxies}.
    """
    return "\n".join(line for proxy in proxies for line in proxy.output.splitlines() if "IdentityClient" in line)


class Traffic:
    """
    New connections through both proxies, one after the other, paced, each
    carrying a message and its echo; and the proxies' C{/ready} between.

    @ivar done: set to stop after the current round.
    @ivar trips: the round trips made.
    @ivar failures: when and why a connection failed.
    @ivar notReady: when and which proxy's C{/ready} did not answer 200.
    """

    #: Seconds between two connections.
    PACE = 0.1

    def __init__(self, port: int, proxies: list[Proxy]) -> None:
        self._endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5)
        self._proxies = proxies
        self.done = False
        self.trips = 0
        self.failures: list[tuple[float, str]] = []
        self.notReady: list[tuple[float, int, object]] = []

    async def run(self) -> None:
        while not self.done:
            message = b"trip %d" % (self.trips,)
            try:
                client = PingPong()
                await connectProtocol(self._endpoint, client)
                echoed = await client.roundTrip(message)
                client.transport.loseConnection()
                await client.lost
                if echoed != message:
                    raise AssertionError(f"echoed {echoed!r}")
            except Exception as e:
                self.failures.append((time.time(), repr(e)))
            self.trips += 1
            for index, proxy in enumerate(self._proxies):
                try:
                    status, _ = await get(f"http://127.0.0.1:{proxy.adminPort}/ready")
                except Exception as e:
                    status = e
                if status != 200:
                    self.notReady.append((time.time(), index, status))
            await deferLater(reactor, self.PACE, lambda: None)
