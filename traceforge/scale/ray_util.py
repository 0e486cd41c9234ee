"""Connecting to Ray, the optional engine behind ``--executor ray`` (``pip install
'traceforge[ray]'``). Only this module and the Ray executors import ``ray``, always lazily.

Addresses (``--address``):

- none: start a private Ray instance on this machine, bound to loopback (``127.0.0.1``) only;
- ``auto``: the cluster this machine belongs to (``ray start`` was run here);
- ``ray://HOST:PORT`` (Ray client) or ``HOST:PORT`` (the head's GCS): that cluster.

Loopback: Ray resolves ``127.0.0.1`` to the machine's outward address when it connects (its
"node IP from the perspective of the network"). For a private instance or a loopback address we
set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported, which makes Ray keep the
loopback address, so nothing listens on or connects to another interface.
"""

from __future__ import annotations

import os

from traceforge.errors import BadInput

LOOPBACK = "127.0.0.1"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.removeprefix("ray://").rsplit(":", 1)[0].strip("[]")
    return host in _LOOPBACK_HOSTS


def import_ray(address: str | None = None):
    """``import ray`` with the loopback setting applied first where it applies."""
    if is_loopback(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError as exc:
        raise BadInput("Ray is not installed (pip install 'traceforge[ray]')",
                       key="--executor", value="ray") from exc
    return ray


def init_ray(address: str | None):
    """Connect (or start a loopback-only local instance); reuse a connection already made.
    Returns ``(ray, owned)``: ``owned`` when this call connected, so the caller disconnects."""
    ray = import_ray(address)
    if ray.is_initialized():
        return ray, False
    if address is None:
        ray.init(_node_ip_address=LOOPBACK, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    else:
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, ValueError) as exc:
            raise BadInput(f"cannot connect to Ray: {exc}", key="--address",
                           value=address) from exc
    return ray, True
