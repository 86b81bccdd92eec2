"""The supervisor's drill kit: the stress harness and the in-memory fakes it runs on.

Why it ships in the package: the stress harness is part of the product. An administrator runs
``vsv stress`` to drill a build on the host it will run on (``--runtime real``: real guests,
cgroups and a NAT network in a sandbox namespace) or, in seconds, the supervisor's whole
lifecycle logic against a model (``--runtime fake``). What it needs must therefore install with
the package, not with a test extra.

What is here
------------
- :mod:`supervisor.testing.stress`: ``vsv stress``, a hypothesis state machine that drives the
  real :class:`~supervisor.daemon.Supervisor` and compares it with a tiny model after every step.
- :mod:`supervisor.testing.fakeruntime`: an in-memory :class:`~supervisor.runtime.Runtime` (the
  kernel's side: cgroups and guest processes as Python objects), so the fake stress run and the
  property tests run the real supervisor code thousands of times a second.
- :mod:`supervisor.testing.fakefacade`: an in-memory
  :class:`~supervisor.facade.SupervisorFacade` for fast tests and benchmarks of the API layer,
  its clients and the CLI.

The fakes serve the harness and the tests only. The daemon never imports this package, and no
fake stands in for the real implementation where a test checks real behaviour. Importing this
package imports nothing else: ``vsv``'s parser stays cheap.
"""
