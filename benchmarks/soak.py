"""
Soak: a steady request rate through two meshproxy hops with mTLS for a long
time, with the applications behind the server side restarting
periodically; then whether anything leaked.

    python benchmarks/soak.py                      # 10 minutes, 200 req/s
    python benchmarks/soak.py --duration 180 --rate 300 --restart-every 20

The mesh, all on 127.0.0.1 with certificates from a fresh CA
(L{meshproxy.identity.ca}): a client-side proxy (an upstream listener for
service C{web}) balancing over two server-side proxies, each terminating
mTLS on its inbound listener in front of its own application process.
Every C{--restart-every} seconds one application (in turn) is stopped with
SIGTERM and started again.

Each request has a timeout (C{--timeout}); its outcome is one of:
  - ok: 200 with the application's name;
  - restart: a 502 or 503 from a proxy while an application was down
    (from its stop until a second after it listens again), which is
    what the restart costs;
  - unexpected: anything else (a timeout, a broken connection, another
    status, a 5xx outside a restart).

At the end it prints the counts and, for each proxy, its RSS and open file
descriptors (C{/proc/PID/fd}) after the warm-up and at the end, and exits 1
if there was an unexpected error.
"""

from __future__ import annotations

import argparse
import warnings
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import reactor, task, threads
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from twisted.web.client import Agent, HTTPConnectionPool, readBody

sys.path.insert(0, str(Path(__file__).parent))
from _harness import freePort, rssMB, startMeshproxy, stop, waitForPort  # noqa: E402

from meshproxy.identity import ca  # noqa: E402

#: The application behind each server-side proxy: answers every GET with
#: its name.
APP = """
import sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

class Name(Resource):
    isLeaf = True
    def render_GET(self, request):
        return sys.argv[1].encode()

reactor.listenTCP(int(sys.argv[2]), Site(Name()), interface="127.0.0.1")
reactor.run()
"""

CLIENT = "app.mesh.local"
SERVER = "web.mesh.local"


def credentials(authority, directory: Path, identity: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = authority.issue(identity, key.public_key(), time.time(), 7 * 86400)
    cert, keyFile = directory / f"{identity}.pem", directory / f"{identity}.key"
    cert.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, authority.issuingCertificate)))
    keyFile.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, keyFile


def proxy(directory: Path, name: str, identity: str, anchors: Path, cert: Path, key: Path, listeners: str):
    """
    Start C{twistd -n meshproxy} and wait for its C{/ready}.
    """
    return startMeshproxy(
        directory,
        name,
        f"""
[proxy]
identity = "{identity}"
trust_anchors = "{anchors}"

[identity]
cert_file = "{cert}"
key_file = "{key}"

{listeners}
""",
        cpus=None,
    )


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class App:
    """
    One application process that can be restarted; C{down} holds the
    (start, end) windows it was not serving.
    """

    def __init__(self, script: Path, name: str, port: int) -> None:
        self.argv = [sys.executable, str(script), name, str(port)]
        self.port = port
        self.process = None
        self.down: list[list[float]] = []

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv)
        waitForPort(self.port, self.process)

    def restart(self) -> None:
        """
        In a thread: stop, start, wait until it listens.
        """
        window = [time.monotonic(), float("inf")]
        self.down.append(window)
        stop(self.process)
        self.start()
        window[1] = time.monotonic() + 1.0

    def wasDown(self, start: float, end: float) -> bool:
        return any(s <= end and start <= e for s, e in self.down)


class Load:
    """
    Requests at a steady rate (open loop: one every 1/rate seconds,
    whatever the answers), each with a timeout.
    """

    def __init__(self, url: str, rate: float, timeout: float, apps: list[App]) -> None:
        self.url = url.encode()
        self.timeout = timeout
        self.apps = apps
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 64
        self.pool = pool
        self.agent = Agent(reactor, pool=pool)
        self.counts = {"ok": 0, "restart": 0, "unexpected": 0}
        self.unexpected: dict[str, int] = {}
        self.outstanding = 0
        self.loop = task.LoopingCall(self.send)
        self.rate = rate

    def send(self) -> None:
        self.outstanding += 1
        Deferred.fromCoroutine(self.one())

    async def one(self) -> None:
        start = time.monotonic()
        try:
            d = self.agent.request(b"GET", self.url)
            d.addTimeout(self.timeout, reactor)
            response = await d
            body = readBody(response)
            body.addTimeout(self.timeout, reactor)
            outcome = (response.code, await body)
        except Exception as e:
            outcome = e
        finally:
            self.outstanding -= 1
        end = time.monotonic()
        if isinstance(outcome, tuple) and outcome[0] == 200 and outcome[1] in (b"a", b"b"):
            self.counts["ok"] += 1
        elif (
            isinstance(outcome, tuple)
            and outcome[0] in (502, 503)
            and any(app.wasDown(start, end) for app in self.apps)
        ):
            self.counts["restart"] += 1
        else:
            self.counts["unexpected"] += 1
            what = f"{outcome[0]} {outcome[1][:60]!r}" if isinstance(outcome, tuple) else repr(outcome)[:100]
            self.unexpected[what] = self.unexpected.get(what, 0) + 1


