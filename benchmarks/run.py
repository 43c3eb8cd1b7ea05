"""
The whole performance picture in one run and one table: each scenario
against nginx directly, through HAProxy and through meshproxy, side by
side on the same cores in the same minutes.

    python benchmarks/run.py [--quick] [--duration 5]
    tox -e bench

Scenarios (one row per subject):

  - C{http1}: HTTP/1.1 keep-alive through one proxy (HAProxy C{mode
    http}; meshproxy's HTTP path, and the same with C{[proxy] workers = 2}).
  - C{http1 2 hops mTLS}: through a client-side and a server-side proxy
    with mutual TLS between them: HAProxy with C{ssl verify required} and
    C{proto h2} between its two instances; meshproxy's upstream listener
    to its inbound listener, with the per-service C{upgrade = "h2"}
    (HTTP/2 between the proxies) and C{"none"} (an HTTP/1.1 pool).
  - C{h2c}: HTTP/2 with prior knowledge, from h2load (4 connections of 10
    streams), to an h2c nginx directly or through the proxy.
  - C{tcp relay}: the 256 KiB response through HAProxy C{mode tcp} and
    meshproxy's opaque relay, in MB/s.
  - C{mTLS accept}: new mutual-TLS connections per second terminated by
    the proxy (client certificate verified, TLS 1.3), from a Python client
    of 4 threads; each connection closes once its handshake is done.
  - C{idle conns}: meshproxy holding 10,000 idle keep-alive HTTP/1.1 client
    connections (each made one request), its RSS, and the latency of
    requests made meanwhile on another connection.

Columns: the rate at saturation (wrk C{-c32}, h2load C{-c4 -m10}), in the
scenario's unit; p50 and p99 of a fixed moderate load (wrk C{-c4}, h2load
C{-c1 -m1}); the rate as a share of HAProxy's; the proxies' own CPU time
per request (MB, connection), from C{/proc/PID/stat}, every proxy process
of the subject added up; and their RSS after the row, added up.  wrk,
h2load and nginx share CPU 0; the proxies have CPU 1 to themselves, except
the C{workers=2} row, whose two workers run on both cores (there are only
two): it shows the CPU per request of the multi-process proxy, not its
scaling.

The machine is shared and noisy: read the ratios, which compare subjects
measured minutes apart.  The helpers are in C{benchmarks/_harness.py}.

Needs: apt-get install -y haproxy wrk nghttp2-client nginx-light
"""

from __future__ import annotations

import argparse
import resource
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.python.filepath import FilePath

from meshproxy.identity import ca

from _harness import (
    LOAD_CPU,
    PROXY_CPU,
    familyCPU,
    familyRSS,
    freePort,
    h2load,
    haproxy,
    meshproxy,
    nginx,
    requireTools,
    running,
    startHAProxy,
    startMeshproxy,
    waitForPort,
    wrk,
)

CLIENT, SERVER = "client.bench.mesh", "server.bench.mesh"
#: The connections of the saturating and of the moderate wrk load.
SATURATE, MODERATE = 32, 4
#: How many idle client connections the memory scenario holds.
IDLE = 10_000


class Mesh:
    """
    A CA made with L{meshproxy.identity.ca}, and PEM files of the client
    and server identities for meshproxy (chain and key apart) and HAProxy
    (chain and key in one file).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.authority = ca.initialize(FilePath(str(directory / "ca")), "bench.mesh", time.time() - 3600)
        self.anchors = directory / "ca" / ca.ANCHORS
        for identity in (CLIENT, SERVER):
            key = ec.generate_private_key(ec.SECP256R1())
            leaf = self.authority.issue(identity, key.public_key(), time.time() - 60, 86400)
            chain = b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in (leaf, self.authority.issuingCertificate)
            )
            keyPEM = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            self.cert(identity).write_bytes(chain)
            self.key(identity).write_bytes(keyPEM)
            self.combined(identity).write_bytes(chain + keyPEM)

    def cert(self, identity: str) -> Path:
        return self.directory / f"{identity}.pem"

    def key(self, identity: str) -> Path:
        return self.directory / f"{identity}.key"

    def combined(self, identity: str) -> Path:
        return self.directory / f"{identity}.haproxy.pem"

    def identity(self, name: str, workers: int = 1) -> str:
        """
        The C{[proxy]} and C{[identity]} tables of a meshproxy with static
        credentials for C{name}.
        """
        return f"""
[proxy]
identity = "{name}"
trust_anchors = "{self.anchors}"
workers = {workers}

