"""``dsocr serve --workers N`` on the vLLM engine: N HTTP front-end processes over one engine core.

One front-end process does all of the server's CPU work under one GIL: vLLM's image renderer
(Gundam tiling, resizing, normalising: ~160 ms of CPU per A4 page), vLLM's output handler and
detokenizer, and our HTTP, decoding and post-processing. On an H100 that process, not the GPU,
limits ingest (bench/README.md). vLLM's answer is its API-server scale-out (``vllm serve
--api-server-count``): the engine core runs in its own process(es) and several front ends talk to
it over ZMQ, each with its own renderer and output handler. This module runs dsocr's app in those
front ends, through vLLM's own launcher pieces: ``launch_core_engines`` starts the core(s) (with
data parallelism, one per GPU, and its coordinator), ``APIServerProcessManager`` spawns the front
ends, ``wait_for_completion_or_failure`` watches them all.

Every front end accepts on one shared listening socket (the kernel spreads connections), runs the
full app with a ``VLLMEngine`` that is a client of the shared core, and keeps its own admission
queue (limits are per process). Prometheus metrics are summed over the front ends
(prometheus_client's multiprocess mode). If a front end or an engine core dies, everything is shut
down and the command exits non-zero, for the supervisor to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from dsocr.errors import ConfigError, EngineUnavailable
from dsocr.server.metrics import multiprocess_metrics
from dsocr.server.workers import listening_socket, stop_on_sigterm
from dsocr.settings import Settings

__all__ = ["AppFactory", "serve_vllm_frontends"]

logger = logging.getLogger(__name__)

AppFactory = Callable[..., FastAPI]
"""``factory(settings, engine=engine)`` -> the app of one front end (default ``create_app``)."""


@dataclass(frozen=True, slots=True)
class _FrontendArgs:
    """What each spawned front end needs (pickled to it; stands where vLLM passes its CLI args)."""

    settings: Settings
    app_factory: AppFactory | None
    log_level: str


def serve_vllm_frontends(
    settings: Settings,
    *,
    workers: int,
    app_factory: AppFactory | None = None,
    log_level: str = "info",
) -> None:
    """Start the engine core(s) and ``workers`` front ends on ``settings.server``'s address; block.

    Returns when the front ends stop (SIGINT / SIGTERM stop them gracefully); raises if one of
    them or an engine core dies. ``app_factory`` must be picklable (a module-level function).
    """
    engine = settings.engine
    if engine.extra_models:
        raise ConfigError(
            "front-end processes over one vLLM engine serve one model; unset "
            "DSOCR_ENGINE__EXTRA_MODELS or use --workers 1",
            field="engine.extra_models",
        )
    if engine.replicas != 1:
        raise ConfigError(
            "--workers > 1 on the vLLM engine shares one engine core; for several GPUs use "
            "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE instead of DSOCR_ENGINE__REPLICAS",
            field="engine.replicas",
        )
    try:
        from vllm.v1.executor import Executor
    except ImportError as exc:
        raise ConfigError(
            "the vLLM engine needs vLLM: pip install 'dsocr[vllm]'", field="engine.kind"
        ) from exc

    from dsocr.engine.vllm import vllm_engine_args, vllm_engine_config

    name = engine.served_model_name or engine.model
    args = vllm_engine_args(engine, name, engine.model, engine.vllm.gpu_memory_utilization)
    args._api_process_count, args._api_process_rank = workers, -1
    from vllm.usage.usage_lib import UsageContext

    try:
        config = vllm_engine_config(engine, args, UsageContext.OPENAI_API_SERVER)
    except Exception as exc:
        raise EngineUnavailable(f"vLLM could not start {engine.model}: {type(exc).__name__}: {exc}") from exc
    executor_class = Executor.get_class(config)
    frontend_args = _FrontendArgs(settings=settings, app_factory=app_factory, log_level=log_level)
    sock = listening_socket(settings.server.host, settings.server.port)
    listen_address = f"http://{settings.server.host}:{settings.server.port}"

    with multiprocess_metrics(), stop_on_sigterm():
        launched: _Launched | None = None
        try:
            launch = _launch(
                config,
                executor_class,
                not args.disable_log_stats,
                workers,
                listen_address,
                sock,
                frontend_args,
            )
            with launch as launched:
                pass
            from vllm.v1.utils import wait_for_completion_or_failure

            wait_for_completion_or_failure(
                api_server_manager=launched.api_servers,
                engine_manager=launched.engines,
                coordinator=launched.coordinator,
            )
        except RuntimeError as exc:  # vLLM's report of an engine core or front end that failed or died
            raise EngineUnavailable(f"stopping all server processes: {exc}") from exc
        finally:
            if launched is not None:
                launched.shutdown(float(getattr(config, "shutdown_timeout", 0) or 10))
            sock.close()


@dataclass(slots=True)
class _Launched:
    """The processes ``_launch`` started, stopped in vLLM's order: front ends, engines, coordinator."""

    api_servers: Any
    engines: Any
    coordinator: Any
    # vLLM >= 0.3x only. Kept referenced until shutdown: vLLM unlinks their IPC paths when they
    # are collected, and the engine cores connect to them only after the handshake.
    listeners: Any

    def shutdown(self, timeout: float) -> None:
        for manager in (self.api_servers, self.engines, self.coordinator):
            if manager is not None:
                with contextlib.suppress(Exception):
                    manager.shutdown(timeout=timeout)
        if self.listeners is not None:
            self.listeners.cleanup()


