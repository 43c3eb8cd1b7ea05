"""
Tests for L{meshproxy.config}.
"""

from textwrap import dedent

from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import (
    Address,
    ConfigError,
    Endpoint,
    Inbound,
    Outbound,
    Upstream,
    load,
    parseAddress,
    parseDuration,
    parseSize,
)

VALID = """\
[proxy]
identity = "web.prod.mesh.local"
trust_anchors = "ca.pem"
detect_timeout = "250ms"
connect_timeout = "2s"
shutdown_grace = "1m"

[identity]
cert_file = "ca.pem"
key_file = "ca.pem"

[admin]
listen = "tcp:0:interface=127.0.0.1"

[[inbound]]
listen = "tcp:0:interface=127.0.0.1"
app = "127.0.0.1:8080"

[[inbound]]
listen = "tcp:0:interface=127.0.0.1"
app = "[::1]:3306"
opaque = true

[[upstreams]]
listen = "tcp:9001:interface=127.0.0.1"
service = "web"

[services.web]
authorities = ["web", "web:80"]
endpoints = [
  { address = "10.0.0.5:4143", identity = "web.prod.mesh.local", weight = 3, labels = { zone = "a" } },
  { address = "10.0.0.6:4143" },
]
"""


class DurationTests(SynchronousTestCase):
    def test_units(self):
        self.assertEqual(
            [parseDuration(t) for t in ("250ms", "10s", "5m", "24h", "1d", "1.5s", "0")],
            [0.25, 10.0, 300.0, 86400.0, 86400.0, 1.5, 0.0],
        )

    def test_invalid(self):
        for text in ("10", "s", "-1s", "10 s", "1w", ""):
            with self.assertRaises(ValueError) as e:
                parseDuration(text)
            self.assertIn("250ms", str(e.exception))


class SizeTests(SynchronousTestCase):
    def test_units(self):
        self.assertEqual(
            [parseSize(t) for t in ("0", "512B", "64KiB", "10MiB", "1GiB")],
            [0, 512, 65536, 10 << 20, 1 << 30],
        )

    def test_invalid(self):
        for text in ("10", "1.5MiB", "-1KiB", "64KB", "64 KiB", ""):
            with self.assertRaises(ValueError) as e:
                parseSize(text)
            self.assertIn("64KiB", str(e.exception))


class AddressTests(SynchronousTestCase):
    def test_forms(self):
        self.assertEqual(parseAddress("10.0.0.5:4143"), Address("10.0.0.5", 4143))
        self.assertEqual(parseAddress("[::1]:80"), Address("::1", 80))
        self.assertEqual(parseAddress("web.local:80"), Address("web.local", 80))
        self.assertEqual(str(Address("::1", 80)), "[::1]:80")
        self.assertEqual(str(Address("web", 80)), "web:80")

    def test_invalid(self):
        for text in ("10.0.0.5", ":80", "host:", "host:0", "host:65536", "host:x"):
            self.assertRaises(ValueError, parseAddress, text)


class _ConfigFiles:
    """
    Write configuration files and collect their errors.
    """

    def write(self, text, anchors=True):
        directory = FilePath(self.mktemp())
        directory.makedirs()
        if anchors:
            directory.child("ca.pem").setContent(b"placeholder")
        path = directory.child("meshproxy.toml")
        path.setContent(dedent(text).encode())
        return path

    def errors(self, text, **kw):
        path = self.write(text, **kw)
        with self.assertRaises(ConfigError) as e:
            load(path)
        prefix = path.path + ": "
        for line in e.exception.errors:
            self.assertTrue(line.startswith(prefix), line)
        return [line[len(prefix) :] for line in e.exception.errors]


