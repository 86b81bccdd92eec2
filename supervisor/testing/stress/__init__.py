"""``vsv stress``: a stateful stress harness that drives the real Supervisor against a tiny model.

Theory of operation
-------------------
A hypothesis :class:`~hypothesis.stateful.RuleBasedStateMachine` (:mod:`.machine`) picks random
operations: define (an active guest's new definition waits for its next fresh boot) / undefine /
start / shutdown / destroy / reboot / suspend / resume, guest-initiated reboot / poweroff /
crash / exit, starts that fail in the runtime, time passing (shutdown deadlines, restart
backoff), event consumers that connect, fall behind and disconnect, and the supervisor replaced
by a new one on the same state and run dirs, as an upgrade does: it must re-adopt every running
and paused guest with the definition and CPU shares it runs with, report a preserved one whose
init is gone, take over the network that ran (same bridge, the adopted guests' NICs still on
it) and keep numbering events where the old one stopped. Each operation goes to a real
:class:`~supervisor.daemon.Supervisor` *and* to :class:`.model.Model`, a small independent
re-statement of the lifecycle contract (docs/lifecycle.md: the libvirt state each guest must be
in and the exact events each operation must produce). It does not use the supervisor's
transition table, so a wrong row in the table is caught, not copied.

After every step the harness (:class:`.harness.Harness`) checks that

- each guest's ``(state, reason)`` from ``Supervisor.domain_status`` is the model's, and an
  operation the model calls illegal was refused (InvalidOperation / NotFound) with no event;
- the runtime agrees: processes and cgroups exist exactly for the guests the model says are
  active, frozen exactly for paused ones (fake: the in-memory kernel; real: cgroup directories,
  ``cgroup.procs``, ``/proc``);
- the event stream is consistent (:mod:`.events`): sequence numbers rise by one across all
  events, every domain's events are exactly the model's, and a per-domain grammar holds
  (STARTED only while inactive, STOPPED only while active except the STOPPED that ends a start
  attempt, nothing after UNDEFINED until a new DEFINED ADDED); a slow consumer gets the same
  events with gap markers covering exactly what it missed, or is dropped with the right resume
  point;

and at teardown everything is destroyed and undefined, every STARTED has had its STOPPED, and
nothing is left (fake: :meth:`~supervisor.testing.fakeruntime.FakeRuntime.leftovers`; real: no
cgroup directory and no process with the run's prefix).

Two runtimes (:mod:`.backends`). ``fake`` runs the supervisor in ``trio.run`` with a
:class:`trio.testing.MockClock` that only moves when the ``advance_clock`` operation says so;
after each operation the harness waits until every task is blocked, so every step ends in a
deterministic, quiescent state and timed phases (STOPPING before its deadline, RESTARTING and
REBOOTING during backoff) are observable. ``real`` uses
:class:`~supervisor.guest.linux.LinuxRuntime` with busybox guests whose init polls ``/tmp/cmd``
in its own root every 50 ms and does ``reboot -f``, ``poweroff -f`` or ``exit 3`` when told;
there time is real, so after each operation the harness waits (``trio.fail_after``) until the
supervisor reaches the model's settled state.

The real runtime also drives networking and the scheduler. Each example creates a sandbox
network namespace (``<prefix>-sbx``) and runs the supervisor with ``host_netns`` set to it, so
every host-side object (bridge ``<prefix>b0``, nft table, dnsmasq) lives there and the host's
own interfaces are never touched. One NAT network (:data:`.backends.NETWORK`) is defined and
started at the beginning; ``net_start``/``net_destroy`` toggle it. Some guests carry a NIC on it
(the others a private, empty namespace): a NIC guest's start, or its automatic restart, fails
with STOPPED FAILED (reason start-failed) while the network is down. Destroying the network
leaves its running guests running with a dangling NIC (no bridge port, as libvirt's
``net-destroy`` does), and a later ``net_start`` plugs them back in. ``schedinfo`` sets
``cpu_shares`` live: one TUNABLE ``cputune.shares`` when the value changes, none when it does
not, InvalidOperation when the guest does not run. After every step the harness checks, besides
the above: each NIC guest's named namespace exists exactly while it is active; the bridge's
ports (``ip -n SANDBOX link show master BRIDGE``) are exactly the host ends of the plugged
guests, whose addresses differ; the network's nft table and its one dnsmasq exist exactly while
it runs; its events are the model's (DEFINED, STARTED/STOPPED alternating, UNDEFINED); running
guests' ``cpu.shares`` is the model's. At the end of each example nothing with the example's
prefix is left (:func:`supervisor.gc.find`).

Hypothesis runs in the calling thread; the supervisor runs in ``trio.run`` on a helper thread
(one per example). How a run is cut into examples and replayed from its seed: :mod:`.run`.

Modules: :mod:`.model` (pure), :mod:`.events` (the stream's checks), :mod:`.backends` (fake and
real runtime), :mod:`.harness` (one example), :mod:`.machine` (the operations and the state
machine), :mod:`.run` (the runner and ``vsv stress``). Importing this package imports none of
them.
"""
