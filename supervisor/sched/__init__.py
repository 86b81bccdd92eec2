"""Scheduler subsystem: VServer CPU tokens on the cgroup CPU controller.

- :mod:`.mapping` (pure): token bucket and ``<cputune>`` onto cgroup v1/v2 values, with losses;
- :mod:`.params` (pure): ``schedinfo`` parameter names, ``k=v`` parsing, TUNABLE change sets;
- :mod:`.tuner`: the idle-time tuner's pure :func:`~.tuner.decide` and its thin trio runner;
- :mod:`.cgroupcpu` (edge): the cgroup files, ``cpu.stat`` accounting, host idle from /proc/stat;
- :mod:`.subsystem` (edge): the bus hooks, live ``schedinfo`` changes and the tuner task.

See docs/scheduler.md.
"""
