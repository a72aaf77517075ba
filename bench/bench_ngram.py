"""Cost of the no-repeat n-gram rule per decoding step: per-request Python loop vs batched torch.

Both variants ban the same tokens (checked before timing) on the same batch: a mix of looping and
non-looping rows, as in a batch of OCR requests. The Python variant is what the official and
upstream per-request processors do (one ``banned_tokens`` call and one logits write per row); the
batched variant is ``dsocr.ngram_torch.apply_ngram_ban`` on a ``[batch, window]`` history tail.

    .venv/bin/python bench/bench_ngram.py                   # CPU, batch 256, n 30, window 90
    .venv/bin/python bench/bench_ngram.py --device cuda     # the same on a GPU

Prints microseconds per step (median of ``--steps`` timed steps after warm-up).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import torch

from dsocr.ngram import banned_tokens
from dsocr.ngram_torch import apply_ngram_ban, banned_mask

# DeepSeek-OCR vocabulary size (config.json, §7.1) and the official whitelist <td>, </td>.
VOCAB = 129280
WHITELIST = frozenset({128821, 128822})


def make_rows(batch: int, length: int, seed: int) -> list[list[int]]:
    """Generated-token rows: half loop with a period of 1–80 tokens, half are random text."""
    rng = random.Random(seed)
    rows = []
    for b in range(batch):
        if b % 2:
            period = rng.randint(1, 80)
            unit = [rng.randrange(VOCAB) for _ in range(period)]
            rows.append([unit[t % period] for t in range(length)])
        else:
            rows.append([rng.randrange(VOCAB) for _ in range(length)])
    return rows


def timed(step: Callable[[], None], steps: int, sync: Callable[[], None]) -> float:
    """Median microseconds per call."""
    for _ in range(3):
        step()
    sync()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--ngram", type=int, default=30)
    parser.add_argument("--window", type=int, default=90)
    parser.add_argument("--length", type=int, default=1000, help="generated tokens per row so far")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--method", default="auto", choices=["auto", "broadcast", "by_shift"])
    parser.add_argument("--profile", action="store_true", help="also print kernels and device time per step")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    rows = make_rows(args.batch, args.length, seed=0)
    # The sampler keeps only each row's last ``window`` tokens (left-aligned, all rows full here).
    history = torch.tensor([row[-args.window :] for row in rows], dtype=torch.long, device=device)
    lengths = torch.full((args.batch,), history.shape[1], dtype=torch.long, device=device)
    logits = torch.zeros((args.batch, VOCAB), device=device)
    options = {"ngram_size": args.ngram, "window": args.window}
    method = args.method

    expected = [banned_tokens(row, whitelist=WHITELIST, **options) for row in rows]
    mask = banned_mask(history, lengths, vocab_size=VOCAB, whitelist=WHITELIST, method=method, **options)
    got = [set(torch.nonzero(row).flatten().tolist()) for row in mask.cpu()]
    if got != expected:
        raise SystemExit("batched and per-request bans differ")
    banned_rows = sum(1 for banned in expected if banned)

    def python_loop() -> None:
        for b, row in enumerate(rows):
            banned = banned_tokens(row, whitelist=WHITELIST, **options)
            if banned:
                logits[b, list(banned)] = float("-inf")

    def batched() -> None:
        apply_ngram_ban(logits, history, lengths, whitelist=WHITELIST, method=method, **options)

    def mask_only() -> None:
        banned_mask(history, lengths, vocab_size=VOCAB, whitelist=WHITELIST, method=method, **options)

    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} batch={args.batch} "
        f"n={args.ngram} window={args.window} vocab={VOCAB} method={method} rows_with_bans={banned_rows}"
    )
    for name, step in [("python per-request loop", python_loop), ("batched apply_ngram_ban", batched),
                       ("batched mask only", mask_only)]:  # fmt: skip
        print(f"{name:26s} {timed(step, args.steps, sync):10.1f} us/step")
    if device.type == "cuda":
        # Eager steps are bound by kernel launches; inside a captured CUDA graph only the device time
        # is left. The step has no host synchronisation, so it can be captured as is.
        warm = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        warm.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm):
            batched()
        torch.cuda.current_stream().wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            batched()
        logits.zero_()
        graph.replay()
        sync()
        if [set(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in logits.cpu()] != expected:
            raise SystemExit("CUDA graph replay bans differ")
        print(f"{'batched in a CUDA graph':26s} {timed(graph.replay, args.steps, sync):10.1f} us/step")
    if args.profile:
        profile_step(batched, device, sync)


def profile_step(
    step: Callable[[], None], device: torch.device, sync: Callable[[], None], steps: int = 20
) -> None:
    """Kernels launched and device time per batched step: shows whether launches or work dominate."""
    from torch.profiler import DeviceType, ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        sync()
    events = prof.key_averages()
    if device.type == "cuda":
        on_gpu = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels = sum(e.count for e in on_gpu)
        device_us = sum(e.self_device_time_total for e in on_gpu) / steps
        print(f"profile: {kernels / steps:.0f} kernels/step, {device_us:.1f} us GPU time/step")
    ops = sum(e.count for e in events if e.key.startswith("aten::"))
    print(f"profile: {ops / steps:.0f} aten ops/step")


if __name__ == "__main__":
    main()