def measure(processes: dict[str, subprocess.Popen]) -> dict[str, tuple[float, int]]:
    return {name: (rssMB(p.pid), fds(p.pid)) for name, p in processes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--rate", type=float, default=200, help="requests per second (default 200)")
    parser.add_argument("--restart-every", type=float, default=30, help="seconds between app restarts (default 30)")
    parser.add_argument("--timeout", type=float, default=10, help="seconds a request may take (default 10)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before the first measurement (default 10)")
    args = parser.parse_args()
    # Agent's pooled response transports lack abortConnection; harmless here.
    warnings.filterwarnings("ignore", "Using readBody with a transport", DeprecationWarning)

    directory = Path(tempfile.mkdtemp(prefix="meshproxy-soak-"))
    authority = ca.initialize(FilePath(str(directory / "ca")), "mesh.local", time.time() - 60)
    anchors = directory / "ca" / ca.ANCHORS
    script = directory / "app.py"
    script.write_text(APP)
    started: list[subprocess.Popen] = []
    apps = [App(script, name, freePort()) for name in ("a", "b")]
    try:
        for app in apps:
            app.start()
        servers = {}
        inbound = []
        for app in apps:
            port = freePort()
            cert, key = credentials(authority, directory, SERVER)
            servers[f"server-{len(servers)}"] = proxy(
                directory, f"server-{len(servers)}", SERVER, anchors, cert, key,
                f'[[inbound]]\nlisten = "tcp:{port}:interface=127.0.0.1"\napp = "127.0.0.1:{app.port}"\n',
            )
            inbound.append(port)
        started += servers.values()
        listen = freePort()
        cert, key = credentials(authority, directory, CLIENT)
        endpoints = ", ".join(f'{{ address = "127.0.0.1:{port}", identity = "{SERVER}" }}' for port in inbound)
        client = proxy(
            directory, "client", CLIENT, anchors, cert, key,
            f'[[upstreams]]\nlisten = "tcp:{listen}:interface=127.0.0.1"\nservice = "web"\n\n'
            f"[services.web]\nendpoints = [{endpoints}]\n",
        )
        started.append(client)
        processes = {"client": client, **servers}

        load = Load(f"http://127.0.0.1:{listen}/", args.rate, args.timeout, apps)
        results = {}
        print(f"soak: {args.duration:.0f} s at {args.rate:.0f} req/s through two proxies (mTLS), "
              f"an app restart every {args.restart_every:.0f} s; logs in {directory}", flush=True)

        def warm():
            results["start"] = measure(processes)

        restarts = [0]

        def restart():
            app = apps[restarts[0] % len(apps)]
            restarts[0] += 1
            return threads.deferToThread(app.restart)

        def finish():
            load.loop.stop()
            restarter.stop()

            def settle():
                if load.outstanding:
                    return task.deferLater(reactor, 0.1, settle)
                return load.pool.closeCachedConnections()

            d = task.deferLater(reactor, 0.1, settle)
            d.addCallback(lambda _: task.deferLater(reactor, 2.0, lambda: None))
            d.addCallback(lambda _: results.__setitem__("end", measure(processes)))
            d.addBoth(lambda result: (reactor.stop(), result)[1])

        load.loop.start(1.0 / args.rate)
        reactor.callLater(args.warmup, warm)
        restarter = task.LoopingCall(restart)
        restarter.start(args.restart_every, now=False)
        reactor.callLater(args.duration, finish)
        began = time.monotonic()
        reactor.run()
        elapsed = time.monotonic() - began

        total = sum(load.counts.values())
        print(f"\nrequests: {total} in {elapsed:.0f} s ({total / elapsed:.0f}/s); ok {load.counts['ok']}, "
              f"during app restarts (502/503) {load.counts['restart']}, unexpected {load.counts['unexpected']}; "
              f"app restarts {restarts[0]}")
        for what, count in sorted(load.unexpected.items(), key=lambda item: -item[1]):
            print(f"  unexpected: {count} x {what}")
        print(f"\n{'proxy':<10} {'RSS start MB':>13} {'RSS end MB':>11} {'fds start':>10} {'fds end':>8}")
        for name in processes:
            (rss0, fd0), (rss1, fd1) = results["start"][name], results["end"][name]
            print(f"{name:<10} {rss0:>13.1f} {rss1:>11.1f} {fd0:>10} {fd1:>8}")
        code = 1 if load.counts["unexpected"] else 0
    finally:
        for process in started:
            stop(process)
        for app in apps:
            if app.process is not None:
                stop(app.process)
    sys.exit(code)


if __name__ == "__main__":
    main()
