"""A/B of dsocr's HTTP throughput: the server from one source tree against another, alternating.

Each pass starts ``python -m dsocr serve`` from one tree (``PYTHONPATH=TREE``) on a free port of
127.0.0.1, waits for ``/ready``, drives ``/v1/chat/completions`` with the peer bench's client
(``../shared/gpu/bench_vllm_serve.py --base URL --plain``: 8 warm-up pages, then ``--pages``
synthetic A4 pages from 8 client processes at once, ``--tokens`` output tokens each) and stops the
server with its whole process group (vLLM's engine core included) before the next pass. The order
alternates old, new, new, old, ... (``--order`` sets it). Prints one ``PASS {json}`` line per
pass, then ``AB {json}``: pages/s per tree (mean, min, max), new / old of the means, new / old of
each pair (the k-th old pass with the k-th new one) and a one-line verdict against
``--min-ratio``. Exit status: 0 the verdict holds, 1 new/old is below ``--min-ratio``, 2 a server
or the client failed, 3 the plan is not complete yet (``--budget-s``; ``--results`` keeps the passes
done, and the same command goes on with the rest).

On the vLLM engine the random dummy weights emit EOS at random, and the HTTP API refuses
``ignore_eos``; so the server process forces the length of requests asking exactly ``--tokens``
(``ignore_eos`` set on their vLLM ``SamplingParams``: ``serve_harness.BOOT``, which patches vLLM,
not dsocr). dsocr's ``dsocr_modes`` vLLM plugin (its DeepSeek-OCR subclass: all modes, views
built on the GPU) is registered for each tree through a generated entry-point folder on
``PYTHONPATH``, as ``pip install dsocr`` would register it; ``--no-plugin`` leaves it out.

    python3 bench/ab_http.py --model /root/dsocr-dummy --old /tmp/old/src --new src
    python3 bench/ab_http.py --engine fake --old /tmp/old/src --new src --pages 16 --tokens 16
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_harness import (
    BOOT,
    Failure,
    Tree,
    engine_settings,
    find_client,
    free_port,
    get_json,
    on_sigterm,
    run_client,
    server_settings,
    start,
    stop,
    wait_ready,
)


def run_pass(tree: Tree, index: int, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = logs / f"server_{index}_{tree.label}.log"
    forced = args.tokens if args.engine == "vllm" else 0
    settings = engine_settings(args.engine, args.model, args.fake_delay_s)
    env = tree.env({**settings, **server_settings(port, args.pages, args.tokens)}, args.env)
    print(f"pass {index} ({tree.label}): starting the server on port {port}, log {log}", file=sys.stderr)
    started = time.monotonic()
    proc = start([sys.executable, "-c", BOOT, str(forced), "serve"], env, log)
    try:
        ready = wait_ready(base + "/ready", proc, log, args.ready_timeout)
        start_s = time.monotonic() - started
        models = get_json(base + "/v1/models")[1]["data"]
        model, timeout_s = models[0]["id"], args.client_timeout
        result = run_client(
            args.client, base, model, args.pages, args.tokens, plain=True, timeout_s=timeout_s
        )
    finally:
        stop(proc, args.grace)
    tokens_per_page = result["out_tok_per_s"] * result["wall_s"] / result["pages"]
    if tokens_per_page < 0.98 * args.tokens:
        print(f"warning: {tokens_per_page:.0f} output tokens per page, not {args.tokens}", file=sys.stderr)
    return {
        "label": tree.label,
        "pass": index,
        "pages_per_s": result["pages_per_s"],
        "wall_s": result["wall_s"],
        "tokens_per_page": round(tokens_per_page),
        "server_start_s": round(start_s, 1),
        "modes": (ready or {}).get("engine", {}).get("modes"),
        "src": str(tree.src),
    }


def pass_order(args: argparse.Namespace) -> list[str]:
    if args.order:
        order = [label.strip() for label in args.order.split(",")]
        if set(order) - {"old", "new"}:
            raise SystemExit(f"--order takes old and new only, got {args.order!r}")
        return order
    pairs = [("old", "new") if k % 2 == 0 else ("new", "old") for k in range(args.passes)]
    return [label for pair in pairs for label in pair]


def summarize(passes: list[dict[str, Any]], min_ratio: float) -> dict[str, Any]:
    speeds = {label: [p["pages_per_s"] for p in passes if p["label"] == label] for label in ("old", "new")}
    per_label = {
        label: {"passes": len(v), "mean": round(statistics.fmean(v), 3), "min": min(v), "max": max(v)}
        for label, v in speeds.items()
        if v
    }
    if len(per_label) < 2:
        return {"per_label": per_label, "holds": None, "summary": "no verdict: no passes of both old and new"}
    ratio = per_label["new"]["mean"] / per_label["old"]["mean"]
    pairs = [round(new / old, 3) for old, new in zip(speeds["old"], speeds["new"], strict=False)]
    holds = ratio >= min_ratio
    few = " (fewer than 2 passes each)" if min(len(v) for v in speeds.values()) < 2 else ""
    return {
        "per_label": per_label,
        "ratio_of_means": round(ratio, 3),
        "pair_ratios": pairs,
        "pair_range": [min(pairs), max(pairs)],
        "holds": holds,
        "summary": (
            f"new/old {ratio:.3f} (pairs {min(pairs):.3f}-{max(pairs):.3f}): new {per_label['new']['mean']} "
            f"pages/s, old {per_label['old']['mean']}; {'OK' if holds else 'BELOW'} {min_ratio}{few}"
        ),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", type=Path, required=True, help="src folder of the baseline checkout")
    ap.add_argument("--new", type=Path, required=True, help="src folder of the changed checkout")
    ap.add_argument("--model", default="/root/dsocr-dummy", help="model directory (vLLM engine)")
    ap.add_argument("--engine", choices=["vllm", "fake"], default="vllm")
    ap.add_argument("--fake-delay-s", type=float, default=0.0, help="fake engine: delay per request")
    ap.add_argument("--passes", type=int, default=2, help="passes per tree, order old,new,new,old,...")
    ap.add_argument("--order", help="explicit order, e.g. old,new,new,old (overrides --passes)")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--client", type=Path, help="the peer bench (default: ../shared/gpu/, else .gpu/bin/)")
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for both servers (repeatable)")
    ap.add_argument("--no-plugin", dest="plugin", action="store_false", help="leave dsocr_modes out")
    ap.add_argument("--min-ratio", type=float, default=0.97)
    ap.add_argument("--ready-timeout", type=float, default=300.0)
    ap.add_argument("--client-timeout", type=float, default=1200.0)
    ap.add_argument("--grace", type=float, default=30.0, help="seconds after Ctrl-C before SIGTERM")
    ap.add_argument(
        "--results", type=Path, help="JSON lines of passes: earlier ones count, new ones appended"
    )
    ap.add_argument("--budget-s", type=float, help="start no pass that would end after this many seconds")
    ap.add_argument("--log-dir", type=Path, help="server logs (default $OUT, else a temporary folder)")
    args = ap.parse_args()
    try:  # ../shared stays behind on the device: there the client travels in a carried folder
        args.client = find_client(args.client)
    except Failure as e:
        raise SystemExit(str(e)) from None
    if any("=" not in item for item in args.env):
        raise SystemExit("--env takes KEY=VALUE")
    signal.signal(signal.SIGTERM, on_sigterm)
    began = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="ab_http_"))
    logs = args.log_dir or Path(os.environ.get("OUT") or work / "logs")
    logs.mkdir(parents=True, exist_ok=True)
    passes: list[dict[str, Any]] = []
    if args.results and args.results.is_file():
        passes = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    plan = pass_order(args)
    if passes:  # a plan that did not fit in one call goes on where the last call stopped
        print(f"{len(passes)} of {len(plan)} passes done before ({args.results})", file=sys.stderr)
        if [p["label"] for p in passes] != plan[: len(passes)]:
            raise SystemExit(f"{args.results} holds passes of another order than {','.join(plan)}")
    longest = 0.0
    try:
        trees = {label: Tree(label, getattr(args, label), work, args.plugin) for label in ("old", "new")}
        for label in plan[len(passes) :]:
            if args.budget_s and time.monotonic() - began + 1.2 * longest > args.budget_s:
                print(
                    f"stopping: the next pass would overrun --budget-s {args.budget_s:.0f}", file=sys.stderr
                )
                break
            started = time.monotonic()
            record = run_pass(trees[label], len(passes) + 1, args, logs)
            longest = max(longest, time.monotonic() - started)
            record["pass_s"] = round(time.monotonic() - started, 1)
            print("PASS", json.dumps(record), flush=True)
            passes.append(record)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        return 2
    finally:
        if not logs.is_relative_to(work):
            shutil.rmtree(work, ignore_errors=True)
    ab = summarize(passes, args.min_ratio)
    if len(passes) < len(plan):
        ab["holds"] = None
        so_far = f"new/old {ab['ratio_of_means']} so far" if "ratio_of_means" in ab else "no pair yet"
        ab["summary"] = f"INCOMPLETE: {len(passes)} of {len(plan)} passes, {so_far} (run the command again)"
    print("AB", json.dumps(ab), flush=True)
    print(ab["summary"], flush=True)
    return 3 if ab["holds"] is None else 0 if ab["holds"] else 1


if __name__ == "__main__":
    sys.exit(main())
