"""vsupervisor: a guest-context supervisor for Linux.

Guests are process trees in their own namespaces and cgroups, defined in libvirt-style XML and
supervised by a trio nursery; every lifecycle change is an event on a bus.
"""

__version__ = "0.1.0"
