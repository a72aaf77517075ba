"""Where vLLM's engine core spends its main thread, from py-spy's raw stacks.

``gpu_throughput.py --phases steps --spy-core DELAY:SECONDS`` records the engine core
(``py-spy record --format raw --idle``) into ``pyspy_core_<variant>.txt``; this prints, per file,
the share of the busy-loop thread's samples under each function of interest (a sample counts
for every listed function on its stack, so nested ones overlap).

usage: python bench/spy_summary.py pyspy_core_ngram.txt pyspy_core_plain.txt [--function NAME ...]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

# The engine core's step, roughly outermost first (vLLM 0.26.0 names).
FUNCTIONS = (
    "EngineCore.step_with_batch_queue",
    "Scheduler.schedule",
    "Scheduler.update_from_output",
    "GPUModelRunner.execute_model",
    "GPUModelRunner.sample_tokens",
    "GPUModelRunner._sample",
    "Sampler.apply_logits_processors",
    "NGramBanV1.apply",
    "GPUModelRunner._bookkeeping_sync",
)
BUSY_LOOP = "EngineCoreProc.run_busy_loop"


def shares(path: Path, functions: tuple[str, ...]) -> tuple[int, Counter[str]]:
    """(samples of the busy-loop thread, samples per function on their stacks)."""
    total, hits = 0, Counter[str]()
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        names = {frame.split(" (")[0] for frame in stack.split(";")}
        if BUSY_LOOP not in names:
            continue  # another thread: the engine core's socket threads, tqdm, ...
        total += int(count)
        for name in functions:
            if name in names:
                hits[name] += int(count)
    return total, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--function", action="append", help="a function to report (repeatable)")
    a = ap.parse_args()
    functions = tuple(a.function) if a.function else FUNCTIONS
    for path in a.files:
        total, hits = shares(path, functions)
        print(f"{path.name}: {total} samples of the engine core's busy loop")
        for name in functions:
            print(f"  {hits[name] / max(total, 1) * 100:5.1f} %  {name}")


if __name__ == "__main__":
    main()