@contextlib.contextmanager
def _launch(
    config: Any,
    executor_class: Any,
    log_stats: bool,
    workers: int,
    listen_address: str,
    sock: socket.socket,
    args: _FrontendArgs,
) -> Iterator[_Launched]:
    """vLLM's engine launch and front-end spawn, for both launcher generations.

    Yields the processes' managers; the engines' handshake runs when the context exits (weights
    load, compile), while the front ends wait for the engine before they serve. vLLM 0.26 passes
    ZMQ addresses (the front ends report what they bound); newer vLLM binds the listeners here
    and hands them over.
    """
    from vllm.v1 import utils as v1_utils
    from vllm.v1.engine import utils as engine_utils

    manager_cls = v1_utils.APIServerProcessManager
    if hasattr(engine_utils, "bind_engine_zmq_listeners"):  # vLLM >= 0.3x
        listeners = engine_utils.bind_engine_zmq_listeners(config, workers)
        with engine_utils.launch_core_engines(
            config, executor_class, log_stats, listeners.addresses
        ) as launch:
            coordinator = launch.coordinator
            api_servers = manager_cls(
                listen_address=listen_address,
                sock=sock,
                args=args,
                num_servers=workers,
                input_listeners=listeners.inputs,
                output_listeners=listeners.outputs,
                target_server_fn=run_frontend,
                stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
                tensor_queue=launch.tensor_queue,
            )
            # A front end that exits while the engines start aborts the start-up.
            launch.watched_frontend_processes = api_servers.processes
            yield _Launched(api_servers, launch.engine_manager, coordinator, listeners)
        return
    addresses = engine_utils.get_engine_zmq_addresses(config, workers)
    with engine_utils.launch_core_engines(config, executor_class, log_stats, addresses, workers) as (
        engines,
        coordinator,
        addresses,
        tensor_queue,
    ):
        api_servers = manager_cls(
            listen_address=listen_address,
            sock=sock,
            args=args,
            num_servers=workers,
            input_addresses=addresses.inputs,
            output_addresses=addresses.outputs,
            target_server_fn=run_frontend,
            stats_update_address=coordinator.get_stats_publish_address() if coordinator else None,
            tensor_queue=tensor_queue,
        )
        # The engines connect to what each front end really bound.
        addresses.inputs, addresses.outputs = api_servers.gather_actual_addresses()
        yield _Launched(api_servers, engines, coordinator, None)


def run_frontend(
    listen_address: str, sock: socket.socket, args: _FrontendArgs, client_config: dict[str, Any]
) -> None:
    """Entry point of one spawned front end: connect to the engine core, then serve the app.

    The engine client is built and self-tested before the socket is served, as vLLM's own front
    ends do: connections wait in the shared backlog meanwhile.
    """
    import uvicorn

    from dsocr.engine.vllm import VLLMEngine
    from dsocr.server.app import create_app

    index = int(client_config.get("client_index", 0))
    logging.basicConfig(
        level=args.log_level.upper(),
        format=f"(front end {index} pid={os.getpid()}) %(levelname)s %(name)s: %(message)s",
    )
    settings = args.settings
    factory = args.app_factory or create_app

    async def serve() -> None:
        engine = VLLMEngine(settings.engine, frontend=client_config)
        await engine.start()
        app = factory(settings, engine=engine)  # its lifespan finds the engine started
        config = uvicorn.Config(
            app, host=settings.server.host, port=settings.server.port, log_level=args.log_level
        )
        await uvicorn.Server(config).serve(sockets=[sock])

    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(serve())
    logger.debug("front end %d at %s stopped", index, listen_address)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
