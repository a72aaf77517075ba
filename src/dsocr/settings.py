"""Settings: one ``Settings`` object built by each entry point and passed down by section.

Environment variables use the ``DSOCR_`` prefix and ``__`` between section, group and field, e.g.
``DSOCR_ENGINE__KIND=fake``, ``DSOCR_ENGINE__VLLM__MAX_NUM_SEQS=128``, ``DSOCR_LIMITS__MAX_PDF_PAGES=200``,
``DSOCR_SERVER__API_KEYS='["k1","k2"]'``. The engine's settings are grouped: what every engine reads
at ``engine.*``, each engine's own at ``engine.vllm.*``, ``engine.cpu.*`` and ``engine.fake.*``. A
name that is not a setting (a typo, or a flat engine name that moved into a group) stops start-up.
There is no global instance: tests write ``Settings(engine={"kind": "fake", "fake": {"delay_s": 0.5}})``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = [
    "RETRY_NGRAM_SIZE",
    "CacheSettings",
    "CpuSettings",
    "EngineSettings",
    "FakeSettings",
    "FetchSettings",
    "JobSettings",
    "LimitSettings",
    "RemoteSettings",
    "ServerSettings",
    "Settings",
    "VllmSettings",
    "encoder_cuda_graphs",
    "unparsable_variables",
]

EngineKind = Literal["auto", "vllm", "cpu", "fake"]

# A retry bans n-grams of at most this many tokens (dsocr.pipeline), so its window must hold one.
RETRY_NGRAM_SIZE = 20


class _Section(BaseModel):
    # An unknown name (a typo, or a setting that moved) stops start-up instead of being ignored.
    model_config = ConfigDict(extra="forbid")


class VllmSettings(_Section):
    """The vLLM engine (``DSOCR_ENGINE__VLLM__*``); the other engines ignore these."""

    # The GPU memory share of all served models together, split evenly between them
    # (DSOCR_ENGINE__EXTRA_MODELS).
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(256, ge=1)
    # Tokens per engine step, which is also vLLM's vision-encoder budget per step. ``None``: 16384
    # on a GPU (vLLM's own offline default on H100/H200; AsyncLLM would otherwise get 2048, which
    # lets only two Gundam pages through the vision encoder per step), vLLM's default elsewhere.
    max_num_batched_tokens: int | None = Field(None, ge=1)
    # Engine steps' worth of vision-encoder output that vLLM's encoder cache holds (vLLM: one,
    # ``max_num_batched_tokens``, not configurable there). vLLM frees a page's entry only after the
    # step that prefilled it has run, and with async scheduling the next step is planned before
    # that: with room for one step, full ingest steps alternate with ones that take in a few pages.
    # Two steps' room fills every step: +9.4 % pages/s on ingest-only passes on the H100
    # (bench/README.md).
    encoder_cache_steps: int = Field(2, ge=1, le=8)
    # On a GPU: torch's CPU threads in the engine core's worker, set through dsocr's worker
    # extension after start. torch's default, one per core, keeps a pool of threads busy beside
    # the thread that steps the model, for the few CPU ops it runs (vLLM gives its own multi-GPU
    # workers one). With 1, on the H100, two A/B runs on one engine: the core's CPU time per pass
    # −35 / −39 %, pages/s +8.6 / +12.2 % offline, −0.4 / +8.6 % over HTTP (bench/README.md).
    # ``None``: torch's default. On vLLM's CPU build those threads run the model and vLLM sizes
    # them itself: this is not applied there.
    engine_core_threads: int | None = Field(1, ge=1)
    kv_cache_dtype: str = "auto"
    # Threads that turn pages into model inputs (without device views also image tiling and
    # normalising) in parallel, off the event loop. ``None``: one per core, at most 8.
    preprocess_workers: int | None = Field(None, ge=1)
    # Send pages as pixels and build the encoder's views (resize, tiles, padding, normalising) on
    # the GPU, bit-identical to upstream's Pillow views, instead of in the server process
    # (dsocr.engine.vllm.page_views). ``None``: on where vLLM runs on a GPU, off with encoder CUDA
    # graphs (``compilation_config.cudagraph_mm_encoder`` in ``args``), whose buffers take
    # upstream's views.
    device_views: bool | None = None
    load_format: str = "auto"
    # Where vLLM, Inductor and Triton keep what they compile at start-up, so that the next start
    # loads it instead of compiling again (docs/serving.md, "Cold start"). ``None``: their own
    # defaults (vLLM: ~/.cache/vllm). On Truss, a folder that outlives the replica (b10cache).
    cache_dir: Path | None = None
    # Prove at start-up that repetition control is active (see dsocr.engine.vllm.engine).
    self_test: bool = True
    # Let the V1 n-gram processor read last step's tokens on the GPU instead of making vLLM wait
    # for them on the host each step (dsocr.engine.vllm.ngram.enable_device_history), so async
    # scheduling overlaps the host's work with the GPU's: +4.6 % pages/s on the H100 over five
    # alternating pairs (bench/README.md). It relies on vLLM runner internals and
    # stays off, with a logged warning, where they differ.
    ngram_device_history: bool = True
    # vLLM's own data parallelism over several GPUs of one host (docs/serving.md, "Multi-GPU");
    # "all" = every visible GPU. The other way is DSOCR_ENGINE__REPLICAS.
    data_parallel_size: Annotated[int, Field(ge=1)] | Literal["all"] = 1
    # Extra keyword arguments for vLLM's AsyncEngineArgs (enforce_eager, kv_cache_memory_bytes,
    # ...). An argument that has its own setting above (or at engine level) is refused here, so
    # that each knob has one place. Naming a ``worker_extension_cls`` of your own turns off what
    # needs dsocr's (ngram_device_history, engine_core_threads).
    args: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _args_do_not_repeat_settings(self) -> VllmSettings:
        named = sorted(set(self.args) & set(_VLLM_ARGS_WITH_A_SETTING))
        if named:
            instead = ", ".join(_VLLM_ARGS_WITH_A_SETTING[name] for name in named)
            raise ValueError(
                f"DSOCR_ENGINE__VLLM__ARGS names {', '.join(named)}, which dsocr sets from its own "
                f"setting: set {instead} instead"
            )
        return self

    @model_validator(mode="after")
    def _device_views_fit_encoder_graphs(self) -> VllmSettings:
        if self.device_views and encoder_cuda_graphs(self.args):
            raise ValueError(
                "DSOCR_ENGINE__VLLM__DEVICE_VIEWS=true cannot work with encoder CUDA graphs "
                "(compilation_config.cudagraph_mm_encoder in DSOCR_ENGINE__VLLM__ARGS), whose "
                "buffers take upstream's views: drop one of them"
            )
        return self

    @model_validator(mode="after")
    def _own_worker_extension_leaves_ours_unasked(self) -> VllmSettings:
        if "worker_extension_cls" not in self.args:
            return self
        asked = [
            f"DSOCR_ENGINE__VLLM__{name.upper()}"
            for name in ("ngram_device_history", "engine_core_threads")
            if name in self.model_fields_set and getattr(self, name) not in (False, None)
        ]
        if asked:
            raise ValueError(
                f"{', '.join(asked)} cannot work with the worker_extension_cls that "
                "DSOCR_ENGINE__VLLM__ARGS names: it takes the place of dsocr's, which does that "
                "work; drop one of them"
            )
        return self


# AsyncEngineArgs that dsocr fills from a setting, and that setting's variable.
_VLLM_ARGS_WITH_A_SETTING: dict[str, str] = {
    "model": "DSOCR_ENGINE__MODEL",
    "revision": "DSOCR_ENGINE__REVISION",
    "served_model_name": "DSOCR_ENGINE__SERVED_MODEL_NAME",
    "max_model_len": "DSOCR_ENGINE__MAX_MODEL_LEN",
    **{
        name: f"DSOCR_ENGINE__VLLM__{name.upper()}"
        for name in (
            "gpu_memory_utilization",
            "max_num_seqs",
            "max_num_batched_tokens",
            "kv_cache_dtype",
            "load_format",
            "data_parallel_size",
        )
    },
}


def encoder_cuda_graphs(args: Mapping[str, Any]) -> bool:
    """Whether vLLM's ``args`` turn the vision encoder's CUDA graphs on (``compilation_config``,
    a dict, a JSON string or vLLM's own config object)."""
    compilation = args.get("compilation_config")
    if isinstance(compilation, str):
        try:
            compilation = json.loads(compilation)
        except ValueError:
            return False
    if isinstance(compilation, dict):
        return bool(compilation.get("cudagraph_mm_encoder"))
    return bool(getattr(compilation, "cudagraph_mm_encoder", False))


class CpuSettings(_Section):
    """The embedded CPU engine (``DSOCR_ENGINE__CPU__*``)."""

    # onnxruntime's inference threads. ``None``: one per core, split evenly between
    # DSOCR_ENGINE__REPLICAS (at least one each).
    threads: int | None = Field(None, ge=1)


class FakeSettings(_Section):
    """The scripted fake engine (``DSOCR_ENGINE__FAKE__*``; tests and demos only)."""

    # Seconds each page takes, spread over its streamed pieces.
    delay_s: float = Field(0.0, ge=0)
    # Pages generated at once, like a real engine's batch; more wait their turn (None: no limit).
    max_batch: int | None = Field(None, ge=1)


# Flat engine settings that moved into a group: old name -> its place now.
_MOVED_ENGINE_SETTINGS: dict[str, str] = {
    **{
        name: f"vllm.{name}"
        for name in (
            "gpu_memory_utilization",
            "max_num_seqs",
            "max_num_batched_tokens",
            "encoder_cache_steps",
            "engine_core_threads",
            "kv_cache_dtype",
            "preprocess_workers",
            "device_views",
            "load_format",
            "self_test",
            "ngram_device_history",
            "data_parallel_size",
        )
    },
    "vllm_args": "vllm.args",
    "cpu_threads": "cpu.threads",
    "fake_delay_s": "fake.delay_s",
}


def _variable(path: str) -> str:
    """``engine.vllm.max_num_seqs`` -> ``DSOCR_ENGINE__VLLM__MAX_NUM_SEQS``."""
    return "DSOCR_" + path.replace(".", "__").upper()


class EngineSettings(_Section):
    """Which engine to run and how: what every engine reads here, each engine's own in its group."""

    kind: EngineKind = "auto"
    # HF id or local directory of the served model; also reported as ``model_name``.
    model: str = "deepseek-ai/DeepSeek-OCR"
    revision: str | None = None
    # Extra served models for the vLLM engine (e.g. DeepSeek-OCR 2), routed by the ``model`` field.
    extra_models: list[str] = Field(default_factory=list)
    served_model_name: str | None = None
    max_model_len: int = Field(8192, ge=512)
    # Repetition control (whitelist <td> </td>). Left unset, each served model gets its own official
    # values (v1 30/90, v2 20/90: dsocr.request.ngram_defaults); set, they apply to every model.
    # n = 1 would ban nothing (the official rule needs an (n-1)-token prefix); window >= n.
    ngram_size: int = Field(30, ge=2)
    ngram_window: int = Field(90, ge=2)
    # Retry policy for pages that end on ``length`` or score as repetitive: first a smaller n-gram
    # (at most RETRY_NGRAM_SIZE tokens) in a ``retry_ngram_window`` window, then one temperature
    # per attempt from ``retry_temperatures``; attempts past its end reuse its last temperature
    # (as olmOCR does). 0 attempts = flag only, never retry.
    retry_attempts: int = Field(0, ge=0, le=8)
    retry_ngram_window: int = Field(50, ge=RETRY_NGRAM_SIZE)
    retry_temperatures: list[float] = Field(default_factory=lambda: [0.1, 0.2, 0.3, 0.5], min_length=1)
    repetition_threshold: float = Field(0.3, ge=0, le=1)
    # N independent engines behind one pool (dsocr.engine.pool), least in-flight first; for vLLM
    # each is pinned to its own GPU ("all" = every visible GPU). docs/serving.md, "Multi-GPU".
    replicas: Annotated[int, Field(ge=1)] | Literal["all"] = 1
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    cpu: CpuSettings = Field(default_factory=CpuSettings)
    fake: FakeSettings = Field(default_factory=FakeSettings)

    @model_validator(mode="before")
    @classmethod
    def _moved_names_are_refused(cls, data: Any) -> Any:
        # A renamed setting left in a deployment's environment would otherwise be dropped quietly.
        if isinstance(data, Mapping):
            moved = [name for name in _MOVED_ENGINE_SETTINGS if name in data]
            if moved:
                raise ValueError(
                    "; ".join(
                        f"{_variable('engine.' + name)} is now "
                        f"{_variable('engine.' + _MOVED_ENGINE_SETTINGS[name])}"
                        for name in moved
                    )
                    + " (engine settings are grouped by engine)"
                )
        return data

    @model_validator(mode="after")
    def _window_holds_an_ngram(self) -> EngineSettings:
        if self.ngram_window < self.ngram_size:
            raise ValueError(
                f"DSOCR_ENGINE__NGRAM_WINDOW ({self.ngram_window}) must be at least "
                f"DSOCR_ENGINE__NGRAM_SIZE ({self.ngram_size}): no n-gram fits in a shorter window"
            )
        return self

    @model_validator(mode="after")
    def _one_multi_gpu_strategy(self) -> EngineSettings:
        if self.replicas != 1 and self.vllm.data_parallel_size != 1:
            raise ValueError(
                "set either DSOCR_ENGINE__REPLICAS or DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE "
                "above 1, not both"
            )
        if self.vllm.data_parallel_size != 1 and self.kind in ("cpu", "fake"):
            raise ValueError(
                "DSOCR_ENGINE__VLLM__DATA_PARALLEL_SIZE is a vLLM setting; the "
                f"{self.kind} engine scales with DSOCR_ENGINE__REPLICAS"
            )
        return self


class FetchSettings(_Section):
    """The SSRF-guarded URL fetcher."""

    allow_http: bool = False
    # Hosts (exact names) or networks (CIDR) an operator trusts, e.g. an internal object store.
    allow_hosts: list[str] = Field(default_factory=list)
    allow_networks: list[str] = Field(default_factory=list)
    max_redirects: int = Field(3, ge=0, le=10)
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(15.0, gt=0)
    total_timeout_s: float = Field(30.0, gt=0)

    @field_validator("allow_networks")
    @classmethod
    def _check_networks(cls, networks: list[str]) -> list[str]:
        # Checked here so that a typo stops start-up, not the first fetch hours later.
        for entry in networks:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(
                    f"DSOCR_FETCH__ALLOW_NETWORKS entry {entry!r} is not a network "
                    f"(write CIDR such as 10.0.0.0/8 or fd00::/8): {exc}"
                ) from exc
        return networks


class LimitSettings(_Section):
    """Byte, pixel, page, token and time limits."""

    max_upload_bytes: int = Field(50 * 1024 * 1024, ge=1)
    max_image_pixels: int = Field(60_000_000, ge=1)
    max_pdf_pages: int = Field(500, ge=1)
    # A rendered PDF page is an image too: unset, this is 40 MP or max_image_pixels if lower;
    # set above max_image_pixels, start-up fails naming both.
    max_page_pixels: int = Field(40_000_000, ge=1)
    pdf_dpi: int = Field(144, ge=36, le=600)
    # PDF pages render in worker processes that are killed when a page runs over its budget: a
    # few KB of nested drawing can keep pdfium busy for minutes and take gigabytes
    # (dsocr.inputs.render_worker). Memory is each worker's address space. Workers ``None``: one
    # per core, 2 to 8; one document renders on at most half of them at a time.
    render_timeout_s: float = Field(10.0, gt=0)
    render_memory_mb: int = Field(2048, ge=512)
    render_workers: int | None = Field(None, ge=1)
    max_tokens: int = Field(8192, ge=1)
    request_timeout_s: float = Field(600.0, gt=0)
    max_queue: int = Field(512, ge=1)
    # Decoded pixels one server process holds at once (dsocr.admission): each page in flight
    # counts its pixels, 6 times with outputs=visualization, 2 times with crops. A request over it
    # waits up to ``admission_wait_s`` for room, then gets 429. 600 MP is 2.3 GB of decoded pages
    # (4 bytes a pixel): with the CPU engine on a 2-core, 24 GB machine, 16 to 64 concurrent 60 MP
    # uploads peak at 3.9-4.5 GB RSS (bench/README.md, "Upload memory"), and a GPU's batch of 256
    # A4 pages at 144 dpi (513 MP) is admitted at once.
    max_inflight_pixels: int = Field(600_000_000, ge=1)
    admission_wait_s: float = Field(30.0, ge=0)
    # Local paths as input: off unless a root is configured.
    local_path_root: Path | None = None

    @model_validator(mode="after")
    def _page_within_image_limit(self) -> LimitSettings:
        if self.max_page_pixels <= self.max_image_pixels:
            return self
        if "max_page_pixels" in self.model_fields_set:
            raise ValueError(
                f"DSOCR_LIMITS__MAX_PAGE_PIXELS ({self.max_page_pixels:,}) is over "
                f"DSOCR_LIMITS__MAX_IMAGE_PIXELS ({self.max_image_pixels:,}): a rendered PDF page is "
                "an image too; lower DSOCR_LIMITS__MAX_PAGE_PIXELS or raise DSOCR_LIMITS__MAX_IMAGE_PIXELS"
            )
        # Unset, the page limit is the default's 40 MP or the image limit, whichever is lower.
        self.max_page_pixels = self.max_image_pixels
        return self


class ServerSettings(_Section):
    """HTTP server."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    # Health and metrics can stay open for probes and scrapers.
    open_health: bool = True
    open_metrics: bool = True
    # The API docs (/docs, /openapi.json) follow the keys unless opened.
    open_docs: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    workers: int = Field(1, ge=1)
    # Requests one server process answers at once, streams included; more get 503 server_busy.
    # /health, /ready and /metrics are not counted and never refused (dsocr.server.app).
    max_concurrency: int = Field(256, ge=1)
    # Large upload bodies read at once, first come first served (0: no limit), and how long one
    # holds or waits for its slot at most (dsocr.server.uploads).
    upload_slots: int = Field(16, ge=0)
    upload_slot_s: float = Field(1.0, gt=0)
    # How long start-up waits for the engine before serving; a slower engine keeps loading in
    # the background while /health answers and /ready says 503.
    startup_wait_s: float = Field(5.0, ge=0)


def _data_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")


class JobSettings(_Section):
    """Background jobs (``POST /v1/jobs``): where they are kept, for how long, and how many."""

    enabled: bool = True
    # SQLite plus each job's input and finished pages; a restarted server finishes its jobs.
    dir: Path = Field(default_factory=lambda: _data_home() / "dsocr" / "jobs")
    # Finished jobs (results, inputs) are deleted this long after they end.
    ttl_s: float = Field(24 * 3600.0, gt=0)
    # Bytes all stored jobs may take; a job that would pass it is refused with 507.
    max_disk_bytes: int = Field(10 * 1024**3, ge=1)
    # Free space the disk must keep besides the jobs' own quota.
    min_free_bytes: int = Field(1024**3, ge=0)
    # Jobs not finished yet (queued or running), in total and per API key; more get 429.
    max_queued: int = Field(100, ge=1)
    max_queued_per_key: int = Field(20, ge=1)
    # Jobs running at once, and pages of one job in the engine at once. Unset, the running jobs
    # together take at most half the engine's batch (16 pages a job where the engine has no fixed
    # batch), so that interactive requests find room in the batch beside them.
    concurrency: int = Field(2, ge=1)
    window: int | None = Field(None, ge=1)
    # A running job's owner renews its lease this often; a job whose lease is this old (its
    # server was killed) is taken over by a live server, which skips the pages already done.
    lease_s: float = Field(15.0, gt=0)
    # Signs completion callbacks (Standard Webhooks); unset, callbacks go unsigned.
    webhook_secret: SecretStr | None = None
    webhook_attempts: int = Field(5, ge=1, le=20)
    webhook_backoff_s: float = Field(1.0, gt=0)


class CacheSettings(_Section):
    """The result cache of finished pages (``DSOCR_CACHE__*``; dsocr.cache, docs/serving.md)."""

    # None: on for ``dsocr serve`` and ``dsocr ocr``, off for ``dsocr batch`` (its manifest already
    # skips finished pages, and a large run would evict everything else); true/false: everywhere.
    enabled: bool | None = None
    # None: $XDG_CACHE_HOME/dsocr, else ~/.cache/dsocr.
    dir: Path | None = None
    # The stored pages' bytes; past it the least recently used go first.
    max_bytes: int = Field(1024**3, ge=0)
    # Off: a page is found only by the API key that stored it. On: by every caller.
    shared: bool = False


class RemoteSettings(_Section):
    """A dsocr server that ``dsocr ocr`` and ``dsocr batch`` send their work to (``--server``)."""

    # The server's root URL (http or https); unset or empty: the commands run a local engine.
    url: str | None = None
    api_key: SecretStr | None = None
    # Longest wait for one answer (an image's OCR through /v1/ocr).
    timeout_s: float = Field(900.0, gt=0)
    # How long an unreachable or busy server (connection refused, 429, 503: a restart) is retried.
    retry_s: float = Field(300.0, ge=0)
    # Documents sent at once by ``dsocr batch`` (a job per PDF, a request per image).
    concurrency: int = Field(4, ge=1)

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None or not url.strip():
            return None
        url = url.strip().rstrip("/")
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or rest.startswith("/"):
            raise ValueError(
                f"DSOCR_REMOTE__URL (--server) {url!r} is not a server URL; write e.g. http://gpu-host:8000"
            )
        return url


class Settings(BaseSettings):
    """All dsocr settings."""

    model_config = SettingsConfigDict(env_prefix="DSOCR_", env_nested_delimiter="__", extra="ignore")

    engine: EngineSettings = Field(default_factory=EngineSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    fetch: FetchSettings = Field(default_factory=FetchSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    jobs: JobSettings = Field(default_factory=JobSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    remote: RemoteSettings = Field(default_factory=RemoteSettings)
    debug: bool = False


def unparsable_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``DSOCR_*`` variables of list, dict, section or group settings whose value is not JSON.

    pydantic-settings decodes those values as JSON before validating, and its error names only
    the section (``engine``), not the variable; front ends use this to name it.
    """
    env = os.environ if environ is None else environ
    complex_names = set(_complex_variables(Settings, "DSOCR"))
    bad: list[str] = []
    for name, value in env.items():
        if name.upper() not in complex_names:
            continue
        try:
            json.loads(value)
        except ValueError:
            bad.append(name)
    return sorted(bad)


def _complex_variables(model: type[BaseModel], prefix: str) -> Iterator[str]:
    """The variables under ``prefix`` whose values pydantic-settings reads as JSON."""
    for field_name, info in model.model_fields.items():
        name = f"{prefix}_{field_name}".upper() if prefix == "DSOCR" else f"{prefix}__{field_name}".upper()
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield name
            yield from _complex_variables(annotation, name)
        elif get_origin(annotation) in (list, dict) or annotation in (list, dict):
            yield name
