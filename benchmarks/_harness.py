"""
What the benchmarks share: starting the backends and proxies they compare,
pinning them to cores, reading their CPU time, and wrk.

Every benchmark runs its subjects side by side in one run on this 2-core
machine: the load generator and the backends share C{LOAD_CPU}, and the
proxy under test gets C{PROXY_CPU} to itself (C{taskset}), so the CPU time
read from its C{/proc} entry is its own and the comparison is fair even
when the machine is noisy.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

#: The Debian package of each command a benchmark may need.
PACKAGES = {
    "wrk": "wrk",
    "nginx": "nginx-light",
    "haproxy": "haproxy",
    "taskset": "util-linux",
    "h2load": "nghttp2-client",
}
LOAD_CPU, PROXY_CPU = "0", "1"
TICK = os.sysconf("SC_CLK_TCK")


def requireTools(*tools: str) -> None:
    """
    Exit with the C{apt-get} line that installs whichever of C{tools} is
    missing, before any process starts.
    """
    missing = [PACKAGES[tool] for tool in tools if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install -y {' '.join(missing)}")


@contextmanager
def running() -> Iterator[list[subprocess.Popen]]:
    """
    A list to append started processes to; each is stopped (C{SIGTERM},
    then C{SIGKILL} if it lingers) when the block ends, however it ends, so
    a failed run leaves no proxy holding a core.
    """
    processes: list[subprocess.Popen] = []
    try:
        yield processes
    finally:
        for process in processes:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """
    Stop C{process}: C{SIGTERM}, then C{SIGKILL} if it lingers.
    """
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def freePort() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def waitForPort(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    """
    Wait until something accepts on C{port}, or fail if C{process} died.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args[0]} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port} after {timeout}s")


def cpuSeconds(pid: int) -> float:
    """
    User plus system CPU time of a process, from /proc.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def busySeconds() -> float:
    """
    CPU time spent by the whole machine, every core and process, from
    /proc/stat: less what the benchmark's own processes spent, the share
    that others (a test suite, a neighbour) took from the cores meant for
    the subjects.
    """
    ticks = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks[:8]) - idle - iowait) / TICK


def rssMB(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def family(pid: int) -> list[int]:
    """
    C{pid} and its descendants (a meshproxy with workers is a parent and
    its worker processes), from C{/proc}.
    """
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").iterdir():
            pids.extend(int(child) for child in (task / "children").read_text().split())
        index += 1
    return pids


def familyCPU(pids: Sequence[int]) -> float:
    """
    The CPU seconds of C{pids} and all their descendants.
    """
    return sum(cpuSeconds(each) for pid in pids for each in family(pid))


def familyRSS(pids: Sequence[int]) -> float:
    """
    The RSS in MB of C{pids} and all their descendants, added up.
    """
    return sum(rssMB(each) for pid in pids for each in family(pid))


def nginx(directory: Path, port: int, h2c: int | None = None) -> subprocess.Popen:
    """
    nginx serving C{/small} (3 bytes) and C{/large} (256 KiB) on C{port},
    and the same over h2c (HTTP/2 with prior knowledge) on C{h2c}.
    """
    # nginx's worker drops root for "nobody", who must read the files.
    directory.chmod(0o755)
    (directory / "www").mkdir()
    (directory / "www" / "small").write_bytes(b"ok\n")
    (directory / "www" / "large").write_bytes(os.urandom(256 * 1024))
    conf = directory / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/nginx.err warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} reuseport;
    {"" if h2c is None else f"listen 127.0.0.1:{h2c} http2;"}
    root {directory}/www;
  }}
}}
"""
    )
    return subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", str(conf), "-e", str(directory / "nginx.err")])


def haproxy(
    directory: Path, port: int, backends: Sequence[int], mode: str = "tcp", balance: str = "roundrobin"
) -> subprocess.Popen:
    """
    HAProxy on C{port} in front of the C{backends} (ports on loopback),
    one thread, with the C{balance} algorithm.

    In C{mode http} any idle server connection may carry any client's
    request (C{http-reuse always}), as meshproxy's per-endpoint pool lets
    it, so that neither pays for a server connection per client
    connection.
    """
    servers = "\n".join(f"  server backend{i} 127.0.0.1:{backend}" for i, backend in enumerate(backends))
    return startHAProxy(
        directory,
        f"haproxy-{port}",
        f"""
listen relay
  mode {mode}
{"  http-reuse always" if mode == "http" else ""}
  bind 127.0.0.1:{port}
  balance {balance}
{servers}
""",
    )


