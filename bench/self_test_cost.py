"""What the engine's n-gram self-test costs at start-up: its two requests one after the other, or
in one batch (what ``VLLMEngine._self_test`` does).

Starts dsocr's vLLM engine once (self-test off), then times ``--rounds`` rounds, each running both
ways in alternating order, and prints the median seconds of each. Without a model directory it
builds the tiny test model and runs on vLLM's CPU build, with the test suite's vision-tower shrink
(``tests/vllm/support``); with one (a GPU host, the dummy full-size model) it runs it as is.

    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=2 HF_HUB_OFFLINE=1 .venv-vllm/bin/python bench/self_test_cost.py
    python3 bench/self_test_cost.py /root/dsocr-dummy
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SUPPORT = Path(__file__).resolve().parents[1] / "tests" / "vllm" / "support"


async def run(model: Path, rounds: int, tiny: bool) -> None:
    from dsocr.engine.vllm.engine import VLLMEngine, self_test_requests
    from dsocr.settings import EngineSettings

    args: dict[str, Any] = {"seed": 0}
    if tiny:
        sys.path.insert(0, str(SUPPORT))  # the engine core imports the shrink with the extension
        args |= {"enforce_eager": True, "worker_extension_cls": "tiny_worker.TinyVisionWorker"}
    settings = EngineSettings.model_validate(
        {
            "kind": "vllm",
            "model": str(model),
            "vllm": {
                "load_format": "dummy",
                "self_test": False,
                "max_num_seqs": 4 if tiny else 256,
                "args": args,
            },
            "max_model_len": 1024 if tiny else 8192,
        }
    )
    engine = VLLMEngine(settings)
    await engine.start()
    name = engine.info.model_id

    async def one_batch() -> None:
        await asyncio.gather(*(engine._token_ids(r) for r in self_test_requests(name)))

    async def one_after_the_other() -> None:
        for request in self_test_requests(name):
            await engine._token_ids(request)

    ways = {"one after the other": one_after_the_other, "one batch": one_batch}
    times: dict[str, list[float]] = {way: [] for way in ways}
    try:
        await one_batch()  # warm-up
        for i in range(rounds):
            order = list(ways) if i % 2 == 0 else list(reversed(ways))
            for way in order:
                t0 = time.perf_counter()
                await ways[way]()
                times[way].append(time.perf_counter() - t0)
    finally:
        await engine.close()
    for way, seconds in times.items():
        spread = f"{min(seconds):.3f}–{max(seconds):.3f}"
        print(f"{way:>20}: median {statistics.median(seconds):.3f} s over {rounds} rounds ({spread})")
    # Each round ran both ways back to back: its ratio is free of the drift between rounds.
    ratios = [b / a for a, b in zip(times["one after the other"], times["one batch"], strict=True)]
    faster = sum(r < 1 for r in ratios)
    print(
        f"one batch / one after the other, per round: median {statistics.median(ratios):.3f}, "
        f"faster in {faster} of {rounds} rounds"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", type=Path, help="model directory (default: build the tiny one)")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    model, tiny = a.model, a.model is None
    if tiny:
        model = Path(tempfile.mkdtemp()) / "deepseek-ocr-tiny"
        subprocess.run([sys.executable, str(SUPPORT / "make_tiny_deepseek_ocr.py"), str(model)], check=True)
    asyncio.run(run(model, a.rounds, tiny))


if __name__ == "__main__":
    main()
