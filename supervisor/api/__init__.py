"""The control API: REST over Unix sockets (server side) and its clients.

This package's ``__init__`` imports nothing, on purpose: the CLI imports
:mod:`supervisor.api.client` (stdlib only) and must not pay for trio, hypercorn or httpx, which
the server (:mod:`~supervisor.api.app`, :mod:`~supervisor.api.server`) and the consumer client
(:mod:`~supervisor.api.pyclient`) need.
"""