def startHAProxy(directory: Path, name: str, sections: str, cpus: str = PROXY_CPU) -> subprocess.Popen:
    """
    HAProxy with one thread on C{cpus}, running the C{sections} of
    configuration after a common C{global} and timeouts.
    """
    conf = directory / f"{name}.cfg"
    conf.write_text(
        f"""
global
  nbthread 1
  maxconn 9000
  tune.ssl.default-dh-param 2048
defaults
  timeout connect 1s
  timeout client 60s
  timeout server 60s
{sections}
"""
    )
    return subprocess.Popen(["taskset", "-c", cpus, "haproxy", "-db", "-q", "-f", str(conf)])


def meshproxy(
    directory: Path,
    port: int,
    backends: Sequence[int],
    opaque: bool = True,
    balancer: str | None = None,
    maxConnections: int = 0,
    workers: int = 1,
    cpus: str = PROXY_CPU,
) -> subprocess.Popen:
    """
    meshproxy with an upstream listener for a service of the C{backends}
    (ports on loopback): relayed as TCP when C{opaque}, else served by the
    HTTP path (each request parsed, routed and balanced on its own), with
    the C{balancer} algorithm or the default.  Returns once C{/ready} says
    every listener is bound.

    @param maxConnections: C{[proxy] max_connections}, or 0 for the
        default (half the open-files limit).
    @param workers: C{[proxy] workers}.
    @param cpus: the CPUs it runs on (L{startMeshproxy}).
    """
    endpoints = ", ".join(f'{{ address = "127.0.0.1:{backend}" }}' for backend in backends)
    return startMeshproxy(
        directory,
        f"meshproxy-{port}",
        f"""
[proxy]
max_connections = {maxConnections}
workers = {workers}

[[upstreams]]
listen = "tcp:{port}:interface=127.0.0.1"
service = "backend"

[services.backend]
opaque = {str(opaque).lower()}
endpoints = [{endpoints}]
{"" if balancer is None else f'balancer = "{balancer}"'}
""",
        cpus,
    )


def startMeshproxy(directory: Path, name: str, config: str, cpus: str | None = PROXY_CPU) -> subprocess.Popen:
    """
    meshproxy on C{cpus} (on any CPU if L{None}) with the C{config} tables
    (an C{[admin]} table is added), once C{/ready} says every listener is
    bound.
    """
    admin = freePort()
    conf = directory / f"{name}.toml"
    conf.write_text(f'[admin]\nlisten = "tcp:{admin}:interface=127.0.0.1"\n{config}')
    twistd = Path(sys.executable).parent / "twistd"
    log = directory / f"{name}.log"
    pin = [] if cpus is None else ["taskset", "-c", cpus]
    process = subprocess.Popen(
        [*pin, str(twistd), "-n", "--pidfile=", "--logfile", str(log), "meshproxy", "--config", str(conf)]
    )
    process.admin = admin
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"meshproxy exited with {process.returncode}: see {log}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1).status == 200:
                return process
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise SystemExit(f"meshproxy did not become ready: see {log}")


_SCALE = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_BYTES = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}


def wrk(port: int, path: str, connections: int, duration: int) -> dict:
    output = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "--latency", "-t1", f"-c{connections}", f"-d{duration}s",
         f"http://127.0.0.1:{port}/{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", output)

    def percentile(p: int) -> float:
        value, unit = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", output).groups()
        return float(value) * _SCALE[unit]

    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", output)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
        "requests": int(re.search(r"(\d+) requests in", output).group(1)),
        "p50": percentile(50),
        "p99": percentile(99),
        "mbps": float(transfer.group(1)) * _BYTES[transfer.group(2)] / 1024**2,
        "errors": errors.group(0) if errors else "",
    }


def h2load(port: int, clients: int, streams: int, duration: int, path: str = "small") -> dict:
    """
    h2load over h2c (prior knowledge) against C{port}: requests/s, and the
    latency percentiles of every request from its log file.
    """
    with tempfile.NamedTemporaryFile("r", suffix=".log") as log:
        output = subprocess.run(
            ["taskset", "-c", LOAD_CPU, "h2load", "-c", str(clients), "-m", str(streams), "-D", str(duration),
             "--log-file", log.name, f"http://127.0.0.1:{port}/{path}"],
            capture_output=True, text=True, check=True,
        ).stdout
        durations = sorted(int(line.split()[2]) for line in log if line.strip())
    succeeded = int(re.search(r"(\d+) succeeded", output).group(1))
    failed = re.search(r"(\d+) failed, (\d+) errored", output)
    return {
        "rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", output).group(1)),
        "requests": succeeded,
        "p50": durations[len(durations) // 2] / 1e3 if durations else float("nan"),
        "p99": durations[int(len(durations) * 0.99)] / 1e3 if durations else float("nan"),
        "errors": "" if failed.groups() == ("0", "0") else failed.group(0),
    }
