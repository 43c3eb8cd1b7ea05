"""
Nothing lost, nothing leaked, with real C{twistd -n meshproxy} processes
talking mTLS: connections to an endpoint that discovery removed close, and
a response that the application cuts short reaches the client cut short,
at once, through both proxies.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import RequestReceived
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python.filepath import FilePath

from .realprocess import Proxy, run, tool
from .test_discovery_integration import Traffic, until
from .test_mtls_integration import CLIENT, SERVER, Mesh

#: What the cut-short application sends of a response it announces as
#: 100000 bytes long.
HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
PIECE = b"0123456789"


class CutShort(Protocol):
    """
    An HTTP/1.1 application that answers C{/ok} whole and cuts every other
    response short after ten bytes of body: C{/reset} with a TCP reset,
    anything else with a plain close.
    """

    def connectionMade(self) -> None:
        self._buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        if b"\r\n\r\n" not in self._buffer:
            return
        path = self._buffer.split(b" ", 2)[1]
        self._buffer = b""
        if path == b"/ok":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif path == b"/reset":
            # Sent now, not from Twisted's buffer, which an abort discards;
            # a zero linger makes the close a reset.
            handle = self.transport.getHandle()
            handle.sendall(HEAD + PIECE)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abortConnection()
        else:
            self.transport.write(HEAD + PIECE)
            self.transport.loseConnection()


class CutShortH2(Protocol):
    """
    An h2c application that answers C{/ok} whole and cuts every other
    response short after ten bytes of body: C{/reset} resets its stream,
    anything else closes the connection.
    """

    def connectionMade(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        h2 = self.h2
        for event in h2.receive_data(data):
            if not isinstance(event, RequestReceived):
                continue
            stream, path = event.stream_id, dict(event.headers)[b":path"]
            if path == b"/ok":
                h2.send_headers(stream, [(b":status", b"200"), (b"content-length", b"2")])
                h2.send_data(stream, b"ok", end_stream=True)
                continue
            h2.send_headers(stream, [(b":status", b"200"), (b"content-length", b"100000")])
            h2.send_data(stream, PIECE)
            if path == b"/reset":
                h2.reset_stream(stream, ErrorCodes.INTERNAL_ERROR)
            else:
                self.transport.write(h2.data_to_send())
                self.transport.loseConnection()
                return
        self.transport.write(h2.data_to_send())


class PoolTests(Mesh):
    """
    Through a client-side proxy to server-side proxies, for both ways
    HTTP/1 travels between them.
    """

    def report(self, line: str) -> None:
        sys.stderr.write(f"\n    {self.id().rsplit('.', 1)[-1]}: {line}\n")

    async def discoveringProxy(self, path: FilePath, upgrade: str) -> tuple[Proxy, int]:
        """
        The client-side proxy, its service C{web} discovered from the
        watched file C{path}.
        """
        return await self.webProxy(f'upgrade = "{upgrade}"\ndiscovery = {{ file = "{path.path}" }}\n')

    async def endpointLeft(self, upgrade: str) -> None:
        """
        Requests reach server-side proxy A; the file is rewritten to list
        only B; A's proxy sees the client-side proxy's connection close
        within a second and a half (idle HTTP/1.1 connections would
        otherwise wait for the 3 s idle timeout, the HTTP/2 connection for
        ever), while every request meanwhile succeeds on B.
        """
        _, apps = await self._httpBackends(b"a", b"b")
        (serverA, inboundA), (serverB, inboundB) = [await self.serverProxy(app) for app in apps]
        path = self.files.child("web.json")

        def write(port: int) -> None:
            # As deployment tools do: write aside, then rename over.
            aside = self.files.child("web.json.new")
            aside.setContent(json.dumps([{"address": f"127.0.0.1:{port}", "identity": SERVER}]).encode())
            aside.moveTo(path)

        write(inboundA)
        client, listen = await self.discoveringProxy(path, upgrade)
        traffic = Traffic(listen)
        await traffic.reaches(b"a")
        labels = dict(direction="inbound", peer="src", target=f"127.0.0.1:{apps[0]}", tls="true", client_id=CLIENT)

        async def openOnA():
            return (await serverA.samples())("tcp_open_connections", **labels)

        self.assertEqual(await openOnA(), 1)
        write(inboundB)
        changed = reactor.seconds()
        await traffic.reaches(b"b")
        answers = []

        async def closed():
            answers.append(await traffic.one())
            return await openOnA() == 0

        await until("the connection to A closed", closed, deadline=10.0)
        took = reactor.seconds() - changed
        self.report(f"upgrade={upgrade}: connection to A closed {took:.2f}s after the file changed; {len(answers)} requests to B meanwhile")
        self.assertEqual(set(answers), {b"b"})
        self.assertLess(took, 1.5)

    def test_endpointLeftH2(self):
        return self.endpointLeft("h2")

    def test_endpointLeftHTTP1(self):
        return self.endpointLeft("none")

    async def cutShort(self, upgrade: str) -> None:
        """
        An application cutting a response short, by a close or a reset:
        the client's connection through both proxies closes within a
        second, with the ten bytes received, and both proxies keep serving.
        """
        factory = Factory.forProtocol(CutShort)
        app = await self.listen(factory)
        _, inbound = await self.serverProxy(app)
        _, listen = await self.clientProxy([(inbound, SERVER)], upgrade=upgrade)
        curl = tool("curl", "curl")
        for path in ("/close", "/reset"):
            start = reactor.seconds()
            code, output = await run(
                [curl, "-sS", "--max-time", "10", "-o", "/dev/null", "-w", "\nsize=%{size_download}\n", f"http://127.0.0.1:{listen}{path}"]
            )
            took = reactor.seconds() - start
            self.report(f"upgrade={upgrade} {path}: curl exit {code} after {took:.2f}s: {output.decode(errors='replace')!r}")
            # 18: "transfer closed with outstanding read data remaining".
            self.assertEqual(code, 18, output)
            self.assertIn(b"\nsize=10\n", output)
            self.assertLess(took, 1.0)
            self.assertEqual(await self.curl(f"http://127.0.0.1:{listen}/ok"), b"ok")

    def test_cutShortH2(self):
        return self.cutShort("h2")

    def test_cutShortHTTP1(self):
        return self.cutShort("none")

    async def test_cutShortHTTP2(self):
        """
        Through both proxies, HTTP/2 from client to application: a stream
        the application resets, or whose connection it closes, after ten
        bytes of body reaches the client with its head and those bytes,
        then reset, within a second; both proxies keep serving.
        """
        app = await self.listen(Factory.forProtocol(CutShortH2))
        _, inbound = await self.serverProxy(app)
        _, listen = await self.clientProxy([(inbound, SERVER)])
        nghttp = tool("nghttp", "nghttp2-client")
        for path in ("/close", "/reset"):
            start = reactor.seconds()
            code, output = await run([nghttp, "-v", "-t", "10", f"http://127.0.0.1:{listen}{path}"])
            took = reactor.seconds() - start
            frames = [line for line in output.decode(errors="replace").splitlines() if "recv" in line]
            self.report(f"{path}: nghttp exit {code} after {took:.2f}s: {frames[-3:]!r}")
            self.assertIn(b":status: 200", output)
            self.assertIn(PIECE, output)
            self.assertIn("recv RST_STREAM", frames[-1])
            self.assertLess(took, 1.0)
            code, output = await run([nghttp, "-t", "10", f"http://127.0.0.1:{listen}/ok"])
            self.assertEqual((code, output), (0, b"ok"))
