"""
Load balancers behind one interface, L{IBalancer}.

Every balancer is built the same way, C{factory(endpoints, clock, random)},
from L{BALANCERS} by the name a service's C{balancer} key uses.  They share
per-endpoint state (requests in flight, a peak-EWMA round-trip time, and
ejection after failures) and differ only in how they choose among the
usable endpoints.  L{Waiter} queues requests while none is usable;
L{BalancerCollector} exports the endpoints' state to Prometheus.
"""

from ._collector import BalancerCollector
from ._endpoint import EndpointSnapshot
from ._interfaces import IBalancer, IPick
from ._leastrequest import LeastRequest
from ._p2c import P2CPeakEWMA
from ._random import RandomChoice
from ._roundrobin import RoundRobin
from ._waiter import FAILFAST, NoEndpointsReady, Waiter

#: Balancer classes by the name a service's C{balancer} key uses, the
#: default first; each is called as C{factory(endpoints, clock, random)}.
BALANCERS = {
    "p2c-peak-ewma": P2CPeakEWMA,
    "round-robin": RoundRobin,
    "least-request": LeastRequest,
    "random": RandomChoice,
}

__all__ = [
    "BALANCERS",
    "FAILFAST",
    "BalancerCollector",
    "EndpointSnapshot",
    "IBalancer",
    "IPick",
    "LeastRequest",
    "NoEndpointsReady",
    "P2CPeakEWMA",
    "RandomChoice",
    "RoundRobin",
    "Waiter",
]
