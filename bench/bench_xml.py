"""Benchmark of the XML codec: parse+validate and format of a typical domain, one core.

Prints a table and writes bench/results/xml.json. The floor is plain ``lxml.etree.fromstring`` on
the same bytes, measured in the same run, so the ratio says what the codec adds on top of parsing.
Targets: >= 10,000 parse+validate per second, and <= 5x the plain parse.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from supervisor.xml import format_domain, parse_domain  # noqa: E402

ROUNDS = 7
TARGET_RATE = 10_000
TARGET_RATIO = 5.0


def _documents() -> list[tuple[str, bytes]]:
    """The examples (typical guests) as the supervisor stores them."""
    docs = []
    for name in ("web1.xml", "db1.xml", "web1-nat.xml", "iso1.xml"):
        domain = parse_domain((REPO / "examples" / name).read_bytes())
        docs.append((name, format_domain(domain).encode()))
    return docs


def _rate(fn: Callable[[], object], n: int) -> float:
    """Best-of-ROUNDS operations per second (median reported too)."""
    rates = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n / (time.perf_counter() - start))
    return max(rates), statistics.median(rates)  # type: ignore[return-value]


def main() -> int:
    docs = _documents()
    n = 2000
    results = []
    for name, data in docs:
        domain = parse_domain(data)
        _plain_best, plain_med = _rate(lambda data=data: etree.fromstring(data), n)  # type: ignore[misc]
        parse_best, parse_med = _rate(lambda data=data: parse_domain(data), n)  # type: ignore[misc]
        _fmt_best, fmt_med = _rate(lambda domain=domain: format_domain(domain), n)  # type: ignore[misc]
        results.append(
            {
                "document": name,
                "bytes": len(data),
                "plain_fromstring_per_s": round(plain_med),
                "parse_validate_per_s": round(parse_med),
                "parse_validate_best_per_s": round(parse_best),
                "format_per_s": round(fmt_med),
                "ratio_to_plain_parse": round(plain_med / parse_med, 2),
            }
        )
    header = (
        f"{'document':<14}{'bytes':>7}{'lxml/s':>10}{'parse+val/s':>13}{'format/s':>10}{'ratio':>7}"
    )
    print(header)
    for r in results:
        print(
            f"{r['document']:<14}{r['bytes']:>7}{r['plain_fromstring_per_s']:>10}"
            f"{r['parse_validate_per_s']:>13}{r['format_per_s']:>10}{r['ratio_to_plain_parse']:>7}"
        )
    worst_rate = min(r["parse_validate_per_s"] for r in results)
    worst_ratio = max(r["ratio_to_plain_parse"] for r in results)
    ok = worst_rate >= TARGET_RATE and worst_ratio <= TARGET_RATIO
    print(
        f"worst parse+validate {worst_rate}/s (target >= {TARGET_RATE}), worst ratio "
        f"{worst_ratio}x (target <= {TARGET_RATIO}x): {'OK' if ok else 'MISSED'}"
    )
    out = REPO / "bench" / "results" / "xml.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "lxml": ".".join(map(str, etree.LXML_VERSION)),
                "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
                "rounds": ROUNDS,
                "iterations": n,
                "statistic": "median of rounds",
                "targets": {"parse_validate_per_s": TARGET_RATE, "ratio": TARGET_RATIO},
                "met": ok,
                "results": results,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