class LoadTests(_ConfigFiles, SynchronousTestCase):
    def test_valid(self):
        path = self.write(VALID)
        config = load(path.path)
        self.assertEqual(config.path, path)
        self.assertEqual(config.proxy.identity, "web.prod.mesh.local")
        self.assertEqual(config.proxy.trust_anchors, path.sibling("ca.pem"))
        self.assertEqual(
            (config.proxy.detect_timeout, config.proxy.connect_timeout, config.proxy.shutdown_grace),
            (0.25, 2.0, 60.0),
        )
        self.assertEqual(
            config.inbound,
            (
                Inbound("tcp:0:interface=127.0.0.1", Address("127.0.0.1", 8080), False),
                Inbound("tcp:0:interface=127.0.0.1", Address("::1", 3306), True),
            ),
        )
        self.assertEqual(config.upstreams, (Upstream("tcp:9001:interface=127.0.0.1", "web"),))
        web = config.services["web"]
        self.assertEqual(web.balancer, "p2c-peak-ewma")
        self.assertEqual(web.authorities, ("web", "web:80"))
        self.assertEqual(
            web.endpoints,
            (
                Endpoint(Address("10.0.0.5", 4143), "web.prod.mesh.local", 3, (("zone", "a"),)),
                Endpoint(Address("10.0.0.6", 4143)),
            ),
        )

    def test_defaults(self):
        config = load(self.write('[[inbound]]\nlisten = "tcp:4143"\napp = "127.0.0.1:80"\n'))
        self.assertEqual(config.proxy.detect_timeout, 10.0)
        self.assertEqual(config.proxy.shutdown_grace, 30.0)
        self.assertEqual(config.admin.listen, "tcp:4191:interface=127.0.0.1")
        self.assertFalse(config.admin.shutdown)
        self.assertIsNone(config.identity)

    def test_limits(self):
        """
        The C{max_*} caps of C{[proxy]}: defaults, sizes, and values that
        make no sense refused with the key named.
        """
        inbound = '[[inbound]]\nlisten = "tcp:4143"\napp = "127.0.0.1:80"\n'
        proxy = load(self.write(inbound)).proxy
        self.assertEqual(
            (proxy.max_connections, proxy.max_requests, proxy.max_header_bytes, proxy.max_request_body),
            (0, 10000, 65536, 0),
        )
        text = '[proxy]\nmax_connections = 100\nmax_requests = 5\nmax_header_bytes = "8KiB"\nmax_request_body = "1MiB"\n'
        proxy = load(self.write(text + inbound)).proxy
        self.assertEqual(
            (proxy.max_connections, proxy.max_requests, proxy.max_header_bytes, proxy.max_request_body),
            (100, 5, 8192, 1 << 20),
        )
        errors = self.errors('[proxy]\nmax_connections = -1\nmax_requests = "5"\nmax_header_bytes = "100B"\nmax_request_body = "1MB"\n' + inbound)
        self.assertEqual(
            errors,
            [
                "proxy.max_requests: expected a number of requests, got '5'",
                "proxy.max_request_body: expected a size like \"64KiB\" or \"10MiB\", got '1MB'",
                "proxy.max_connections: expected 0 (no limit of its own) or more, got -1",
                "proxy.max_header_bytes: expected at least 1KiB, got 100 bytes",
            ],
        )

    def test_h2KeepAlive(self):
        """
        C{[proxy] h2_keepalive} is a duration, 10 s unless set; 0 turns the
        PINGs off.
        """
        inbound = '[[inbound]]\nlisten = "tcp:4143"\napp = "127.0.0.1:80"\n'
        self.assertEqual(load(self.write(inbound)).proxy.h2_keepalive, 10.0)
        self.assertEqual(load(self.write('[proxy]\nh2_keepalive = "0"\n' + inbound)).proxy.h2_keepalive, 0.0)

    def test_adminShutdown(self):
        """
        C{[admin] shutdown} enables C{POST /shutdown}; it must be a boolean.
        """
        inbound = '[[inbound]]\nlisten = "tcp:4143"\napp = "127.0.0.1:80"\n'
        self.assertTrue(load(self.write("[admin]\nshutdown = true\n" + inbound)).admin.shutdown)
        errors = self.errors('[admin]\nshutdown = "yes"\n' + inbound)
        self.assertEqual(len(errors), 1)
        self.assertIn("admin.shutdown: expected true or false", errors[0])

    def test_upgrade(self):
        """
        HTTP/1 requests to a service's meshed endpoints are upgraded to
        HTTP/2 unless the service says C{upgrade = "none"}.
        """
        self.assertEqual(load(self.write(VALID)).services["web"].upgrade, "h2")
        none = VALID.replace('authorities = ["web", "web:80"]\n', 'authorities = ["web"]\nupgrade = "none"\n')
        self.assertEqual(load(self.write(none)).services["web"].upgrade, "none")

    def test_authoritiesDefaultToName(self):
        config = load(self.write(VALID.replace('authorities = ["web", "web:80"]\n', "")))
        self.assertEqual(config.services["web"].authorities, ("web",))

    def test_everyErrorNamed(self):
        """
        Every problem is reported, each with its key path and expectation.
        """
        text = dedent(
            """\
            [proxy]
            identiy = "web"
            detect_timeout = 10
            shutdown_grace = "forever"
            trust_anchors = "missing.pem"

            [admin]
            listen = "tcpp:4191"

            [[inbound]]
            listen = "tcp:4143"

            [[upstreams]]
            listen = "tcp:9001"
            service = "nosuch"

            [services.web]
            balancer = "fastest"
            endpoints = [{ address = "10.0.0.5", weight = 0 }, { adress = "10.0.0.6:1" }, "x"]
            opaque = "yes"
            upgrade = "h3"

            [extra]
            """
        )
        errors = self.errors(text)
        expected = [
            "proxy.detect_timeout: expected a string",
            "proxy.shutdown_grace: expected a duration",
            "proxy.trust_anchors: no such file",
            "proxy.identiy: unknown key",
            "admin.listen: expected a Twisted endpoint string",
            "inbound[0].app: missing",
            "services.web.balancer: expected one of p2c-peak-ewma, round-robin, least-request, random, got 'fastest'",
            "services.web.opaque: expected true or false",
            "services.web.upgrade: expected \"h2\" or \"none\", got 'h3'",
            "services.web.endpoints[0].address: expected \"host:port\", got '10.0.0.5'",
            "services.web.endpoints[0].weight: expected a positive integer, got 0",
            "services.web.endpoints[1].address: missing",
            "services.web.endpoints[1].adress: unknown key",
            "services.web.endpoints[2]: expected an endpoint table",
            "upstreams[0].service: no [services.nosuch] table",
            "extra: unknown key",
        ]
        self.assertEqual(len(errors), len(expected), "\n".join(errors))
        for prefix in expected:
            self.assertTrue(
                any(line.startswith(prefix) for line in errors),
                f"no error starting {prefix!r} in:\n" + "\n".join(errors),
            )

    def test_wrongTypes(self):
        errors = self.errors(
            """\
            admin = "x"
            inbound = { listen = "tcp:1" }
            [[upstreams]]
            listen = 9001
            service = 3
            """
        )
        self.assertEqual(
            errors,
            [
                "admin: expected a table, got 'x'",
                "inbound: expected an array of tables, got {'listen': 'tcp:1'}",
                "upstreams[0].listen: expected a string, got 9001",
                "upstreams[0].service: expected a service name, got 3",
            ],
        )

    def test_noListeners(self):
        self.assertEqual(
            self.errors("[proxy]\n"),
            ["inbound: no listeners: configure at least one [[inbound]], [[upstreams]] or [outbound]"],
        )

    def test_boolIsNotAnInteger(self):
        errors = self.errors(VALID.replace("weight = 3", "weight = true"))
        self.assertEqual(errors, ["services.web.endpoints[0].weight: expected a positive integer, got True"])

    def test_identityMustBeDNSName(self):
        errors = self.errors(VALID.replace('identity = "web.prod.mesh.local"\ntrust', 'identity = "Web_Prod"\ntrust'))
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("proxy.identity: expected a lower-case DNS name"), errors)

    def test_outbound(self):
        """
        C{[outbound]} names the listener that routes HTTP by authority, and
        is listener enough on its own.
        """
        config = load(self.write('[outbound]\nlisten = "tcp:4140"\n[proxy]\nresponse_timeout = "2s"\n'))
        self.assertEqual(config.outbound, Outbound("tcp:4140"))
        self.assertEqual(config.proxy.response_timeout, 2.0)
        self.assertEqual(self.errors('[outbound]\nlisten = "tcp:4140"\nport = 1\n'), ["outbound.port: unknown key"])

    def test_notTOML(self):
        errors = self.errors("[proxy\n")
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("not valid TOML"), errors)

    def test_unreadable(self):
        missing = FilePath(self.mktemp())
        with self.assertRaises(ConfigError) as e:
            load(missing)
        self.assertEqual(e.exception.errors, [f"{missing.path}: cannot read: No such file or directory"])

    def test_systemdListenerAccepted(self):
        """
        C{systemd:} listeners are accepted without socket activation in
        force, so C{meshproxy check} works on any machine.
        """
        config = load(self.write(VALID.replace('"tcp:9001:interface=127.0.0.1"', '"systemd:domain=INET:index=0"')))
        self.assertEqual(config.upstreams[0].listen, "systemd:domain=INET:index=0")


