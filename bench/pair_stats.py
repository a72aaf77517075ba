"""HTTP against offline over many rounds: the ratios' statistics from ``gpu_throughput.py`` logs.

Reads the ``ROUND`` and ``RESULT`` lines of ``--phases engine`` logs (each round: one offline pass
and one HTTP pass on one engine) and prints, per variant of the rounds (``--key``: a field of the
``ROUND`` line, e.g. ``pixels``; none: all rounds together):

- ``ratio``: HTTP pages/s over the offline pages/s of the same round — n, mean, median, minimum,
  standard deviation and a 95 % confidence interval of the mean (Student's t);
- the means of both passes' pages/s, of the last page's render time and of the front process's
  CPU seconds and thread count.

usage: python bench/pair_stats.py LOG [LOG ...] [--key pixels [--missing VALUE]]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

# Student's t, two-sided 95 %, by degrees of freedom (1–30); beyond that the normal's 1.96.
_T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160]
_T95 += [2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056]
_T95 += [2.052, 2.048, 2.045, 2.042]


def rounds(path: Path) -> list[dict[str, Any]]:
    """Each round of one log: its ``ROUND`` fields and its offline and HTTP ``RESULT``s."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("ROUND "):
            current = {"round": json.loads(line[6:]), "log": path.name}
            found.append(current)
        elif line.startswith("RESULT ") and current is not None:
            res = json.loads(line[7:])
            phase = res["phase"]
            if "-" in phase:  # not the http-N front-end passes
                continue
            if phase.startswith("http"):
                current["http"] = res
            elif phase.startswith("engine"):
                current["offline"] = res
    return [r for r in found if "http" in r and "offline" in r]


def interval(values: list[float]) -> tuple[float, float]:
    """The 95 % confidence interval of the mean of ``values`` (Student's t)."""
    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return mean, mean
    t = _T95[n - 2] if n - 1 <= len(_T95) else 1.96
    half = t * statistics.stdev(values) / math.sqrt(n)
    return mean - half, mean + half


def summary(group: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [r["http"]["pages_per_s"] / r["offline"]["pages_per_s"] for r in group]
    low, high = interval(ratios)

    def mean_of(kind: str, pick: Any) -> float | None:
        values = [v for r in group if (v := pick(r[kind])) is not None]
        return round(statistics.mean(values), 3) if values else None

    def last_rendered(res: dict[str, Any]) -> float | None:
        rendered = res.get("timeline", {}).get("rendered")
        return rendered[-1] if rendered else None

    return {
        "n": len(ratios),
        "ratio_mean": round(statistics.mean(ratios), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_sd": round(statistics.stdev(ratios), 3) if len(ratios) > 1 else None,
        "ratio_ci95": [round(low, 3), round(high, 3)],
        "at_least_0.95": sum(r >= 0.95 for r in ratios),
        **{
            f"{kind}_{name}": mean_of(kind, pick)
            for kind in ("offline", "http")
            for name, pick in (
                ("pages_per_s", lambda res: res["pages_per_s"]),
                ("last_rendered_s", last_rendered),
                ("front_cpu_s", lambda res: res.get("front_cpu_s")),
                ("front_threads", lambda res: res.get("front_threads")),
            )
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("logs", nargs="+", type=Path)
    ap.add_argument("--key", help="group rounds by this field of their ROUND line")
    ap.add_argument(
        "--missing",
        help="with --key: the value of rounds whose ROUND line lacks the field (the bench's default "
        "in runs without the switch), e.g. --key page_arrays --missing on",
    )
    a = ap.parse_args()
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for path in a.logs:
        for r in rounds(path):
            groups[str(r["round"].get(a.key, a.missing)) if a.key else "all"].append(r)
    if not groups:
        raise SystemExit("no round with both an offline and an HTTP pass in these logs")
    for name, group in sorted(groups.items()):
        print(f"{a.key or 'rounds'}={name}", json.dumps(summary(group)))


if __name__ == "__main__":
    main()
