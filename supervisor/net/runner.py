"""Running helper programs (nft, dnsmasq) inside a given network namespace.

The "host" side of the subsystem may be a namespace of its own (sandbox mode, tests), so every
program is started through util-linux ``nsenter --net=PATH``, which enters the namespace and then
executes the program in place: the pid the supervisor sees is the program's own, so signals reach
it directly. ``None`` as the namespace means the supervisor's own.
"""

from __future__ import annotations

import trio

from supervisor.errors import RuntimeFailure

NSENTER = "/usr/bin/nsenter"


def in_netns(netns: str | None, argv: list[str]) -> list[str]:
    """The command line that runs ``argv`` inside the network namespace at path ``netns``."""
    if netns is None:
        return argv
    return [NSENTER, f"--net={netns}", "--", *argv]


async def run_checked(netns: str | None, argv: list[str], stdin: str | None = None) -> str:
    """Run a short program in the namespace; its stderr becomes the error message on failure."""
    try:
        done = await trio.run_process(
            in_netns(netns, argv),
            stdin=stdin.encode() if stdin is not None else b"",
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            # not in the terminal's process group: a Ctrl-C must not cut an nft change in half
            start_new_session=True,
        )
    except OSError as exc:
        raise RuntimeFailure(f"cannot run {argv[0]}: {exc}") from exc
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()
        raise RuntimeFailure(f"{' '.join(argv[:3])} failed (exit {done.returncode}): {err}")
    return done.stdout.decode(errors="replace")
