"""
The HTTP/1.1 path side by side (not named http.py, which would shadow the
standard library's http package for the harness's urllib): wrk keep-alive
load against an nginx backend directly, through meshproxy's HTTP path (an
upstream listener, each request parsed, routed and balanced on its own) and
through HAProxy in C{mode http}, in one run.

    python benchmarks/http1.py [--duration 10] [--connections 32]

Same machine split and helpers as C{benchmarks/relay.py}
(C{benchmarks/_harness.py}): read the ratios.

Needs: apt-get install -y wrk nginx-light haproxy
"""

from __future__ import annotations

import argparse

from _harness import compareWithWrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--connections", type=int, default=32)
    compareWithWrk(parser.parse_args(), mode="http", subject="haproxy http")


if __name__ == "__main__":
    main()