class IdentityConfigTests(_ConfigFiles, SynchronousTestCase):
    """
    The checks that tie C{[proxy] identity}, C{[identity]} and meshed
    endpoints together, each naming its key.
    """

    LISTENER = '[[inbound]]\nlisten = "tcp:4143"\napp = "127.0.0.1:80"\n'
    PROXY = '[proxy]\nidentity = "web.mesh.local"\ntrust_anchors = "ca.pem"\n'

    def assertOneError(self, errors, prefix):
        self.assertEqual(len(errors), 1, errors)
        self.assertTrue(errors[0].startswith(prefix), errors)

    def test_staticCertificate(self):
        path = self.write(
            self.PROXY + '[identity]\ncert_file = "ca.pem"\nkey_file = "ca.pem"\n' + self.LISTENER
        )
        config = load(path)
        self.assertEqual((config.identity.cert_file, config.identity.key_file), (path.sibling("ca.pem"),) * 2)

    def test_certWithoutKey(self):
        errors = self.errors(self.PROXY + '[identity]\ncert_file = "ca.pem"\n' + self.LISTENER)
        self.assertEqual(errors, ["identity.key_file: missing: cert_file needs key_file too"])

    def test_keyWithoutCert(self):
        errors = self.errors(self.PROXY + '[identity]\nkey_file = "ca.pem"\n' + self.LISTENER)
        self.assertEqual(errors, ["identity.cert_file: missing: key_file needs cert_file too"])

    def test_staticAndIssuer(self):
        errors = self.errors(
            self.PROXY + '[identity]\nissuer = "127.0.0.1:8443"\nissuer_identity = "identity.mesh.local"\ntoken_file = "ca.pem"\n'
            'cert_file = "ca.pem"\nkey_file = "ca.pem"\n' + self.LISTENER
        )
        self.assertOneError(errors, "identity.cert_file: a static certificate and an issuer (issuer, issuer_identity, token_file)")

    def test_identityNeedsAnchors(self):
        errors = self.errors(
            '[proxy]\nidentity = "web.mesh.local"\n[identity]\ncert_file = "ca.pem"\nkey_file = "ca.pem"\n'
            + self.LISTENER
        )
        self.assertOneError(errors, "proxy.trust_anchors: missing")

    def test_identityNeedsACertificateSource(self):
        """
        An identity with no [identity] table could never get a certificate,
        so the proxy would never be ready: refused, naming the table.
        """
        errors = self.errors('[proxy]\nidentity = "web.mesh.local"\ntrust_anchors = "ca.pem"\n' + self.LISTENER)
        self.assertOneError(errors, "identity: missing: proxy.identity needs an [identity] table")

    def test_identityTableNeedsIdentity(self):
        errors = self.errors('[identity]\ncert_file = "ca.pem"\nkey_file = "ca.pem"\n' + self.LISTENER)
        self.assertEqual(errors, ["identity: this table certifies proxy.identity, which is not set"])

    def test_meshedEndpointNeedsIdentity(self):
        errors = self.errors(
            '[[upstreams]]\nlisten = "tcp:9001"\nservice = "web"\n'
            '[services.web]\nendpoints = [{ address = "10.0.0.5:4143", identity = "web.mesh.local" }]\n'
        )
        self.assertOneError(errors, "services.web.endpoints[0].identity: reaching an endpoint over mTLS")

    PROXY = '[proxy]\nidentity = "web.mesh.local"\ntrust_anchors = "ca.pem"\n'

    def test_issuer(self):
        path = self.write(
            self.PROXY + '[identity]\nissuer = "127.0.0.1:8443"\nissuer_identity = "identity.mesh.local"\n'
            'token_file = "ca.pem"\n' + self.LISTENER
        )
        identity = load(path).identity
        self.assertEqual(
            (identity.issuer, identity.issuer_identity, identity.token_file),
            (Address("127.0.0.1", 8443), "identity.mesh.local", path.sibling("ca.pem")),
        )

    def test_issuerNeedsIdentityAndToken(self):
        """
        An issuer without C{issuer_identity} or C{token_file} is an error
        naming each missing key.
        """
        errors = self.errors(self.PROXY + '[identity]\nissuer = "127.0.0.1:8443"\n' + self.LISTENER)
        self.assertEqual([error.split(": ")[0] for error in errors], ["identity.issuer_identity", "identity.token_file"])
        self.assertIn("an issuer needs issuer, issuer_identity and token_file", errors[0])
        errors = self.errors(self.PROXY + '[identity]\ntoken_file = "ca.pem"\n' + self.LISTENER)
        self.assertEqual([error.split(": ")[0] for error in errors], ["identity.issuer", "identity.issuer_identity"])

    def test_identityNeedsASource(self):
        """
        An C{[identity]} table with neither an issuer nor a static
        certificate would leave the proxy never ready.
        """
        errors = self.errors(self.PROXY + "[identity]\n" + self.LISTENER)
        self.assertEqual(
            [error.split(": ")[0] for error in errors], ["identity.issuer", "identity.issuer_identity", "identity.token_file"]
        )

    def test_tokenFileMustExist(self):
        errors = self.errors(
            self.PROXY + '[identity]\nissuer = "127.0.0.1:8443"\nissuer_identity = "identity.mesh.local"\n'
            'token_file = "join.token"\n' + self.LISTENER
        )
        self.assertEqual(len(errors), 1)
        self.assertTrue(errors[0].startswith("identity.token_file: no such file"), errors)
