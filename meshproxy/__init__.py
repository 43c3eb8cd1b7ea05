"""
meshproxy: a service-mesh sidecar proxy on Twisted.

Protocol detection, mutual TLS between proxies, per-request load balancing
and golden metrics, beside each application instance, without Kubernetes.
"""

__version__ = "0.1.0"
