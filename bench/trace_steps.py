"""Per engine step of a vLLM torch-profiler trace: GPU span, kernel time, kernel count, idle gaps,
and the host's top-level torch ops of one step.

vLLM's profiler (``bench/gpu_throughput.py --phases profile``) writes a Chrome trace per worker;
each model step is a ``execute_context_P(T)_generation_D(D)`` range (P prefilling requests with T
tokens, D decoding), on the host (``user_annotation``) and on the GPU (``gpu_user_annotation``).
A step whose GPU span is much longer than its kernel time is waiting for the host.

usage: python bench/trace_steps.py TRACE.pt.trace.json.gz [--step N] [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
from pathlib import Path
from typing import Any

STEP = "execute_context"


def load(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        trace = json.load(f)
    return trace["traceEvents"] if isinstance(trace, dict) else trace  # type: ignore[no-any-return]


def steps(events: list[dict[str, Any]], category: str) -> list[dict[str, Any]]:
    return sorted(
        (e for e in events if e.get("cat") == category and e.get("name", "").startswith(STEP)),
        key=lambda e: e["ts"],
    )


def gpu_rows(events: list[dict[str, Any]], gap_us: float = 1000.0) -> list[dict[str, Any]]:
    """One row per GPU step range: span, kernel (and copy) time, count, idle gaps over ``gap_us``."""
    work = sorted(
        (e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e),
        key=lambda e: e["ts"],
    )
    rows = []
    for step in steps(events, "gpu_user_annotation"):
        start, end = step["ts"], step["ts"] + step["dur"]
        inside = [e for e in work if start <= e["ts"] < end]
        gaps, last = [], start
        for e in inside:
            if e["ts"] - last > gap_us:
                gaps.append(e["ts"] - last)
            last = max(last, e["ts"] + e["dur"])
        rows.append(
            {
                "step": step["name"],
                "span_ms": round(step["dur"] / 1e3, 1),
                "busy_ms": round(sum(e["dur"] for e in inside) / 1e3, 1),
                "kernels": len(inside),
                "gaps_over_1ms": len(gaps),
                "gaps_over_1ms_ms": round(sum(gaps) / 1e3, 1),
            }
        )
    return rows


def host_ops(events: list[dict[str, Any]], index: int) -> tuple[str, float, list[tuple[str, int, float]]]:
    """The host side of step ``index``: its name, wall ms, and its top-level torch ops (name,
    calls, ms), an op nested in another on the same thread counted in its parent only."""
    step = steps(events, "user_annotation")[index]
    start, end = step["ts"], step["ts"] + step["dur"]
    ops = sorted(
        (e for e in events if e.get("cat") == "cpu_op" and start <= e["ts"] < end),
        key=lambda e: (e["tid"], e["ts"]),
    )
    calls: collections.Counter[str] = collections.Counter()
    time_us: collections.Counter[str] = collections.Counter()
    open_until: dict[Any, float] = {}
    for e in ops:
        if e["ts"] >= open_until.get(e["tid"], -1.0):
            calls[e["name"]] += 1
            time_us[e["name"]] += e["dur"]
            open_until[e["tid"]] = e["ts"] + e["dur"]
    table = [(name, n, round(time_us[name] / 1e3, 1)) for name, n in calls.most_common()]
    return step["name"], round(step["dur"] / 1e3, 1), table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", type=Path)
    ap.add_argument("--step", type=int, help="host ops of this step (default: the longest)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    events = load(a.trace)
    rows = gpu_rows(events)
    for i, row in enumerate(rows):
        print(f"STEP {i} {json.dumps(row)}")
    spans = [r["span_ms"] for r in rows]
    busy = [r["busy_ms"] for r in rows]
    if rows:
        share = 100 * sum(busy) / sum(spans)
        print(f"TOTAL span {sum(spans):.1f} ms, kernels {sum(busy):.1f} ms ({share:.0f} % busy)")
    index = a.step if a.step is not None else max(range(len(spans)), key=spans.__getitem__, default=0)
    name, wall_ms, table = host_ops(events, index)
    print(
        f"HOST step {index} {name}: {wall_ms} ms wall, {sum(n for _, n, _ in table)} top-level ops, "
        f"{sum(ms for _, _, ms in table):.1f} ms in them"
    )
    for op, n, ms in sorted(table, key=lambda t: -t[2])[: a.top]:
        print(f"  {n:6d} calls {ms:8.1f} ms  {op}")


if __name__ == "__main__":
    main()
