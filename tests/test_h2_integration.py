"""
HTTP/2 as users run it: real C{twistd -n meshproxy} processes, alone and in
pairs joined by mTLS, in front of real HTTP/2 servers (C{nghttpd}, a
C{grpcio} server) and driven by C{curl}, C{nghttp}, C{h2load} and a
C{grpcio} client.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThread
from twisted.python.filepath import FilePath
from twisted.web.resource import Resource
from twisted.web.server import Site

from .realprocess import Proxy, freePort, run, serve, tool
from .test_http_integration import Echo, Raw
from .test_mtls_integration import CLIENT, SERVER, Mesh


class Headers(Resource):
    """
    Answers every request with the C{meshproxy-client-id} it carried (or
    C{-}) and the protocol the application heard.
    """

    isLeaf = True

    def render(self, request):
        clientId = request.getHeader(b"meshproxy-client-id") or b"-"
        return clientId + b" " + request.clientproto


def grpcServer(testCase) -> tuple[int, threading.Event, list]:
    """
    A C{grpcio} server with three methods of service C{mesh.Echo}, with
    bytes for messages (no protoc): C{Unary} echoes, C{Bidi} answers each
    message with it upper-cased, C{Fail} ends with C{NOT_FOUND}, and
    C{Wait} waits until the client cancels.

    @return: its port, an event set when C{Wait} started, and a list that
        gets C{"cancelled"} when the cancellation reached the server.
    """
    started = threading.Event()
    seen: list[str] = []

    def unary(request, context):
        metadata = dict(context.invocation_metadata())
        return b"echo " + request + b" " + metadata.get("meshproxy-client-id", "-").encode()

    def bidi(requests, context):
        for request in requests:
            yield request.upper()

    def fail(request, context):
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")

    def wait(request, context):
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        started.set()
        if cancelled.wait(20):
            seen.append("cancelled")
        return b"late"

    handler = grpc.method_handlers_generic_handler(
        "mesh.Echo",
        {
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Wait": grpc.unary_unary_rpc_method_handler(wait),
        },
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=8), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    testCase.addCleanup(lambda: deferToThread(server.stop(0).wait))
    return port, started, seen


class HTTP2Tests(Mesh):
    """
    HTTP/2 through one proxy and through two; HTTP/1.1 upgraded to HTTP/2
    between proxies; gRPC; WebSocket staying HTTP/1.1.
    """

    timeout = 180

    async def nghttpd(self) -> int:
        """
        An h2c C{nghttpd} serving a 100 KiB file C{/big} and C{/small}.
        """
        docroot = FilePath(self.mktemp())
        docroot.makedirs()
        docroot.child("big").setContent(b"x" * 102400)
        docroot.child("small").setContent(b"small\n")
        port = freePort()
        await serve(self, [tool("nghttpd", "nghttp2-server"), "--no-tls", "-d", docroot.path, str(port)], port)
        return port

    async def plainProxy(self, app: int) -> tuple[Proxy, int]:
        """
        A proxy without identity, with an upstream listener for service
        C{web} whose one endpoint is C{app}.
        """
        listen = freePort()
        config = f"""
[[upstreams]]
listen = "tcp:{listen}:interface=127.0.0.1"
service = "web"

