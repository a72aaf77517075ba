"""Engine start time, fresh and warm: vLLM's recipe ``LLM(...)`` and ``dsocr serve`` on vLLM.

Each start runs in a process of its own on the dummy full-size model, and is timed from ``Popen``
to ready:

* ``recipe``: ``python`` building vLLM's offline ``LLM`` exactly as ``gpu_headline.py``'s recipe
  child does (``gpu_headline.recipe_llm``); ready = the constructor returned (the child also reports
  its import time and the constructor's own time);
* ``dsocr``: ``python -m dsocr serve --engine vllm`` from each ``--src`` tree (``serve_harness``:
  the tree's settings names, its ``dsocr_modes`` plugin registered as ``pip install`` does); ready =
  ``GET /ready`` answers 200 (polled every 0.2 s). Then ``GET /health``: its ``engine.start``
  (``{"phase", "seconds": {phase: s}, "elapsed_s"}``) where the tree reports one, else ``n/a``.

Each target runs twice in a row: ``fresh``, with new empty cache directories, then ``warm``, with the
same directories again. The directories go to every process through the environment:

* ``VLLM_CACHE_ROOT``: vLLM's torch.compile cache (``torch_compile_cache/<hash>``, inductor and
  Triton artefacts beside it in recent releases) and DeepGEMM's default JIT cache. The hash covers
  vLLM's config, the model code, the compiler and the environment factors vLLM hashes; vLLM leaves
  the cache directories' own locations out of it (``envs.compile_factors`` ignores
  ``VLLM_CACHE_ROOT``), so the warm start reuses what the fresh one compiled;
* ``TORCHINDUCTOR_CACHE_DIR``, ``TRITON_CACHE_DIR``: Inductor's and Triton's caches where vLLM does
  not place them itself (its own Triton kernels, e.g. fused MoE, compile into ``TRITON_CACHE_DIR``,
  by default ``~/.triton/cache``);
* ``DG_JIT_CACHE_DIR`` (DeepGEMM), ``FLASHINFER_WORKSPACE_BASE`` (FlashInfer's JIT; not staged on the
  lent GPU), ``CUDA_CACHE_PATH`` (the driver's PTX JIT cache, ``~/.nv/ComputeCache``);
* ``XDG_CACHE_HOME``: every other ``~/.cache`` default (vLLM's when ``VLLM_CACHE_ROOT`` is unset).

``--cache-dir-setting``: trees whose settings have ``engine.vllm.cache_dir`` get the run's vLLM
directory through ``DSOCR_ENGINE__VLLM__CACHE_DIR`` instead of ``VLLM_CACHE_ROOT`` (the other
variables stay, so a fresh start stays fresh whatever the setting covers); trees without it get the
variables alone. Each run reports the size of every cache directory afterwards, which shows where
the artefacts went.

The phase table comes from vLLM's own log lines, grepped from each process's log, so an old tree
has them too: ``Loading weights took``, ``Model loading took``, ``Dynamo bytecode transform time``,
``Compiling a graph for ... takes`` (summed; n = how many), ``Directly load the compiled graph(s) ...
took`` (a warm start: loaded from the cache), ``torch.compile takes/took ... in total``,
``Initial profiling/warmup run took``, ``Graph capturing finished in``, ``init engine (profile,
create kv cache, warmup model) took``. Every such line is printed per run as well.

Prints ``RESULT {json}`` per start and a final table: rows (target, tree) × (fresh, warm). Exit
status as ``gpu_headline.py``: 0 all ran, 2 a start failed (the others still ran), 3 ``--budget-s``
left some for the next call (``--results`` keeps those done; the same command goes on, on the
still-warm machine, whose ``--cache-root`` still holds the fresh runs' caches).

    python3 bench/cold_start.py /root/dsocr-dummy --src old=.gpu/ab/old/src --src new=src \\
        --order old,new,new,old --budget-s 560 --results /root/cold.jsonl
    python bench/cold_start.py --engine fake --targets dsocr    # no GPU: the plumbing only
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from serve_harness import (
    REPO,
    Failure,
    Stopped,
    Tree,
    engine_settings,
    free_port,
    get_json,
    on_sigterm,
    server_settings,
    start,
    stop,
    tail,
    wait_ready,
)

TARGETS = ("recipe", "dsocr")
RUNS = ("fresh", "warm")
# Environment variable: the run's sub-directory it names.
CACHE_VARS = {
    "VLLM_CACHE_ROOT": "vllm",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "DG_JIT_CACHE_DIR": "deep_gemm",
    "FLASHINFER_WORKSPACE_BASE": "flashinfer",
    "CUDA_CACHE_PATH": "cuda",
    "XDG_CACHE_HOME": "xdg",
}
CACHE_SETTING = "engine.vllm.cache_dir"
# vLLM's own phase lines (wording of 0.26 and later releases): short name, pattern of the seconds.
PHASE_LINES = (
    ("weights", r"Loading weights took ([\d.]+) s"),
    ("model load", r"Model loading took .*? and ([\d.]+) s"),
    ("dynamo", r"Dynamo bytecode transform time: ([\d.]+) s"),
    ("compile", r"Compiling a graph for .*? takes ([\d.]+) s"),
    ("cache load", r"Directly load the compiled graph\(s\) for .*? took ([\d.]+) s"),
    ("torch.compile", r"torch\.compile t(?:akes|ook) ([\d.]+) s in total"),
    ("profile", r"Initial profiling/warmup run took ([\d.]+) s"),
    ("graphs", r"Graph capturing finished in ([\d.]+) secs"),
    ("init engine", r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s"),
)
# Any other line that gives seconds (wording this script does not know yet): printed, not tabled.
TIMED_LINE = re.compile(r"\b(?:took|takes|finished in)\b.*?\d+(?:\.\d+)?\s*(?:s|secs?|seconds)\b")
COUNTED = ("compile", "cache load", "torch.compile", "profile")  # may come several times: summed, counted


def result(**fields: Any) -> None:
    print("RESULT", json.dumps(fields), flush=True)


# ------------------------------------------------------------------------- the recipe's child


def recipe_child(model: str, popen_t: float) -> int:
    """Build the recipe's ``LLM`` and report the times from the parent's ``Popen`` (wall clock)."""
    import vllm.model_executor.models.deepseek_ocr  # noqa: F401

    from gpu_headline import recipe_llm

    imported = time.time()
    llm = recipe_llm(model)
    ready = time.time()
    result(ready_s=ready - popen_t, import_s=imported - popen_t, llm_s=ready - imported)
    del llm  # vLLM shuts its engine down; the parent stops what is left a minute after this
    return 0


# --------------------------------------------------------------------------------- the parent


def vllm_phases(log: Path) -> tuple[dict[str, Any], list[str]]:
    """vLLM's phase seconds from a process log (those in ``COUNTED``: sum and count), and the lines
    they came from, with any other line that gives seconds (marked ``other:``)."""
    phases: dict[str, Any] = {}
    lines: list[str] = []
    for line in log.read_text(errors="replace").splitlines():
        if not any(re.search(pattern, line) for _, pattern in PHASE_LINES):
            if TIMED_LINE.search(line) and len(lines) < 40:
                lines.append("other: " + line.strip()[-240:])
            continue
        for name, pattern in PHASE_LINES:
            found = re.search(pattern, line)
            if found is None:
                continue
            seconds = float(found.group(1))
            lines.append(line.strip()[-240:])
            if name in COUNTED:
                phases[name] = round(phases.get(name, 0.0) + seconds, 2)
                phases[f"{name} n"] = phases.get(f"{name} n", 0) + 1
            else:  # one per start (a repeated line, e.g. from a second worker: the last)
                phases[name] = seconds
    return phases, lines


def cache_sizes(root: Path) -> dict[str, float]:
    """MB held under each cache sub-directory of a run."""
    sizes = {}
    for sub in sorted({*CACHE_VARS.values()}):
        total = 0
        for path in (root / sub).rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
            except OSError:
                continue
        sizes[sub] = round(total / 1e6, 1)
    return sizes


def cache_env(root: Path, fresh: bool, leave_out: tuple[str, ...] = ()) -> dict[str, str]:
    """The cache variables for a run in ``root``; ``fresh``: emptied first."""
    if fresh and root.exists():
        shutil.rmtree(root)
    if not fresh and not root.is_dir():
        raise Failure(f"{root} is gone (a new machine?): a warm start needs its fresh run's caches")
    env = {}
    for var, sub in CACHE_VARS.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        if var not in leave_out:
            env[var] = str(root / sub)
    return env


def start_recipe(args: argparse.Namespace, caches: dict[str, str], log: Path) -> dict[str, Any]:
    env = {**os.environ, **caches}
    popen_t = time.time()
    cmd = [sys.executable, __file__, args.model, "--child-recipe", f"{popen_t:.6f}"]
    proc = start(cmd, env, log)

    def reported() -> list[str]:
        return [
            line[7:] for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")
        ]

    try:  # until it exits, or for a short while after it reported (vLLM's shutdown may linger)
        deadline, found = time.monotonic() + args.start_timeout, list[str]()
        while proc.poll() is None and time.monotonic() < deadline:
            found = found or reported()
            if found:
                deadline = min(deadline, time.monotonic() + 60)
            time.sleep(0.5)
    finally:
        stop(proc)
    found = reported()
    if not found:
        why = (
            f"status {proc.returncode}"
            if proc.returncode is not None
            else f"not ready in {args.start_timeout:.0f} s"
        )
        raise Failure(f"recipe failed ({why}); log tail:\n{tail(log)}")
    return dict(json.loads(found[-1]))


def start_dsocr(args: argparse.Namespace, tree: Tree, root: Path, fresh: bool, log: Path) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = {**engine_settings(args.engine, args.model), **server_settings(port, 8, 1000)}
    setting_name = tree.env_name(CACHE_SETTING, required=False) if args.cache_dir_setting else None
    if setting_name is not None:  # the tree's own setting places vLLM's caches, not VLLM_CACHE_ROOT
        settings[CACHE_SETTING] = (str(root / CACHE_VARS["VLLM_CACHE_ROOT"]), True)
        caches = cache_env(root, fresh, leave_out=("VLLM_CACHE_ROOT",))
    else:
        caches = cache_env(root, fresh)
    env = tree.env(settings)
    env.update(caches)
    if setting_name is not None:  # not one inherited from the caller either
        env.pop("VLLM_CACHE_ROOT", None)
    cmd = [sys.executable, "-m", "dsocr", "serve", "--engine", args.engine]
    t0 = time.monotonic()
    proc = start(cmd, env, log)
    try:
        wait_ready(base + "/ready", proc, log, args.start_timeout, poll_s=0.2)
        ready_s = time.monotonic() - t0
        status, health = get_json(base + "/health")
    finally:
        stop(proc)
    engine = ((health or {}).get("engine") or {}) if status == 200 else {}
    out = {"ready_s": ready_s, "engine_start": engine.get("start"), "modes": engine.get("modes")}
    return out | {"cache_setting": setting_name is not None}


def plan(args: argparse.Namespace, labels: list[str]) -> list[tuple[str, str | None, str]]:
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    order = [o.strip() for o in args.order.split(",")] if args.order else labels
    if set(targets) - set(TARGETS) or set(order) - set(labels):
        raise SystemExit(f"--targets takes {', '.join(TARGETS)}; --order takes {', '.join(labels)}")
    pairs = [(t, label) for t in targets for label in (order if t == "dsocr" else [None])]
    return [(t, label, run) for t, label in pairs for run in RUNS]


def gpu_missing(args: argparse.Namespace) -> str | None:
    if shutil.which("nvidia-smi") is None and not Path("/dev/nvidia0").exists():
        return "no NVIDIA GPU is visible here"
    try:
        import vllm  # noqa: F401
    except ImportError:
        return "vLLM is not installed in this Python (on the GPU machine: source /root/vllm-env.sh)"
    if not (Path(args.model) / "config.json").is_file():
        return f"no model at {args.model} (python3 .gpu/bin/make_dummy_model.py {args.model})"
    return None


def fmt(value: Any, count: Any = None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" + (f" ({count})" if count else "")


def summarize(records: list[dict[str, Any]]) -> None:
    names = [name for name, _ in PHASE_LINES]
    head = f"{'target':<8}{'src':<10}{'run':<7}{'ready s':>9}" + "".join(f"{n:>15}" for n in names)
    print(f"\n{head}{'cache MB':>10}")
    for r in records:
        if "error" in r:
            print(f"{r['target']:<8}{r.get('src') or '-':<10}{r['run']:<7}  failed: {r['error'][:100]}")
            continue
        phases = r.get("vllm_phases") or {}
        cells = "".join(f"{fmt(phases.get(n), phases.get(f'{n} n')):>15}" for n in names)
        row = f"{r['target']:<8}{r.get('src') or '-':<10}{r['run']:<7}{r['ready_s']:>9.1f}{cells}"
        print(f"{row}{sum((r.get('cache_mb') or {}).values()):>10.0f}")
    print("\nstart phases:")
    for r in records:
        label = f"{r['target']} {r.get('src') or '-'} {r['run']}"
        if "error" in r:
            continue
        if r["target"] == "recipe":
            detail = f"imports {r['import_s']:.1f} s, LLM() {r['llm_s']:.1f} s"
        elif r.get("engine_start"):
            start_info = r["engine_start"]
            seconds = ", ".join(f"{k} {v:.1f}" for k, v in (start_info.get("seconds") or {}).items())
            elapsed = start_info.get("elapsed_s")
            detail = f"dsocr engine.start: {start_info.get('phase')}, {seconds} (elapsed {elapsed})"
        else:
            detail = "dsocr engine.start: n/a"
        print(f"  {label}: {detail}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="/root/dsocr-dummy", help="model directory (dummy weights)")
    ap.add_argument("--targets", default=",".join(TARGETS), help="recipe, dsocr or both")
    ap.add_argument(
        "--engine", choices=["vllm", "fake"], default="vllm", help="dsocr's engine (fake: no GPU)"
    )
    ap.add_argument("--src", action="append", default=[], help="LABEL=DIR: a checkout's src (repeatable)")
    ap.add_argument("--order", help="the dsocr starts by --src label, e.g. old,new,new,old")
    ap.add_argument(
        "--cache-dir-setting",
        action="store_true",
        help=f"give trees that have {CACHE_SETTING} the vLLM cache directory through it",
    )
    ap.add_argument("--cache-root", type=Path, default=Path(tempfile.gettempdir()) / "dsocr_cold_start")
    ap.add_argument("--keep-caches", action="store_true", help="keep each pair's caches after its warm run")
    ap.add_argument("--start-timeout", type=float, default=400.0, help="seconds per start")
    ap.add_argument("--budget-s", type=float, help="start no fresh + warm pair that would end after this")
    ap.add_argument("--results", type=Path, help="JSON lines of starts done: kept, appended to")
    ap.add_argument("--log-dir", type=Path, help="each process's log (default $OUT, else a temporary folder)")
    ap.add_argument("--child-recipe", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_recipe is not None:
        return recipe_child(args.model, args.child_recipe)
    sources = [s.split("=", 1) if "=" in s else [s, s] for s in args.src] or [["src", str(REPO / "src")]]
    todo = plan(args, [label for label, _ in sources])
    signal.signal(signal.SIGTERM, on_sigterm)
    began, took, status = time.monotonic(), {"": 0.0}, 0
    work = Path(tempfile.mkdtemp(prefix="cold_start_"))
    logs = args.log_dir or Path(os.environ.get("OUT") or work)
    logs.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    failed: set[int] = set()  # pairs whose fresh start failed: their warm start would not be one
    if args.results and args.results.is_file():
        records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        if [(r["target"], r.get("src"), r["run"]) for r in records] != todo[: len(records)]:
            raise SystemExit(f"{args.results} holds another plan's starts: delete it first")
        print(f"{len(records)} of {len(todo)} starts done before ({args.results})", file=sys.stderr)
        failed |= {i // 2 for i, r in enumerate(records) if r.get("error") and r["run"] == "fresh"}
    try:
        trees = {}
        if any(t == "dsocr" for t, _, _ in todo[len(records) :]):
            trees = {label: Tree(label, Path(src), work) for label, src in sources}
        for index, (target, label, run) in enumerate(todo[len(records) :], len(records)):
            pair, name = index // 2, f"{target}{f' [{label}]' if label else ''} {run}"
            expected = took.get(target, max(took.values()))  # this target's last start, else the longest
            needed = (2 if run == "fresh" else 1) * 1.2 * expected  # a fresh start needs its warm one
            if args.budget_s and time.monotonic() - began + needed > args.budget_s:
                print(
                    f"stopping: the next start would overrun --budget-s {args.budget_s:.0f}", file=sys.stderr
                )
                status = 3
                break
            record: dict[str, Any] = {"target": target, "src": label, "run": run}
            root = args.cache_root / f"{pair:02d}_{target}{'_' + label if label else ''}"
            log = logs / f"{index + 1}_{target}{'_' + label if label else ''}_{run}.log"
            t0 = time.monotonic()
            try:
                if run == "warm" and pair in failed:
                    raise Failure("skipped: its fresh start failed")
                print(f"{name}: starting, log {log}", file=sys.stderr, flush=True)
                if target == "recipe" or args.engine == "vllm":
                    reason = gpu_missing(args)
                    if reason is not None:
                        raise Failure(f"{target} needs vLLM and a GPU: {reason}")
                if target == "recipe":
                    fields = start_recipe(args, cache_env(root, run == "fresh"), log)
                else:
                    fields = start_dsocr(args, trees[str(label)], root, run == "fresh", log)
            except Stopped:
                raise
            except Failure as e:  # kept as a record too, so that --results goes on in step
                print(f"FAIL {name}: {e}", file=sys.stderr, flush=True)
                failed.add(pair)
                status = 2
                record["error"] = str(e).splitlines()[0][:300]
            else:
                took[target] = max(took.get(target, 0.0), time.monotonic() - t0)
                phases, lines = vllm_phases(log)
                record |= {**fields, "vllm_phases": phases, "cache_mb": cache_sizes(root)}
                record = {k: round(v, 2) if isinstance(v, float) else v for k, v in record.items()}
                record["start_and_stop_s"] = round(time.monotonic() - t0, 1)
                print("RESULT", json.dumps(record), flush=True)
                if target == "dsocr":
                    start_info = record.get("engine_start")
                    print(f"  engine.start: {json.dumps(start_info) if start_info else 'n/a'}", flush=True)
                for line in lines:
                    print(f"  vllm: {line}", flush=True)
            records.append(record)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
            if run == "warm" and not args.keep_caches:
                shutil.rmtree(root, ignore_errors=True)
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        status = 2
    finally:
        if not logs.is_relative_to(work):
            shutil.rmtree(work, ignore_errors=True)
    if any("error" not in r for r in records):
        summarize(records)
        print("SUMMARY", json.dumps({"results": records}), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
