"""
The HTTP/1.1 path side by side (not named http.py, which would shadow the
standard library's http package for relay.py's urllib): wrk keep-alive load against an nginx
backend directly, through meshproxy's HTTP path (an upstream listener,
each request parsed, routed and balanced on its own) and through HAProxy in
C{mode http}, in one run.

    python benchmarks/http1.py [--duration 10] [--connections 32]

Same machine split and helpers as C{benchmarks/relay.py}: read the ratios.

Needs: apt-get install -y wrk nginx-light haproxy
"""

from __future__ import annotations

import argparse
import shutil
import signal
import tempfile
from pathlib import Path

from relay import LOAD_CPU, PROXY_CPU, TOOLS, freePort, haproxy, measure, meshproxy, nginx, table, waitForPort


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    missing = [package for tool, package in TOOLS.items() if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing tools: apt-get install -y {' '.join(missing)}")
    processes = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            backend = freePort()
            processes.append(nginx(directory, backend))
            waitForPort(backend, processes[-1])
            rows = measure("direct", backend, None, args)
            port = freePort()
            processes.append(haproxy(directory, port, backend, mode="http"))
            waitForPort(port, processes[-1])
            rows += measure("haproxy http", port, processes[-1], args)
            port = freePort()
            processes.append(meshproxy(directory, port, backend, opaque=False))
            rows += measure("meshproxy", port, processes[-1], args)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=10)
    print(f"wrk -t1 -c{args.connections} -d{args.duration}s, HTTP/1.1 keep-alive; load and nginx on CPU {LOAD_CPU}, proxy on CPU {PROXY_CPU}")
    print(table(rows, reference="haproxy http"))


if __name__ == "__main__":
    main()
