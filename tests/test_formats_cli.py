"""The `vsv validate` and `vsv format` verbs, in-process and as a real subprocess."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from supervisor.formats_cli import format_path, validate_paths
from supervisor.xml import parse_document

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted(str(p.relative_to(REPO)) for p in (REPO / "examples").glob("*.xml"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_validate_examples_exit_zero() -> None:
    """`vsv validate examples/*.xml` prints one ok line per file and exits 0."""
    result = _run("validate", *EXAMPLES)
    oks = [line for line in result.stdout.splitlines() if ": ok (" in line]
    assert (0, len(EXAMPLES), "") == (result.returncode, len(oks), result.stderr)


def test_examples_are_all_there() -> None:
    """The promised examples exist (so the test above cannot pass on an empty glob)."""
    expected = {
        "web1.xml",
        "db1.xml",
        "web1-nat.xml",
        "db1-nat.xml",
        "iso1.xml",
        "demo-nat.xml",
        "demo-isolated.xml",
    }
    assert expected <= {Path(p).name for p in EXAMPLES}


def test_validate_broken_gives_path_line_message_and_exit_one() -> None:
    """A broken document gives 'PATH:LINE: message' lines on stderr and exit status 1."""
    result = _run("validate", "tests/data/broken-domain.xml")
    first = (
        "tests/data/broken-domain.xml:1: domain/@id: value '1' is out of range: allowed 2..49151"
    )
    lines = result.stderr.splitlines()
    assert (1, first, 4) == (result.returncode, lines[0], len(lines))


def test_validate_mixed_reports_ok_and_problems() -> None:
    """Valid and broken files together: oks on out, problems on err, exit 1."""
    out, err = io.StringIO(), io.StringIO()
    status = validate_paths(
        [str(REPO / "examples/web1.xml"), str(REPO / "tests/data/broken-network.xml")],
        out=out,
        err=err,
    )
    assert (1, 1, 4) == (status, len(out.getvalue().splitlines()), len(err.getvalue().splitlines()))


def test_unreadable_file_is_a_problem(tmp_path: Path) -> None:
    """A missing file is reported as 'PATH: cannot read: ...' with exit status 1."""
    missing = tmp_path / "nope.xml"
    out, err = io.StringIO(), io.StringIO()
    status = validate_paths([str(missing)], out=out, err=err)
    assert (1, f"{missing}: cannot read: No such file or directory\n") == (status, err.getvalue())


def test_format_prints_stored_form() -> None:
    """`vsv format` prints the canonical document, which reads back to the same model."""
    out, err = io.StringIO(), io.StringIO()
    path = str(REPO / "examples/web1.xml")
    status = format_path(path, out=out, err=err)
    assert (0, parse_document(Path(path).read_bytes())) == (status, parse_document(out.getvalue()))


def test_format_subprocess_broken_exit_one() -> None:
    """`vsv format` on a broken document prints its problems and exits 1."""
    result = _run("format", "tests/data/broken-network.xml")
    assert (1, "", True) == (
        result.returncode,
        result.stdout,
        result.stderr.startswith("tests/data/broken-network.xml:3: bridge/@name"),
    )
