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
(``ignore_eos`` set on their vLLM ``SamplingParams``, the same as gpu_throughput.py's
``ForcedLength``). dsocr's ``dsocr_modes`` vLLM plugin (its DeepSeek-OCR subclass: all modes, views
built on the GPU) is registered for each tree through a generated entry-point folder on
``PYTHONPATH``, as ``pip install dsocr`` would register it; ``--no-plugin`` leaves it out.

    python3 bench/ab_http.py --model /root/dsocr-dummy --old /tmp/old/src --new src
    python3 bench/ab_http.py --engine fake --old /tmp/old/src --new src --pages 16 --tokens 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE_PIXELS = 1190 * 1684  # the client's synthetic A4 page

# Run by the server process instead of ``-m dsocr``: installs the length forcing when vLLM's
# AsyncLLM module is first imported (dsocr imports vLLM lazily, after setting its environment),
# then runs ``python -m dsocr serve``. argv[1]: the forced length, 0 for none.
BOOT = r"""
import importlib.abc, runpy, sys

TOKENS = int(sys.argv[1])

def force(cls):
    generate = cls.generate
    def forced(self, prompt, sampling_params, *args, **kwargs):
        if getattr(sampling_params, "max_tokens", None) == TOKENS:
            sampling_params.ignore_eos = True
        return generate(self, prompt, sampling_params, *args, **kwargs)
    cls.generate = forced
    print(f"ab_http: requests of {TOKENS} tokens run to full length (ignore_eos)", file=sys.stderr)

class ForceOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "vllm.v1.engine.async_llm":
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module
        def exec_and_force(module):
            exec_module(module)
            force(module.AsyncLLM)
        spec.loader.exec_module = exec_and_force
        return spec

if TOKENS:
    sys.meta_path.insert(0, ForceOnImport())
sys.argv = ["dsocr", "serve"]
runpy.run_module("dsocr", run_name="__main__", alter_sys=True)
"""

# Run with a tree's PYTHONPATH: where its dsocr lives and every setting's dotted path, so that
# the environment names follow the tree's own settings layout.
PROBE = r"""
import json, typing
import dsocr, dsocr.settings as s
from pydantic import BaseModel

def section(annotation):
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None

def walk(model, path):
    for name, field in model.model_fields.items():
        sub = section(field.annotation)
        yield from walk(sub, [*path, name]) if sub is not None else [".".join([*path, name])]

print(json.dumps({"file": dsocr.__file__, "fields": sorted(walk(s.Settings, []))}))
"""

# Where each tree keeps dsocr's vLLM model class (the plugin's module), newest layout first.
PLUGIN_MODULES = {
    "engine/vllm/model.py": "dsocr.engine.vllm.model",
    "engine/vllm_modes.py": "dsocr.engine.vllm_modes",
}


class Failure(Exception):
    """A server or the client failed: the A/B has no result."""


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def python_path(*entries: str) -> str:
    return os.pathsep.join([*entries, *filter(None, [os.environ.get("PYTHONPATH")])])


