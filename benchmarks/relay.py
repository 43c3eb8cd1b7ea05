"""
The opaque TCP relay side by side: HTTP/1.1 keep-alive load from wrk against
an nginx backend directly, through meshproxy, and through HAProxy in
C{mode tcp}, in one run.

    python benchmarks/relay.py [--duration 10] [--connections 32]

The machine is shared and noisy, so read the ratios, not the absolute
figures: every subject runs in the same minute on the same cores.  wrk and
nginx share one core and the proxy under test gets the other (C{taskset}),
so the proxy's CPU per request is its own.  Two response sizes: a small one
(requests/s, latency) and 256 KiB (MB/s).  The helpers are in
C{benchmarks/_harness.py}.

Needs: apt-get install -y wrk nginx-light haproxy
"""

from __future__ import annotations

import argparse

from _harness import compareWithWrk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--connections", type=int, default=32)
    compareWithWrk(parser.parse_args(), mode="tcp", subject="haproxy tcp")


if __name__ == "__main__":
    main()
