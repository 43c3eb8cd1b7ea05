"""
Load balancers behind one interface, L{IBalancer}.
"""

from ._interfaces import IBalancer, IPick
from ._roundrobin import RoundRobin

#: Balancer implementations by the name a service's C{balancer} key uses.
BALANCERS = {"round-robin": RoundRobin}

__all__ = ["BALANCERS", "IBalancer", "IPick", "RoundRobin"]
