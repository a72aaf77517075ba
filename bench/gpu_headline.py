"""The headline GPU benchmark: dsocr against vLLM's DeepSeek-OCR recipe and ``vllm serve``.

Four measurements in one run, on the same dummy full-size DeepSeek-OCR and the same synthetic A4
pages (1190×1684, Gundam; the page generator of ``../shared/gpu/bench_recipe_baseline.py``), every
page's output forced to ``--tokens``, repetition control at 30 / 90 with the ``<td>`` whitelist
everywhere. Each runs in processes of its own (one vLLM engine on the GPU at a time): start,
warm-up (8 pages), one timed pass of all pages.

* ``recipe``: vLLM's offline ``LLM`` as the recipe configures it (its ``NGramPerReqLogitsProcessor``,
  prefix cache off, multimodal processor cache 0), every page in one ``generate`` call;
* ``vllm-serve``: ``vllm serve`` with the recipe's flags, driven by the peer client
  (``bench_vllm_serve.py``: all pages from 8 client processes at once, ``ignore_eos`` and the
  n-gram arguments in vLLM's own request fields);
* ``dsocr-offline``: dsocr's engine through its public interface: ``Settings``, ``create_engine``,
  ``start``, then every page through ``Pipeline.run_pages`` under one ``OcrRequest``
  (``build_request``) whose sampling has ``ignore_eos`` set;
* ``dsocr-http``: ``python -m dsocr serve`` driven by the same client (OpenAI fields only). The HTTP
  API refuses ``ignore_eos``, so the server process forces the length inside vLLM
  (``serve_harness.BOOT``); dsocr runs unchanged.

DeepSeek-OCR 2 (a model directory whose ``config.json`` names ``DeepseekOCR2ForCausalLM``, such as
``bench/make_dummy_ocr2.py`` writes): the same four measurements with v2's own repetition control,
n-gram 20 / 90 with the ``<td>`` whitelist (its official single-image setting,
``run_dpsk_ocr2_image.py`` in deepseek-ai/DeepSeek-OCR-2; docs/models.md), on the ``recipe`` and
``vllm-serve`` sides in vLLM's request fields; dsocr applies it itself (its v2 profile). The prompt is
the ``document`` preset, the same string for both models. The recipe's engine settings are vLLM's
recipe for DeepSeek-OCR-2 (vllm-project/recipes ``DeepSeek/DeepSeek-OCR-2.md``): ``LLM`` with
``enable_prefix_caching=False``, ``mm_processor_cache_gb=0``,
``logits_processors=[NGramPerReqLogitsProcessor]``, and ``vllm serve`` with
``--logits_processors ...deepseek_ocr:NGramPerReqLogitsProcessor --no-enable-prefix-caching
--mm-processor-cache-gb 0``: exactly v1's recipe, so only the n-gram arguments change (the recipe's
own example passes v1's 30 / 90, copied from the v1 page; every side here uses v2's official 20 /
90). DeepSeek's own vLLM scripts for v2 (``run_dpsk_ocr2_image.py``, ``run_dpsk_ocr2_pdf.py``) are
written for vLLM 0.8.5's V0 engine with their own model class and logits processor, which vLLM 0.26
has no place for; beyond the recipe's three settings, both models run under the bench's common
ones (dummy weights, ``max_model_len`` 8192, ``gpu_memory_utilization`` 0.85, ``max_num_seqs`` 256,
one image per prompt), as dsocr does. Name the directory ``DeepSeek-OCR-2`` (``/root/DeepSeek-OCR-2``):
dsocr trees that do not read ``config.json``'s architectures know v2 by the directory's name only.

Prints ``RESULT {json}`` per measurement, then a table, the ratios dsocr-offline / recipe and
dsocr-http / vllm-serve, and ``SUMMARY {json}``. ``--src LABEL=DIR`` (repeatable) runs the dsocr
phases from other checkouts' ``src`` folders, ``--order old,new,new,old`` alternates them.
Exit status: 0 every measurement ran, 2 one failed (the others still ran), 3 ``--budget-s`` left
some for the next call (``--results`` keeps those done; the same command goes on).

    python3 bench/gpu_headline.py /root/dsocr-dummy [--pages 256] [--tokens 1000] [--phases ...]
    python bench/gpu_headline.py --engine fake --phases dsocr-offline,dsocr-http --pages 16 --tokens 16
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from serve_harness import (
    BOOT,
    REPO,
    Failure,
    Stopped,
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
    tail,
    wait_ready,
)

PHASES = ("recipe", "vllm-serve", "dsocr-offline", "dsocr-http")
DSOCR_PHASES = ("dsocr-offline", "dsocr-http")
WARMUP_PAGES = 8
PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
RECIPE_NGRAM = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
# DeepSeek-OCR 2's official single-image setting (run_dpsk_ocr2_image.py: 20 / 90, <td> whitelist).
V2_ARCH, V2_DIR_NAME = "DeepseekOCR2ForCausalLM", "DeepSeek-OCR-2"
V2_NGRAM = {"ngram_size": 20, "window_size": 90, "whitelist_token_ids": [128821, 128822]}
# The recipe's server, as bench_vllm_serve.py starts it when measuring it alone.
VLLM_SERVE_FLAGS = [
    "--served-model-name", "deepseek-ocr", "--load-format", "dummy", "--host", "127.0.0.1",
    "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
    "--logits-processors", "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor",
]  # fmt: skip


def page(i: int, w: int = 1190, h: int = 1684) -> Image.Image:
    """The shared synthetic A4 page (the same drawing as ../shared/gpu's baseline and client)."""
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for k, y in enumerate(range(60, h - 60, 26)):
        d.text((60, y), f"{i}-{k} The quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return im


def is_v2(model: str) -> bool:
    """Whether the model directory's ``config.json`` names DeepSeek-OCR 2's architecture."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return V2_ARCH in (config.get("architectures") or [])


def recipe_ngram(model: str) -> dict[str, Any]:
    """The n-gram arguments the recipe and ``vllm serve`` sides send: the model's official ones."""
    return V2_NGRAM if is_v2(model) else RECIPE_NGRAM


def result(**fields: Any) -> None:
    print("RESULT", json.dumps(fields), flush=True)


# ----------------------------------------------------------------- measurements in a child process


def recipe_llm(model: str) -> Any:
    """vLLM's offline ``LLM`` as the recipe builds it (for either model: the same settings)."""
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor

    from vllm import LLM

    return LLM(
        model=model,
        load_format="dummy",
        max_model_len=8192,
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        gpu_memory_utilization=0.85,
        max_num_seqs=256,
        limit_mm_per_prompt={"image": 1},
        logits_processors=[NGramPerReqLogitsProcessor],
    )


def recipe(model: str, pages: int, tokens: int) -> None:
    # Imported before the clock starts, as the start time has always been measured.
    import vllm.model_executor.models.deepseek_ocr  # noqa: F401

    from vllm import LLM, SamplingParams  # noqa: F401

    t0 = time.monotonic()
    llm = recipe_llm(model)
    start_s = time.monotonic() - t0
    sampling = SamplingParams(
        temperature=0.0,
        max_tokens=tokens,
        ignore_eos=True,
        skip_special_tokens=False,
        extra_args=recipe_ngram(model),
    )
    requests = [{"prompt": PROMPT, "multi_modal_data": {"image": page(i)}} for i in range(pages)]
    llm.generate(requests[:WARMUP_PAGES], sampling, use_tqdm=False)
    t0 = time.monotonic()
    outputs = llm.generate(requests, sampling, use_tqdm=False)
    wall = time.monotonic() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    ngram = recipe_ngram(model)
    extra = {"ngram": [ngram["ngram_size"], ngram["window_size"]]} if is_v2(model) else {}
    result(wall_s=wall, out_tokens=out_tokens, start_s=start_s, **extra)


async def dsocr_offline(pages: int, tokens: int) -> None:
    """dsocr's public interface only; the settings come from ``DSOCR_*`` (the parent's choice)."""
    from dsocr.engine.factory import create_engine
    from dsocr.request import build_request
    from dsocr.settings import Settings

    settings = Settings()
    engine = create_engine(settings.engine)
    t0 = time.monotonic()
    await engine.start()
    start_s = time.monotonic() - t0
    # Modes beyond gundam show that vLLM loaded dsocr's plugin (its model class; the tree's own).
    # Read while the engine is open: a closed engine serves no model, and reports gundam only.
    modes = list(engine.info.modes)
    extra: dict[str, Any] = {}
    progress = getattr(engine, "start_progress", None)  # trees that time their start's phases
    if progress is not None:
        extra["start_phases"] = progress.seconds()
    extra["engine_details"] = dict(engine.info.details)  # the self-test, which speed-ups are on
    if is_v2(settings.engine.model):  # the n-gram dsocr's request carries (its v2 profile's)
        sampling = build_request(settings, source=None, max_tokens=tokens, deadline=False).sampling
        extra["ngram"] = [sampling.ngram_size, sampling.ngram_window]
    try:
        images = [page(i) for i in range(pages)]
        await offline_pass(engine, settings, images[:WARMUP_PAGES], tokens)
        wall, out_tokens = await offline_pass(engine, settings, images, tokens)
    finally:
        await engine.close()
    result(wall_s=wall, out_tokens=out_tokens, start_s=start_s, modes=modes, **extra)


async def offline_pass(
    engine: Any, settings: Any, images: list[Image.Image], tokens: int
) -> tuple[float, int]:
    """Every page at once (the pipeline's window = all pages), as the recipe's one ``generate``."""
    from dsocr.pipeline import PageInput, Pipeline
    from dsocr.request import build_request

    pipeline = Pipeline(engine, limits=settings.limits, fetch=settings.fetch)
    request = build_request(settings, source=None, max_tokens=tokens, deadline=False)
    request = replace(request, sampling=replace(request.sampling, ignore_eos=True))
    inputs = [PageInput(number=n, load=lambda im=im: im) for n, im in enumerate(images, 1)]
    out_tokens, failed = 0, []
    t0 = time.monotonic()
    async with aclosing(pipeline.run_pages(request, inputs, window=len(inputs))) as results:
        async for page_result in results:
            if page_result.error is not None:
                failed.append(f"page {page_result.page}: {page_result.error}")
            elif page_result.usage is not None:
                out_tokens += page_result.usage.completion_tokens
    wall = time.monotonic() - t0
    if failed:
        raise RuntimeError(f"{len(failed)} pages failed, first: {failed[0]}")
    return wall, out_tokens


def run_async(main: Any) -> None:
    """On uvloop where installed, as ``dsocr serve`` runs (uvicorn's choice): the two dsocr
    phases then differ by HTTP alone."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


# ---------------------------------------------------------------------- the run, in the parent


def gpu_missing(model: str) -> str | None:
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed in this Python (on the GPU machine: source /root/vllm-env.sh)"
    if not (Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi")):
        return "no NVIDIA GPU is visible here"
    if not (Path(model) / "config.json").is_file():
        return f"no model at {model} (python3 .gpu/bin/make_dummy_model.py {model})"
    return None


def run_child(phase: str, args: argparse.Namespace, env: dict[str, str], log: Path) -> dict[str, Any]:
    cmd = [sys.executable, __file__, args.model, "--child", phase]
    proc = start([*cmd, "--pages", str(args.pages), "--tokens", str(args.tokens)], env, log)
    try:
        proc.wait(args.phase_timeout)
    except subprocess.TimeoutExpired:
        raise Failure(f"{phase} ran over {args.phase_timeout:.0f} s; log tail:\n{tail(log)}") from None
    finally:
        stop(proc)
    found = [line[7:] for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not found:
        raise Failure(f"{phase} failed (status {proc.returncode}); log tail:\n{tail(log)}")
    fields = json.loads(found[-1])
    wall = fields["wall_s"]
    return {**fields, "pages_per_s": args.pages / wall, "out_tok_per_s": fields["out_tokens"] / wall}


def run_http(phase: str, args: argparse.Namespace, tree: Tree | None, log: Path) -> dict[str, Any]:
    """A server of its own, then the client's warm-up and timed pass against it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client = find_client(args.client)
    if tree is None:  # vllm-serve: ignore_eos and the n-gram arguments go in vLLM's request fields
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", args.model]
        cmd += ["--port", str(port), *VLLM_SERVE_FLAGS]
        env, ready, plain = dict(os.environ), "/health", False
    else:  # dsocr-http: OpenAI fields only; the server process forces the length inside vLLM
        forced = args.tokens if args.engine == "vllm" else 0
        cmd = [sys.executable, "-c", BOOT, str(forced), "serve", "--engine", args.engine]
        settings = {
            **dsocr_engine_settings(args),
            **server_settings(port, args.pages, args.tokens),
        }
        env, ready, plain = tree.env(settings), "/ready", True
    # v2: vLLM's request fields carry v2's n-gram (the client's own are v1's); dsocr picks its own.
    xargs = V2_NGRAM if tree is None and is_v2(args.model) else None
    t0 = time.monotonic()
    proc = start(cmd, env, log)
    try:
        info = wait_ready(base + ready, proc, log, args.phase_timeout) or {}
        start_s = time.monotonic() - t0
        card = get_json(base + "/v1/models")[1]["data"][0]
        model, timeout_s = card["id"], args.phase_timeout
        fields = run_client(
            client, base, model, args.pages, args.tokens, plain=plain, timeout_s=timeout_s, xargs=xargs
        )
    finally:
        stop(proc)
    wall, rate = fields["wall_s"], fields["out_tok_per_s"]
    out = {"wall_s": wall, "pages_per_s": fields["pages_per_s"], "out_tok_per_s": rate}
    out |= {"out_tokens": round(rate * wall), "start_s": start_s}
    if is_v2(args.model):  # the n-gram each side ran with: vLLM's request fields, dsocr's model card
        dsocr_card = card.get("dsocr") or {}
        used = [xargs["ngram_size"], xargs["window_size"]] if xargs else None
        out["ngram"] = used or [dsocr_card.get("ngram_size"), dsocr_card.get("window_size")]
    return out if tree is None else {**out, "modes": info.get("engine", {}).get("modes")}


def dsocr_engine_settings(args: argparse.Namespace) -> dict[str, tuple[str, bool]]:
    """dsocr's engine settings; on the fake engine a DeepSeek-OCR 2 directory is named too, so
    that the requests take v2's profile as they do on vLLM."""
    settings = engine_settings(args.engine, args.model)
    if args.engine != "vllm" and is_v2(args.model):
        settings["engine.model"] = (args.model, True)
    return settings


def measure(
    phase: str, label: str | None, args: argparse.Namespace, trees: dict[str, Tree], log: Path
) -> dict[str, Any]:
    if phase not in DSOCR_PHASES or args.engine == "vllm":
        reason = gpu_missing(args.model)
        if reason is not None:
            raise Failure(f"{phase} needs vLLM and a GPU: {reason}")
    print(f"{phase}{f' [{label}]' if label else ''}: starting, log {log}", file=sys.stderr, flush=True)
    tree = trees[label] if label is not None else None
    if phase == "recipe":
        return run_child(phase, args, dict(os.environ), log)
    if phase == "dsocr-offline":
        assert tree is not None
        limits = {"limits.max_tokens": (str(max(args.tokens, 8192)), False)}
        return run_child(phase, args, tree.env({**dsocr_engine_settings(args), **limits}), log)
    return run_http(phase, args, tree, log)


def plan(args: argparse.Namespace, labels: list[str]) -> list[tuple[str, str | None]]:
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(PHASES)
    order = [o.strip() for o in args.order.split(",")] if args.order else labels
    if unknown or set(order) - set(labels):
        raise SystemExit(f"--phases takes {', '.join(PHASES)}; --order takes {', '.join(labels)}")
    return [(p, label) for p in phases for label in (order if p in DSOCR_PHASES else [None])]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    def mean(phase: str, label: str | None = None) -> float | None:
        v = [r["pages_per_s"] for r in records if r["phase"] == phase and r.get("src") in (label, None)]
        return statistics.fmean(v) if v else None

    head = ("phase", "src", "pages/s", "out tok/s", "tok/page", "start s", "wall s")
    print("\n{:<16}{:<12}{:>9}{:>11}{:>10}{:>9}{:>8}".format(*head))
    for r in records:
        row = f"{r['phase']:<16}{r.get('src') or '-':<12}{r['pages_per_s']:>9.3f}{r['out_tok_per_s']:>11.0f}"
        print(f"{row}{r['out_tokens'] / r['pages']:>10.0f}{r['start_s']:>9.1f}{r['wall_s']:>8.2f}")
    ratios: dict[str, float] = {}
    labels = list(dict.fromkeys(r["src"] for r in records if r.get("src")))
    for label in labels:
        for name, top, bottom in (
            ("dsocr-offline / recipe", mean("dsocr-offline", label), mean("recipe")),
            ("dsocr-http / vllm-serve", mean("dsocr-http", label), mean("vllm-serve")),
            ("dsocr-http / dsocr-offline", mean("dsocr-http", label), mean("dsocr-offline", label)),
        ):
            if top and bottom:
                ratios[f"{name} [{label}]" if len(labels) > 1 else name] = round(top / bottom, 3)
    for phase in DSOCR_PHASES:
        for label in labels[1:]:
            top, bottom = mean(phase, label), mean(phase, labels[0])
            if top and bottom:
                ratios[f"{phase} {label} / {labels[0]}"] = round(top / bottom, 3)
    print("".join(f"{name}: {value:.3f}\n" for name, value in ratios.items()), end="")
    return {"results": records, "ratios": ratios}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="/root/dsocr-dummy", help="model directory (dummy weights)")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1000, help="output tokens forced per page")
    ap.add_argument("--phases", default=",".join(PHASES))
    ap.add_argument(
        "--engine", choices=["vllm", "fake"], default="vllm", help="dsocr's engine (fake: no GPU)"
    )
    ap.add_argument(
        "--src", action="append", default=[], help="LABEL=DIR: a checkout's src for the dsocr phases"
    )
    ap.add_argument("--order", help="the dsocr phases' runs by --src label, e.g. old,new,new,old")
    ap.add_argument("--client", type=Path, help="bench_vllm_serve.py (default: ../shared/gpu/, .gpu/bin/)")
    ap.add_argument("--phase-timeout", type=float, default=600.0, help="seconds per start, and per pass")
    ap.add_argument("--budget-s", type=float, help="start no measurement that would end after this")
    ap.add_argument("--results", type=Path, help="JSON lines of measurements done: kept, appended to")
    ap.add_argument("--log-dir", type=Path, help="each process's log (default $OUT, else a temporary folder)")
    ap.add_argument("--child", choices=PHASES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "recipe":
        return recipe(args.model, args.pages, args.tokens) or 0
    if args.child == "dsocr-offline":
        return run_async(dsocr_offline(args.pages, args.tokens)) or 0
    sources = [s.split("=", 1) if "=" in s else [s, s] for s in args.src] or [["src", str(REPO / "src")]]
    todo = plan(args, [label for label, _ in sources])
    v2 = is_v2(args.model)
    if v2:
        ngram = f"{V2_NGRAM['ngram_size']} / {V2_NGRAM['window_size']}"
        print(f"model: DeepSeek-OCR 2 ({args.model}), n-gram {ngram} on every side", file=sys.stderr)
        if Path(args.model).resolve().name != V2_DIR_NAME:
            print(
                f"warning: dsocr trees that know DeepSeek-OCR 2 by the directory's name only treat "
                f"{args.model} as DeepSeek-OCR (n-gram 30 / 90): name it {V2_DIR_NAME}",
                file=sys.stderr,
            )
    signal.signal(signal.SIGTERM, on_sigterm)
    began, took, status = time.monotonic(), {"": 0.0}, 0
    work = Path(tempfile.mkdtemp(prefix="gpu_headline_"))
    logs = args.log_dir or Path(os.environ.get("OUT") or work)
    logs.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    if args.results and args.results.is_file():  # a run that did not fit one call goes on here
        records = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
        other_model = any(r.get("model") != (V2_DIR_NAME if v2 else None) for r in records)
        if other_model or [(r["phase"], r.get("src")) for r in records] != todo[: len(records)]:
            raise SystemExit(f"{args.results} holds another plan's measurements: delete it first")
        print(f"{len(records)} of {len(todo)} measurements done before ({args.results})", file=sys.stderr)
    try:
        trees = {}
        if any(label for _, label in todo[len(records) :]):
            trees = {label: Tree(label, Path(src), work) for label, src in sources}
        for index, (phase, label) in enumerate(todo[len(records) :], len(records) + 1):
            expected = took.get(phase, max(took.values()))  # this phase's last run, else the longest
            if args.budget_s and time.monotonic() - began + 1.2 * expected > args.budget_s:
                print(
                    f"stopping: the next measurement would overrun --budget-s {args.budget_s:.0f}",
                    file=sys.stderr,
                )
                status = 3
                break
            log = logs / f"{index}_{phase}{'_' + label if label and len(sources) > 1 else ''}.log"
            t0 = time.monotonic()
            try:
                fields = measure(phase, label, args, trees, log)
            except Stopped:
                raise
            except Failure as e:
                print(f"FAIL {phase}: {e}", file=sys.stderr, flush=True)
                status = 2
                continue
            took[phase] = time.monotonic() - t0
            record = {"phase": phase, "src": label, "pages": args.pages, "tokens": args.tokens, **fields}
            if v2:
                record["model"] = V2_DIR_NAME
            record = {k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}
            record["phase_s"] = round(time.monotonic() - t0, 1)
            print("RESULT", json.dumps(record), flush=True)
            forced = args.engine == "vllm" or phase not in DSOCR_PHASES
            if forced and record["out_tokens"] < 0.98 * args.pages * args.tokens:
                print(f"warning: {phase} gave fewer than {args.tokens} tokens per page", file=sys.stderr)
            records.append(record)
            if args.results:
                with args.results.open("a") as f:
                    f.write(json.dumps(record) + "\n")
    except Failure as e:
        print(f"FAIL {e}", file=sys.stderr, flush=True)
        status = 2
    finally:
        if not logs.is_relative_to(work):
            shutil.rmtree(work, ignore_errors=True)
    if records:
        print("SUMMARY", json.dumps(summarize(records)), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
