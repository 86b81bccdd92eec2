"""Fleet events: every host's journal published to NATS JetStream (see docs/fleet.md).

Kept empty on purpose: ``vsv``'s parser imports :mod:`supervisor.fleet.cli`, and nothing here
may pull in nats-py (about 170 ms to import) on the way.
"""