class Tree:
    """One source tree: its dsocr, and the environment names its settings understand."""

    def __init__(self, label: str, src: Path, work: Path, plugin: bool) -> None:
        self.label, self.src = label, src.resolve()
        if not (self.src / "dsocr" / "__init__.py").is_file():
            raise Failure(f"--{label} {src}: no dsocr package there (give a checkout's src folder)")
        self.paths = [str(self.src)]
        module = next((m for f, m in PLUGIN_MODULES.items() if (self.src / "dsocr" / f).is_file()), None)
        if plugin and module is not None:
            info = work / f"plugin_{label}" / "dsocr_ab_modes-0.dist-info"
            info.mkdir(parents=True, exist_ok=True)
            (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dsocr-ab-modes\nVersion: 0\n")
            (info / "entry_points.txt").write_text(
                f"[vllm.general_plugins]\ndsocr_modes = {module}:register\n"
            )
            self.paths.append(str(info.parent))
        env = {**os.environ, "PYTHONPATH": python_path(*self.paths)}
        probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            raise Failure(f"{label}: reading {self.src}'s settings failed:\n{probe.stderr[-2000:]}")
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        if not Path(found["file"]).resolve().is_relative_to(self.src):
            raise Failure(f"{label}: dsocr imports from {found['file']}, not from {self.src}")
        self.fields: list[str] = found["fields"]

    def env_name(self, dotted: str, required: bool = True) -> str | None:
        """``DSOCR_ENGINE__LOAD_FORMAT`` for ``engine.load_format``, or wherever the tree moved it
        (``engine.vllm.load_format``, say): the one field of that name in its section, else
        anywhere. ``a|b``: the first of two spellings that the tree has."""
        for spelling in dotted.split("|"):
            section, name = spelling.split(".", 1)[0], spelling.rsplit(".", 1)[-1]
            for candidates in (
                [f for f in self.fields if f == spelling],
                [f for f in self.fields if f.startswith(section + ".") and f.endswith("." + name)],
                [f for f in self.fields if f.endswith("." + name)],
            ):
                if len(candidates) == 1:
                    return "DSOCR_" + candidates[0].replace(".", "__").upper()
                if len(candidates) > 1:
                    break
        if required:
            raise Failure(
                f"{self.label}: no single setting {dotted!r} in {self.src} ({len(self.fields)} fields)"
            )
        print(f"note: {self.label}: setting {dotted} not found, left at its default", file=sys.stderr)
        return None

    def server_env(self, args: argparse.Namespace, port: int) -> dict[str, str]:
        wanted: dict[str, tuple[str, bool]] = {
            "engine.kind": (args.engine, True),
            "server.host": ("127.0.0.1", True),
            "server.port": (str(port), True),
            # Room for the whole load, so that no page is refused or times out: this measures speed.
            "limits.max_tokens": (str(max(args.tokens, 8192)), False),
            "limits.request_timeout_s": ("3600", False),
            "limits.max_queue": (str(max(512, 2 * args.pages)), False),
            "limits.max_inflight_pixels": (str(max(600_000_000, 2 * (args.pages + 8) * PAGE_PIXELS)), False),
            "limits.admission_wait_s": ("600", False),
            "server.max_concurrency": (str(max(256, args.pages + 16)), False),
        }
        if args.engine == "vllm":
            wanted |= {"engine.model": (args.model, True), "engine.load_format": ("dummy", True)}
        elif args.fake_delay_s:
            wanted["engine.fake.delay_s|engine.fake_delay_s"] = (str(args.fake_delay_s), True)
        env = {**os.environ, "PYTHONPATH": python_path(*self.paths)}
        for dotted, (value, required) in wanted.items():
            name = self.env_name(dotted, required)
            if name is not None:
                env[name] = value
        for item in args.env:
            key, value = item.split("=", 1)
            env[key] = value
        return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, limit_s: float) -> dict[str, Any]:
    deadline, last = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"server exited with status {proc.returncode} before ready; log tail:\n{tail(log)}")
        with contextlib.suppress(OSError, ValueError):
            status, last = get_json(base + "/ready")
            if status == 200:
                return dict(last)
        time.sleep(1)
    raise Failure(f"server not ready in {limit_s:.0f} s (last /ready: {last}); log tail:\n{tail(log)}")


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (Linux; zombies are left to their parent)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


RUNNING: set[int] = set()  # process groups of servers started and not yet stopped


def stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Ctrl-C to the server, then SIGTERM and SIGKILL to its group until none of it is left: the
    next pass needs the GPU memory of this one's engine core."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 15
        if group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        while group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()
            time.sleep(0.2)
    proc.poll()
    RUNNING.discard(proc.pid)
    if group_alive(proc.pid):
        print(f"warning: processes of group {proc.pid} survive SIGKILL", file=sys.stderr)


def on_sigterm(*_: object) -> None:
    """A device call's time limit sends SIGTERM, and SIGKILL soon after: no time for a graceful
    stop, and a server left behind would hold the GPU for the next call."""
    for pgid in RUNNING:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise Failure("stopped by SIGTERM; the running server was killed")


def run_client(args: argparse.Namespace, base: str, model_name: str) -> dict[str, Any]:
    cmd = [sys.executable, str(args.client), "x", "--base", base, "--plain", "--model-name", model_name]
    cmd += ["--pages", str(args.pages), "--tokens", str(args.tokens)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.client_timeout)
    except subprocess.TimeoutExpired as e:
        raise Failure(f"client ran over {args.client_timeout} s") from e
    results = [line.split(" ", 1)[1] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not results:
        raise Failure(f"client failed (status {done.returncode}):\n{(done.stdout + done.stderr)[-3000:]}")
    return dict(json.loads(results[-1]))


def run_pass(tree: Tree, index: int, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = logs / f"server_{index}_{tree.label}.log"
    forced = args.tokens if args.engine == "vllm" else 0
    print(f"pass {index} ({tree.label}): starting the server on port {port}, log {log}", file=sys.stderr)
    with log.open("wb") as out:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-c", BOOT, str(forced)],
            env=tree.server_env(args, port),
            cwd=logs,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one group: the server, its engine core, their helpers
        )
        RUNNING.add(proc.pid)
        try:
            ready = wait_ready(base, proc, log, args.ready_timeout)
            start_s = time.monotonic() - started
            models = get_json(base + "/v1/models")[1]["data"]
            result = run_client(args, base, models[0]["id"])
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
        "modes": ready.get("engine", {}).get("modes"),
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
    # ../shared stays behind on the device: there the client travels in a carried folder.
    name = "bench_vllm_serve.py"
    clients = [args.client] if args.client else [REPO.parent / "shared/gpu" / name, REPO / ".gpu/bin" / name]
    args.client = next((c for c in clients if c.is_file()), clients[0])
    if not args.client.is_file():
        raise SystemExit(f"client not found: {args.client} (--client)")
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
