"""The network subsystem's building blocks: virNetworks and per-guest NIC plumbing.

Pure planning (:mod:`names`, :mod:`ipam`, the text generators in :mod:`nftables` and
:mod:`dnsmasq`) is kept apart from the edges that touch the kernel (:mod:`netlink`, the ``nft``
and ``dnsmasq`` programs), so that most rules can be tested without root. Every function that
touches the kernel takes the "host" network namespace as a parameter: in sandbox mode (and in
the tests) the supervisor's host side lives in a namespace of its own.
"""