[services.web]
endpoints = [{{ address = "127.0.0.1:{app}" }}]
"""
        return await Proxy(self, config).start(), listen

    async def twoProxies(self, app: int) -> tuple[Proxy, Proxy, int]:
        server, inbound = await self.serverProxy(app)
        client, listen = await self.clientProxy([(inbound, SERVER)])
        return client, server, listen

    async def tool(self, *argv: str) -> str:
        code, output = await run([tool(argv[0], "nghttp2-client"), *argv[1:]])
        self.assertEqual(code, 0, output)
        return output.decode(errors="replace")

    async def test_h2cThroughOneProxy(self):
        """
        C{curl --http2-prior-knowledge} and C{nghttp} reach an h2c server
        through one proxy, as HTTP/2 all the way; the requests are counted.
        """
        app = await self.nghttpd()
        proxy, listen = await self.plainProxy(app)
        output = await self.tool("curl", "-sS", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code} %{size_download}", f"http://127.0.0.1:{listen}/big")
        self.assertEqual(output, "2 200 102400")
        output = await self.tool("nghttp", "-ns", f"http://127.0.0.1:{listen}/small", f"http://127.0.0.1:{listen}/big")
        self.assertIn("/small", output)
        self.assertIn("/big", output)
        self.assertIn("200", output)
        sample = await proxy.samples()
        labels = dict(direction="outbound", authority="web", tls="no_identity")
        self.assertEqual(sample("request_total", **labels), 3)
        self.assertEqual(sample("response_total", status_code="200", classification="success", **labels), 3)
        self.assertEqual(sample("detect_total", result="h2"), 2)

    async def test_http1ThroughTwoProxies(self):
        """
        HTTP/1.1 requests from 100 new client connections travel as
        HTTP/2 streams on one mTLS connection between the proxies, and
        reach the application as HTTP/1.1 with the client proxy's identity
        in C{meshproxy-client-id}, a client's own one replaced.
        """
        app = await self.listen(Site(Headers()))
        client, server, listen = await self.twoProxies(app)
        for i in range(100):
            output = await self.curl(f"http://127.0.0.1:{listen}/", "-H", "meshproxy-client-id: forged")
            self.assertEqual(output, f"{CLIENT} HTTP/1.1".encode())
        sample = await client.samples()
        dst = dict(direction="outbound", peer="dst", target="web", tls="true", server_id=SERVER)
        self.assertEqual(sample("tcp_open_total", **dst), 1)
        self.assertEqual(sample("tcp_open_total", direction="outbound", peer="src", target="web", tls="no_identity"), 100)
        self.assertEqual(sample("request_total", direction="outbound", authority="web", tls="no_identity"), 100)
        sample = await server.samples()
        inbound = dict(direction="inbound", authority=f"127.0.0.1:{app}", tls="true")
        self.assertEqual(sample("request_total", **inbound), 100)
        self.assertEqual(sample("response_total", status_code="200", classification="success", **inbound), 100)
        self.assertEqual(sample("detect_total", result="h2"), 1)

    async def test_noUpgrade(self):
        """
        With C{upgrade = "none"}, HTTP/1.1 stays HTTP/1.1 between the
        proxies, on pooled connections.
        """
        app = await self.listen(Site(Headers()))
        server, inbound = await self.serverProxy(app)
        client, listen = await self.clientProxy([(inbound, SERVER)], upgrade="none")
        for i in range(3):
            self.assertEqual(await self.curl(f"http://127.0.0.1:{listen}/"), f"{CLIENT} HTTP/1.1".encode())
        sample = await server.samples()
        self.assertEqual(sample("detect_total", result="http1"), 1)
        self.assertIsNone(sample("detect_total", result="h2"))

    async def test_h2loadThroughTwoProxies(self):
        """
        C{h2load} with concurrent streams on a few connections gets every
        response, HTTP/2 from end to end.
        """
        app = await self.nghttpd()
        client, server, listen = await self.twoProxies(app)
        output = await self.tool("h2load", "-n", "400", "-c", "4", "-m", "10", f"http://127.0.0.1:{listen}/small")
        self.assertIn("400 succeeded, 0 failed, 0 errored", output)
        self.assertIn("status codes: 400 2xx", output)

    async def test_grpcThroughTwoProxies(self):
        """
        A C{grpcio} client reaches a C{grpcio} server through two proxies:
        unary and bidirectional streaming calls, a C{grpc-status} error in
        the trailers, and a cancellation that reaches the server.
        """
        app, started, seen = grpcServer(self)
        client, server, listen = await self.twoProxies(app)
        channel = grpc.insecure_channel(f"127.0.0.1:{listen}")
        self.addCleanup(channel.close)
        unary = channel.unary_unary("/mesh.Echo/Unary")
        bidi = channel.stream_stream("/mesh.Echo/Bidi")
        fail = channel.unary_unary("/mesh.Echo/Fail")
        wait = channel.unary_unary("/mesh.Echo/Wait")

        self.assertEqual(await deferToThread(unary, b"hi", timeout=10), f"echo hi {CLIENT}".encode())
        messages = [b"a" * 100000, b"b", b"c" * 10]
        replies = await deferToThread(lambda: list(bidi(iter(messages), timeout=10)))
        self.assertEqual(replies, [m.upper() for m in messages])

        def failed():
            try:
                fail(b"x", timeout=10)
            except grpc.RpcError as e:
                return e.code(), e.details()

        self.assertEqual(await deferToThread(failed), (grpc.StatusCode.NOT_FOUND, "no such thing"))

        def cancel():
            future = wait.future(b"x", timeout=20)
            started.wait(10)
            future.cancel()
            return future.cancelled()

        self.assertTrue(await deferToThread(cancel))
        for _ in range(100):
            if seen:
                break
            await deferToThread(threading.Event().wait, 0.05)
        self.assertEqual(seen, ["cancelled"])
        sample = await server.samples()
        self.assertEqual(sample("detect_total", result="h2"), 1)

    async def test_webSocketThroughTwoProxies(self):
        """
        An upgrade request stays HTTP/1.1 between the proxies and becomes
        a tunnel after the 101: bytes echo through both.
        """
        app = await self.listen(Factory.forProtocol(Echo))
        client, server, listen = await self.twoProxies(app)
        request = b"GET /chat HTTP/1.1\r\nHost: web\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\nping"
        raw = await self.raw(listen, request, until=b"ping")
        self.assertIn(b"HTTP/1.1 101 Switching Protocols", raw.data)
        self.assertTrue(raw.data.endswith(b"\r\n\r\nping"))
        raw.transport.loseConnection()
        sample = await server.samples()
        self.assertEqual(sample("detect_total", result="http1"), 1)

    async def raw(self, port: int, data: bytes, until: bytes) -> Raw:
        client = Raw(until)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
        client.transport.write(data)
        await client.done
        return client

    async def curl(self, url: str, *args: str) -> bytes:
        code, output = await run([tool("curl", "curl"), "-sS", "--http1.1", "--max-time", "10", *args, url])
        self.assertEqual(code, 0, output)
        return output
