"""Multi-GPU scaling: pages/s on 1 GPU vs N GPUs of one host, through the HTTP server and through
``dsocr batch --ray``, with the GPU benchmark's pages and settings (bench/gpu_throughput.py).

Same dummy full-size DeepSeek-OCR, same synthetic A4 pages (1190×1684, Gundam), output forced to
``--tokens`` per page, repetition control on (30/90), ``max_num_seqs`` 256 per GPU. For each GPU
count (1, then ``--gpus``) and each path, one process:

* ``http``  ``create_engine`` with ``replicas=g`` (one VLLMEngine per GPU behind ``EnginePool``)
            or ``vllm.data_parallel_size=g`` (vLLM's own DP), under ``create_app`` + uvicorn on
            127.0.0.1; a client process posts every page to ``/v1/chat/completions`` at once after
            a warm-up of 8. pages/s = pages / wall of the timed pass.
* ``ray``   ``run_batch_ray`` on a local Ray instance limited to g GPUs (one actor per GPU, as
            ``dsocr batch --ray``), over a folder of the pages as PNG files. The actors' engine
            start is inside the run, so pages/s is taken from the commit times of the page
            files, leaving out each actor's first batch (which waits for its engine to start):
            (pages − g·batch) / (last commit − commit number g·batch). Whole-run pages/s is
            printed beside it.

Prints ``RESULT {json}`` per measurement and a SUMMARY with the N-GPU / 1-GPU ratio per path
(target ≥ 1.9 on 2 GPUs, ≥ 0.9·N on N). NVLink multicast stays off (dsocr.engine.gpus).

usage: python bench/multi_gpu.py MODEL_DIR --gpus 2 [--strategy replicas|dp] [--paths http,ray]
       [--pages 256] [--tokens 1000] [--ray-batch 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from gpu_throughput import CLIENT, ForcedLength, _png_b64, page, result  # noqa: E402

FORCE_TOKENS_ENV = "BENCH_FORCE_TOKENS"


def engine_settings(model: str, gpus: int, strategy: str, max_seqs: int) -> dict[str, Any]:
    """The GPU benchmark's engine settings, spread over ``gpus`` GPUs the chosen way.

    ``BENCH_ENGINE=fake`` swaps in the fake engine: a CPU smoke run of this script's plumbing.
    """
    vllm: dict[str, Any] = {"load_format": "dummy", "max_num_seqs": max_seqs, "gpu_memory_utilization": 0.85}
    if strategy != "replicas":
        vllm["data_parallel_size"] = gpus
    return {
        "kind": os.environ.get("BENCH_ENGINE", "vllm"),
        "model": model,
        "served_model_name": "deepseek-ocr",
        "replicas": gpus if strategy == "replicas" else 1,
        "vllm": vllm,
    }


# ------------------------------------------------------------------------------------------ http


async def run_http(
    model: str, gpus: int, strategy: str, n: int, tokens: int, max_seqs: int, port: int
) -> None:
    import uvicorn

    from dsocr.engine.factory import create_engine
    from dsocr.server.app import create_app
    from dsocr.settings import Settings

    settings = Settings(
        engine=engine_settings(model, gpus, strategy, max_seqs),
        server={"max_concurrency": max(n + 16, 256)},
        limits={"max_queue": max(2 * n, 512)},
    )
    engine = create_engine(settings.engine)
    t0 = time.monotonic()
    await engine.start()
    start_s = time.monotonic() - t0
    print(
        "ENGINE", json.dumps({"gpus": gpus, "start_s": round(start_s, 1), **engine.info.details}), flush=True
    )
    app = create_app(settings, engine=ForcedLength(engine, tokens))  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers no "started" event
        await asyncio.sleep(0.1)
    pngs = [_png_b64(page(i)) for i in range(16)]
    path = Path(tempfile.gettempdir()) / "dsocr-multi-gpu-pngs.json"
    await asyncio.to_thread(path.write_text, json.dumps(pngs))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CLIENT,
        f"http://127.0.0.1:{port}",
        str(n),
        str(tokens),
        str(path),
        stdout=subprocess.PIPE,
    )
    stdout, _ = await proc.communicate()
    client = json.loads(stdout.decode().strip().splitlines()[-1])
    result(
        path="http",
        strategy=strategy,
        gpus=gpus,
        pages=n,
        engine_start_s=round(start_s, 1),
        wall_s=round(client["wall_s"], 2),
        pages_per_s=round(n / client["wall_s"], 3),
        out_tok_per_s=round(client["out_tokens"] / client["wall_s"]),
        served_per_replica=engine.info.details.get("replicas_served"),
    )
    server.should_exit = True
    await serving
    await engine.close()


# ------------------------------------------------------------------------------------------- ray


def force_length_in_ray_worker() -> None:
    """Ray ``worker_process_setup_hook``: every OCR actor's engine runs exactly N output tokens.

    The batch API has no ``ignore_eos`` (a benchmark-only knob) and dummy weights stop at random,
    so, as on the HTTP path, the engine is wrapped in ``ForcedLength``.
    """
    tokens = int(os.environ[FORCE_TOKENS_ENV])
    from dsocr.batch import ray_pipeline

    build = ray_pipeline._actor_engine

    def forced(settings: Any, threads: int) -> Any:
        return ForcedLength(build(settings, threads), tokens)

    ray_pipeline._actor_engine = forced  # type: ignore[assignment]


def run_ray(model: str, gpus: int, n: int, tokens: int, max_seqs: int, batch: int) -> None:
    import ray

    from dsocr.batch import BatchJob
    from dsocr.batch.ray_pipeline import run_batch_ray
    from dsocr.engine.gpus import disable_nvlink_multicast
    from dsocr.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="dsocr-multi-gpu-"))
    pages_dir, out = work / "pages", work / "out"
    pages_dir.mkdir()
    for i in range(n):
        page(i).save(pages_dir / f"page-{i:04d}.png")
    disable_nvlink_multicast()
    os.environ[FORCE_TOKENS_ENV] = str(tokens)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Workers import this module by name for the setup hook, and dsocr from the tree.
    pythonpath = os.pathsep.join([str(BENCH), str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = pythonpath
    import multi_gpu  # by name, so that Ray pickles the hook by reference

    ray.init(
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"worker_process_setup_hook": multi_gpu.force_length_in_ray_worker},
    )
    settings = Settings(engine=engine_settings(model, 1, "replicas", max_seqs))
    job = BatchJob(inputs=(str(pages_dir),), out_dir=out, preset="document", max_in_flight=batch, quiet=True)
    t0 = time.monotonic()
    summary = run_batch_ray(job, settings)
    wall = time.monotonic() - t0
    ray.shutdown()
    commits = sorted(p.stat().st_mtime for p in out.glob("*/pages/*.json"))
    skip = min(gpus * batch, len(commits) - 2)
    steady = (len(commits) - skip) / (commits[-1] - commits[skip]) if len(commits) > skip + 1 else None
    result(
        path="ray",
        gpus=gpus,
        pages=n,
        pages_done=len(commits),
        summary=summary.describe(),
        wall_s=round(wall, 2),
        pages_per_s_whole_run=round(n / wall, 3),
        pages_per_s=round(steady, 3) if steady else None,
        steady_pages_counted=len(commits) - skip,
        batch_per_actor=batch,
    )


# ------------------------------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--gpus", type=int, required=True, help="N: compared with 1 GPU")
    ap.add_argument("--strategy", choices=["replicas", "dp"], default="replicas")
    ap.add_argument("--paths", default="http,ray")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--max-seqs", type=int, default=256)
    ap.add_argument("--ray-batch", type=int, default=64, help="pages per Ray batch (--max-in-flight)")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--phase", help=argparse.SUPPRESS)  # internal: "http:G" or "ray:G" in this process
    a = ap.parse_args()
    if a.phase:
        path, gpus = a.phase.split(":")
        if path == "http":
            return asyncio.run(
                run_http(a.model, int(gpus), a.strategy, a.pages, a.tokens, a.max_seqs, a.port)
            )
        return run_ray(a.model, int(gpus), a.pages, a.tokens, a.max_seqs, a.ray_batch)
    results: dict[tuple[str, int], dict[str, Any]] = {}
    for path in a.paths.split(","):
        for gpus in (1, a.gpus):
            # One process per measurement: its engines get the GPUs and free them on exit.
            cmd = [sys.executable, __file__, a.model, "--phase", f"{path}:{gpus}", "--gpus", str(a.gpus)]
            cmd += ["--strategy", a.strategy, "--pages", str(a.pages), "--tokens", str(a.tokens)]
            cmd += ["--max-seqs", str(a.max_seqs), "--ray-batch", str(a.ray_batch), "--port", str(a.port)]
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
            for line in proc.stdout.splitlines():
                print(line, flush=True)
                if line.startswith("RESULT "):
                    r = json.loads(line[7:])
                    results[(r["path"], r["gpus"])] = r
            if proc.returncode:
                print(f"FAILED {path} on {gpus} GPU(s): exit {proc.returncode}", flush=True)
    print("\nSUMMARY", json.dumps({f"{p}:{g}": r for (p, g), r in results.items()}))
    target = 1.9 if a.gpus == 2 else 0.9 * a.gpus
    for path in a.paths.split(","):
        one, many = results.get((path, 1)), results.get((path, a.gpus))
        if one and many and one.get("pages_per_s") and many.get("pages_per_s"):
            ratio = many["pages_per_s"] / one["pages_per_s"]
            verdict = "met" if ratio >= target else "NOT met"
            print(
                f"{path}: {a.gpus} GPUs / 1 GPU = {ratio:.2f}x pages/s (target >= {target:.2f}x: {verdict})"
            )


if __name__ == "__main__":
    main()