[identity]
cert_file = "{self.cert(name)}"
key_file = "{self.key(name)}"
"""


class Run:
    """
    One benchmark run: its processes, its rows, and the load settings.

    @ivar rows: the table, a dict per row.
    """

    def __init__(self, args, directory: Path, processes: list) -> None:
        self.args = args
        self.directory = directory
        self.processes = processes
        self.rows: list[dict] = []

    def start(self, process: subprocess.Popen, port: int | None = None) -> subprocess.Popen:
        self.processes.append(process)
        if port is not None:
            waitForPort(port, process)
        return process

    def row(self, scenario: str, subject: str, unit: str, proxies, load, moderate=None) -> dict:
        """
        Measure one row: warm up, then C{load()} (the saturating run, which
        returns C{rps}, C{requests} and C{errors}) with the CPU of the
        C{proxies} counted, then C{moderate()} for the latency.
        """
        pids = [proxy.pid for proxy in proxies]
        load(1)
        before = familyCPU(pids)
        result = load(self.args.duration)
        cpu = familyCPU(pids) - before
        row = {
            "scenario": scenario,
            "subject": subject,
            "unit": unit,
            "rate": result["rate"],
            "errors": result.get("errors", ""),
            "cpu": cpu / result["count"] * 1e6 if pids and result["count"] else None,
            "p50": None,
            "p99": None,
        }
        if moderate is not None:
            latency = moderate(self.args.duration)
            row.update(p50=latency["p50"], p99=latency["p99"])
        row["rss"] = familyRSS(pids) if pids else None
        self.rows.append(row)
        print(f"  {scenario:<22} {subject:<28} {row['rate']:>9.0f} {unit}", flush=True)
        return row

    def http(self, scenario: str, subject: str, port: int, proxies) -> dict:
        def load(duration):
            result = wrk(port, "small", SATURATE, duration)
            return {"rate": result["rps"], "count": result["requests"], "errors": result["errors"]}

        return self.row(scenario, subject, "req/s", proxies, load, lambda d: wrk(port, "small", MODERATE, d))

    def h2c(self, subject: str, port: int | None, proxies) -> dict:
        if port is None:
            self.rows.append({"scenario": "h2c", "subject": subject, "unit": "req/s", "rate": None})
            return self.rows[-1]

        def load(duration):
            result = h2load(port, 4, 10, duration)
            return {"rate": result["rps"], "count": result["requests"], "errors": result["errors"]}

        probe = h2load(port, 1, 1, 1)
        if not probe["requests"]:
            # Not faked: a subject that does not serve h2c gets no figures.
            self.rows.append(
                {"scenario": "h2c", "subject": subject, "unit": "req/s", "rate": None, "errors": probe["errors"]}
            )
            return self.rows[-1]
        return self.row("h2c", subject, "req/s", proxies, load, lambda d: h2load(port, 1, 1, d))

    def relay(self, subject: str, port: int, proxies) -> dict:
        def load(duration):
            result = wrk(port, "large", SATURATE, duration)
            return {"rate": result["mbps"], "count": result["mbps"] * duration, "errors": result["errors"]}

        return self.row("tcp relay 256KiB", subject, "MB/s", proxies, load)

    def handshakes(self, subject: str, port: int, proxies, mesh: Mesh) -> dict:
        def load(duration):
            count = handshakes(port, mesh, duration)
            return {"rate": count / duration, "count": count}

        return self.row("mTLS accept", subject, "conn/s", proxies, load)


def handshakes(port: int, mesh: Mesh, duration: float, threads: int = 4) -> int:
    """
    Open mTLS connections to C{port} one after the other on C{threads}
    threads for C{duration} seconds, as the client identity to the server
    identity (SNI), closing each once its handshake
    is done; the number completed.  OpenSSL releases the GIL during the
    handshake, so the threads overlap.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # The client does not verify the server: its core is shared with the
    # server's backend and is the limit, and what is measured is the
    # proxy's side, which verifies the client's certificate.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(mesh.cert(CLIENT)), str(mesh.key(CLIENT)))
    deadline = time.monotonic() + duration
    counts = [0] * threads

    def connect(index: int) -> None:
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw, server_hostname=SERVER):
                    # The server verifies the client's certificate after
                    # the client's handshake ends (TLS 1.3): its CPU time
                    # counts whenever it does.
                    counts[index] += 1

    workers = [threading.Thread(target=connect, args=(index,)) for index in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


def oneHop(run: Run, backend: int) -> None:
    run.http("http1", "direct", backend, [])
    port = freePort()
    run.http("http1", "haproxy", port, [run.start(haproxy(run.directory, port, [backend], mode="http"), port)])
    port = freePort()
    run.http("http1", "meshproxy", port, [run.start(meshproxy(run.directory, port, [backend], opaque=False))])
    port = freePort()
    workers = meshproxy(run.directory, port, [backend], opaque=False, workers=2, cpus=f"{LOAD_CPU},{PROXY_CPU}")
    run.http("http1", "meshproxy workers=2", port, [run.start(workers)])


def twoHops(run: Run, backend: int, mesh: Mesh, upgrades: list[str]) -> None:
    scenario = "http1 2 hops mTLS"
    run.http(scenario, "direct", backend, [])
    front, back = freePort(), freePort()
    server = startHAProxy(
        run.directory,
        "haproxy-server",
        f"""
listen inbound
  mode http
  http-reuse always
  bind 127.0.0.1:{back} ssl crt {mesh.combined(SERVER)} ca-file {mesh.anchors} verify required alpn h2,http/1.1
  server app 127.0.0.1:{backend}
""",
    )
    client = startHAProxy(
        run.directory,
        "haproxy-client",
        f"""
listen outbound
  mode http
  http-reuse always
  bind 127.0.0.1:{front}
  server web 127.0.0.1:{back} ssl verify required ca-file {mesh.anchors} crt {mesh.combined(CLIENT)} sni str({SERVER}) alpn h2 proto h2
""",
    )
    run.start(server, back), run.start(client, front)
    run.http(scenario, "haproxy (h2 between)", front, [client, server])
    for upgrade in upgrades:
        front, back = freePort(), freePort()
        server = startMeshproxy(
            run.directory,
            f"meshproxy-server-{upgrade}",
            mesh.identity(SERVER)
            + f'\n[[inbound]]\nlisten = "tcp:{back}:interface=127.0.0.1"\napp = "127.0.0.1:{backend}"\n',
        )
        client = startMeshproxy(
            run.directory,
            f"meshproxy-client-{upgrade}",
            mesh.identity(CLIENT)
            + f"""
[[upstreams]]
listen = "tcp:{front}:interface=127.0.0.1"
service = "web"

[services.web]
upgrade = "{upgrade}"
endpoints = [{{ address = "127.0.0.1:{back}", identity = "{SERVER}" }}]
""",
        )
        run.start(server), run.start(client)
        run.http(scenario, f"meshproxy upgrade={upgrade}", front, [client, server])


def h2c(run: Run, h2backend: int, backend: int, meshH2c: bool) -> None:
    run.h2c("direct", h2backend, [])
    port = freePort()
    proxy = startHAProxy(
        run.directory,
        "haproxy-h2c",
        f"""
listen h2c
  mode http
  http-reuse always
  bind 127.0.0.1:{port} proto h2
  server app 127.0.0.1:{backend}
""",
    )
    run.h2c("haproxy", port, [run.start(proxy, port)])
    port = freePort()
    if meshH2c:
        # meshproxy keeps HTTP/2 from the app HTTP/2 to the app (gRPC needs
        # it), so its endpoint is the backend's h2c port.
        run.h2c("meshproxy", port, [run.start(meshproxy(run.directory, port, [h2backend], opaque=False))])
    else:
        run.h2c("meshproxy", None, [])


def relay(run: Run, backend: int) -> None:
    run.relay("direct", backend, [])
    port = freePort()
    run.relay("haproxy tcp", port, [run.start(haproxy(run.directory, port, [backend], mode="tcp"), port)])
    port = freePort()
    run.relay("meshproxy opaque", port, [run.start(meshproxy(run.directory, port, [backend], opaque=True))])


def accept(run: Run, backend: int, mesh: Mesh) -> None:
    port = freePort()
    proxy = startHAProxy(
        run.directory,
        "haproxy-tls",
        f"""
listen inbound
  mode tcp
  bind 127.0.0.1:{port} ssl crt {mesh.combined(SERVER)} ca-file {mesh.anchors} verify required
  server app 127.0.0.1:{backend}
""",
    )
    run.handshakes("haproxy", port, [run.start(proxy, port)], mesh)
    port = freePort()
    proxy = startMeshproxy(
        run.directory,
        "meshproxy-tls",
        mesh.identity(SERVER) + f'\n[[inbound]]\nlisten = "tcp:{port}:interface=127.0.0.1"\napp = "127.0.0.1:{backend}"\n',
    )
    run.handshakes("meshproxy", port, [run.start(proxy)], mesh)


def idle(run: Run, backend: int, count: int) -> None:
    """
    meshproxy holding C{count} idle keep-alive client connections: its RSS
    with them open, and the latency of requests on one more connection
    meanwhile.
    """
    port = freePort()
    # Idle HTTP clients share one pooled connection to the backend, so the
    # default cap (two descriptors a connection) would stop short of
    # count on a machine whose open-files limit is 2 x count.
    proxy = run.start(meshproxy(run.directory, port, [backend], opaque=False, maxConnections=count + 100))
    before = familyRSS([proxy.pid])
    request = b"GET /small HTTP/1.1\r\nHost: backend\r\n\r\n"
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(request)
        received = b""
        while not received.endswith(b"ok\n"):
            received += s.recv(4096)
        held.append(s)
    time.sleep(1)
    latencies = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(1000):
            started = time.perf_counter()
            s.sendall(request)
            received = b""
            while not received.endswith(b"ok\n"):
                received += s.recv(4096)
            latencies.append((time.perf_counter() - started) * 1e3)
    latencies.sort()
    rss = familyRSS([proxy.pid])
    for s in held:
        s.close()
    run.rows.append(
        {
            "scenario": f"idle conns ({count})",
            "subject": "meshproxy",
            "unit": "held",
            "rate": count,
            "p50": latencies[len(latencies) // 2],
            "p99": latencies[int(len(latencies) * 0.99)],
            "cpu": None,
            "rss": rss,
            "errors": f"RSS {before:.0f} MB before; max {latencies[-1]:.2f} ms",
        }
    )
    print(f"  idle conns: {rss:.0f} MB with {count} held, p99 {latencies[int(len(latencies) * 0.99)]:.2f} ms")


def render(rows: list[dict]) -> str:
    """
    The table: each row against the direct row and HAProxy's row of the
    same scenario.
    """

    def reference(prefix: str) -> dict:
        return {row["scenario"]: row["rate"] for row in rows if row["subject"].startswith(prefix)}

    direct, haproxy = reference("direct"), reference("haproxy")
    header = (
        f"{'scenario':<22} {'subject':<28} {'rate':>9} {'unit':<6} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'vs direct':>9} {'vs haproxy':>10} {'CPU us/op':>9} {'RSS MB':>7}  notes"
    )
    lines = [header, "-" * len(header)]

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    def ratio(rate, base):
        return rate / base if rate is not None and base else None

    for row in rows:
        rate, scenario = row["rate"], row["scenario"]
        lines.append(
            f"{scenario:<22} {row['subject']:<28} {'n/a' if rate is None else format(rate, '.0f'):>9} "
            f"{row['unit']:<6} {number(row.get('p50'), '.2f'):>7} {number(row.get('p99'), '.2f'):>7} "
            f"{number(ratio(rate, direct.get(scenario)), '.2f'):>9} "
            f"{number(ratio(rate, haproxy.get(scenario)), '.2f'):>10} "
            f"{number(row.get('cpu'), '.0f'):>9} {number(row.get('rss'), '.0f'):>7}  "
            f"{'not served: ' if rate is None else ''}{row.get('errors', '')}"
        )
    return "\n".join(lines)


def configKey(table: str, key: str) -> bool:
    """
    Whether meshproxy's configuration knows C{key} in C{table}: the
    scenarios that need a feature run once it exists.
    """
    from attrs import fields

    from meshproxy import config

    return key in {field.name for field in fields(getattr(config, table))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=None, help="seconds of each load (default 5, quick 2)")
    parser.add_argument("--quick", action="store_true", help="about a minute: shorter loads, 2,000 idle connections")
    parser.add_argument("--only", default=None, help="comma-separated scenarios: http1,hops,h2c,relay,tls,idle")
    args = parser.parse_args()
    args.duration = args.duration or (2 if args.quick else 5)
    only = set((args.only or "http1,hops,h2c,relay,tls,idle").split(","))
    requireTools("wrk", "nginx", "haproxy", "taskset", "h2load")
    # 10,000 client connections, and as many accepted by the proxy.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    upgrades = ["h2", "none"] if configKey("Service", "upgrade") else ["h2"]
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, running() as processes:
        directory = Path(tmp)
        run = Run(args, directory, processes)
        backend, h2backend = freePort(), freePort()
        run.start(nginx(directory, backend, h2c=h2backend), backend)
        mesh = Mesh(directory)
        if "http1" in only:
            oneHop(run, backend)
        if "hops" in only:
            twoHops(run, backend, mesh, upgrades)
        if "h2c" in only:
            h2c(run, h2backend, backend, meshH2c=True)
        if "relay" in only:
            relay(run, backend)
        if "tls" in only:
            accept(run, backend, mesh)
        if "idle" in only:
            idle(run, backend, 2000 if args.quick else IDLE)
        rss = {process.args[-1]: familyRSS([process.pid]) for process in processes if "meshproxy" in " ".join(process.args)}
    print()
    print(
        f"meshproxy benchmark, {time.strftime('%Y-%m-%d')}, {args.duration}s per load, "
        f"{time.monotonic() - started:.0f}s in all; load and nginx on CPU {LOAD_CPU}, proxies on CPU {PROXY_CPU}"
    )
    print(render(run.rows))
    if rss:
        print(f"meshproxy RSS at the end of the run: largest process tree {max(rss.values()):.0f} MB")


if __name__ == "__main__":
    main()
