"""``dsocr batch --ray``: the same job as a Ray Data pipeline, for a cluster (or one big machine).

    documents (one row each) ─flat_map─▶ rendered pages (CPU tasks, raw RGB rows)
        ─map_batches─▶ OCR in an actor pool (one engine per GPU, or per CPU slot for cpu/fake)
        ─iter_rows─▶ the driver writes each page's files and commits it to the manifest

Scanning, the manifest and every output file stay on the driver and go through the same code
as the local runner (:mod:`dsocr.batch.runner`), so the two paths produce the same files and
resume each other's runs. Ray is imported only when this runs (``pip install 'dsocr[ray]'``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import aclosing
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from dsocr.batch.outputs import PageArtifacts, failed_artifacts, page_artifacts
from dsocr.batch.plan import PageSource
from dsocr.batch.runner import BatchJob, BatchSummary, PreparedRun, finish_run, prepare_run
from dsocr.engine.base import Engine
from dsocr.engine.factory import create_engine, select_engine
from dsocr.engine.gpus import disable_nvlink_multicast
from dsocr.errors import ConfigError, DsocrError, EngineUnavailable
from dsocr.pipeline import PageInput, Pipeline
from dsocr.progress import progress_bar
from dsocr.request import OcrRequest, new_request_id
from dsocr.settings import EngineSettings, FetchSettings, LimitSettings, Settings

__all__ = ["run_batch_ray"]

logger = logging.getLogger(__name__)

_ADDRESS = "ray_address"
# Ray retries an unreachable cluster for many minutes; a TCP connect first fails in seconds.
_CONNECT_TIMEOUT_S = 10.0


def run_batch_ray(
    job: BatchJob, settings: Settings, *, address: str | None = None, actors: int | None = None
) -> BatchSummary:
    """Run ``job`` on Ray: the cluster at ``address`` (``"auto"``, ``ray://host:10001``), the Ray
    instance this process already joined, or else a fresh local one.

    ``actors`` is the OCR actor pool size; by default one per GPU for vLLM, and one per CPU
    minus one (left for page rendering) for the CPU and fake engines.
    """
    ray = _import_ray()
    run = prepare_run(job, settings, runner="ray")
    started_ray = False
    try:
        if run.plan.pages_todo:
            if not ray.is_initialized():
                _init_ray(ray, address)
                started_ray = True
            _run_pipeline(ray, run, job, settings, actors=actors)
        return finish_run(run, job.out_dir)
    finally:
        run.close()
        if started_ray:
            ray.shutdown()


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise ConfigError(
            "--ray needs Ray Data, which is not installed: pip install 'dsocr[ray]'", field="ray"
        ) from exc
    return ray


def _init_ray(ray: Any, address: str | None) -> None:
    """Join the cluster at ``address`` (or start a local Ray); typed errors naming ``ray_address``."""
    # No usage reporting and no dashboard: batch hosts are often offline, and nothing listens
    # on a port this job did not ask for.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # A local Ray instance starts its workers from this environment: NVLink multicast off there too.
    disable_nvlink_multicast()
    shown = address or os.environ.get("RAY_ADDRESS") or "auto"
    _check_reachable(_bootstrap_address(address, shown), shown)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except ValueError as exc:  # a malformed address, or ray://… without ray[client]
        raise ConfigError(
            f"cannot use Ray cluster address {shown!r}: {_first_line(exc)}", field=_ADDRESS
        ) from exc
    except Exception as exc:
        raise EngineUnavailable(
            f"cannot join the Ray cluster at {shown}: {_first_line(exc)}", field=_ADDRESS
        ) from exc


def _bootstrap_address(address: str | None, shown: str) -> str | None:
    """The cluster's ``host:port`` as Ray resolves it, or None (start a local Ray; Ray Client)."""
    if address is None and not os.environ.get("RAY_ADDRESS"):
        return None  # ray.init starts a local instance
    if shown.startswith("ray://"):
        return None  # Ray Client reports its own connection errors
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # private API moved: leave the check to ray.init
        return None
    try:
        resolved: str | None = canonicalize_bootstrap_address(shown)
    except ValueError as exc:
        raise ConfigError(
            f"cannot use Ray cluster address {shown!r}: {_first_line(exc)}", field=_ADDRESS
        ) from exc
    except ConnectionError as exc:  # "auto" and no cluster found
        raise EngineUnavailable(f"cannot find a Ray cluster: {_first_line(exc)}", field=_ADDRESS) from exc
    return resolved


def _check_reachable(bootstrap: str | None, shown: str) -> None:
    if bootstrap is None:
        return
    parts = urlsplit(f"//{bootstrap}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        return  # not host:port; ray.init reports it
    if host is None or port is None:
        return
    try:
        socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise EngineUnavailable(
            f"cannot reach the Ray cluster at {shown} ({host}:{port}): {reason}; "
            "is `ray start --head` running there?",
            field=_ADDRESS,
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _run_pipeline(
    ray: Any, run: PreparedRun, job: BatchJob, settings: Settings, *, actors: int | None
) -> None:
    config = run.config
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is on the driver, in pages
    logging.getLogger("ray.data").setLevel(logging.WARNING)

    documents = [doc for doc in run.plan.documents if doc.todo]
    for doc in documents:
        # Every page is handed to Ray now; a page counts an attempt here even if the run stops first.
        run.manifest.mark_started(doc.doc_key, doc.todo)
    items = [
        {"doc_key": doc.doc_key, "path": str(doc.path), "sha256": doc.sha256, "pages": list(doc.todo)}
        for doc in documents
    ]
    kind = config.engine_kind
    engine_settings = _actor_engine_settings(settings.engine)
    pool, cpus_per_actor, gpus_per_actor = _actor_shape(
        ray, kind, actors, gpus_per_engine=int(engine_settings.vllm.data_parallel_size)
    )
    dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    pages = dataset.flat_map(
        functools.partial(_render_document, limits=settings.limits, dpi=config.dpi), num_cpus=1
    )
    results = pages.map_batches(
        _OcrActor,
        fn_constructor_kwargs={
            "engine_settings": engine_settings,
            "threads": max(1, int(cpus_per_actor)),
            "request": config.request,
            "limits": settings.limits,
        },
        batch_size=job.max_in_flight,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor,
    )
    with progress_bar(run.plan.pages_todo, quiet=job.quiet) as advance:
        for row in results.iter_rows():
            run.writer.write(str(row["doc_key"]), PageArtifacts.from_json(str(row["artifacts"])))
            advance()


def _actor_engine_settings(settings: EngineSettings) -> EngineSettings:
    """The engine each actor runs: on Ray the actor pool is what spreads work over the GPUs.

    ``replicas`` becomes 1 (one engine per actor) and ``vllm.data_parallel_size="all"`` becomes 1
    (one GPU per actor); an explicit ``vllm.data_parallel_size`` N gives each actor N GPUs
    (docs/batch.md and docs/serving.md say so).
    """
    dp = 1 if settings.vllm.data_parallel_size == "all" else settings.vllm.data_parallel_size
    vllm = settings.vllm.model_copy(update={"data_parallel_size": dp})
    return settings.model_copy(update={"replicas": 1, "vllm": vllm})


def _actor_shape(
    ray: Any, kind: str, actors: int | None, *, gpus_per_engine: int = 1
) -> tuple[int, float, float]:
    """(pool size, CPUs per actor, GPUs per actor) for the engine kind and the cluster.

    vLLM: one actor per ``gpus_per_engine`` GPUs of the cluster (one per GPU by default), each
    actor reserving its GPUs (Ray sets its ``CUDA_VISIBLE_DEVICES``).
    """
    resources = ray.cluster_resources()
    if kind == "vllm":
        gpus = int(resources.get("GPU", 0))
        if gpus < gpus_per_engine:
            raise ConfigError(
                f"the vLLM engine on Ray needs {gpus_per_engine} GPU(s) per actor; the cluster has {gpus}",
                field="engine",
            )
        return actors or gpus // gpus_per_engine, 1.0, float(gpus_per_engine)
    # CPU slots: keep one CPU free for page rendering, or the actors would starve the renders.
    cpus = int(resources.get("CPU", 1))
    return actors or max(1, cpus - 1), 1.0, 0.0


def _render_document(row: dict[str, Any], *, limits: LimitSettings, dpi: int) -> Iterator[dict[str, Any]]:
    """One document row → one row per page to do, rendered (a CPU task; pages stream out one by one).

    A page that cannot be rendered (over the render budget included) becomes a row carrying its
    failed artifacts, so it is reported.
    """
    # This task renders one page at a time: one render worker process is enough.
    limits = limits.model_copy(update={"render_workers": 1})
    source = PageSource(Path(row["path"]), sha256=str(row["sha256"]), limits=limits, dpi=dpi)
    try:
        for page in row["pages"]:
            page = int(page)
            try:
                image = source.render(page)
            except DsocrError as exc:
                failed = failed_artifacts(page, exc).to_json()
                yield _page_row(row["doc_key"], page, pixels=b"", size=(0, 0), artifacts=failed)
                continue
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            # Raw RGB, not PNG: no encode/decode CPU on either side, at 3 bytes a pixel in the
            # object store (about 6.5 MB for an A4 page at 144 dpi).
            yield _page_row(row["doc_key"], page, pixels=rgb.tobytes(), size=rgb.size, artifacts="")
    finally:
        source.close()


def _page_row(
    doc_key: str, page: int, *, pixels: bytes, size: tuple[int, int], artifacts: str
) -> dict[str, Any]:
    return {
        "doc_key": doc_key,
        "page": page,
        "width": size[0],
        "height": size[1],
        "pixels": pixels,
        "artifacts": artifacts,
    }


def _actor_engine(settings: EngineSettings, threads: int) -> Engine:
    if select_engine(settings).kind == "cpu":
        from dsocr.engine.cpu import CpuEngine

        # Unset, onnxruntime would use every core of the node in every actor: the actor's CPUs.
        return CpuEngine(settings, threads=settings.cpu.threads or threads)
    return create_engine(settings)


class _OcrActor:
    """One engine per actor, started once; each batch of pages runs concurrently on its loop."""

    def __init__(
        self, *, engine_settings: EngineSettings, threads: int, request: OcrRequest, limits: LimitSettings
    ) -> None:
        self._loop = asyncio.new_event_loop()
        # Workers of a cluster joined by address do not inherit the driver's environment.
        disable_nvlink_multicast()
        self._engine = _actor_engine(engine_settings, threads)
        self._loop.run_until_complete(self._engine.start())
        # Pages come rendered from the previous stage: no source to fetch, nothing to admit.
        self._pipeline = Pipeline(self._engine, limits=limits, fetch=FetchSettings())
        self._request = request

    def __call__(self, batch: Any) -> Any:
        """A pandas batch of rendered pages → the same rows with ``artifacts`` filled, pixels dropped."""
        rows = batch.to_dict("records")
        # Ray calls this from its own worker thread: hand the loop a coroutine, not futures.
        artifacts = self._loop.run_until_complete(self._pages(rows))
        out = batch.drop(columns=["pixels", "width", "height"])
        out["artifacts"] = artifacts
        return out

    async def _pages(self, rows: list[dict[str, Any]]) -> list[str]:
        return list(await asyncio.gather(*(self._page(row) for row in rows)))

    async def _page(self, row: dict[str, Any]) -> str:
        page = int(row["page"])
        if row["artifacts"]:
            return str(row["artifacts"])  # failed to render: passed through
        image = Image.frombytes("RGB", (int(row["width"]), int(row["height"])), row["pixels"])
        request = replace(self._request, request_id=new_request_id())
        page_input = PageInput(number=page, load=lambda: image)
        async with aclosing(self._pipeline.run_pages(request, [page_input], window=1)) as results:
            result = await anext(results)
        return page_artifacts(result, page=page).to_json()
