"""What the GPU benchmarks share: a dsocr source tree, its server as a process, the peer client.

Used by ``ab_http.py`` (one tree's server against another's) and ``gpu_headline.py`` (dsocr against
vLLM's recipe and ``vllm serve``):

* :class:`Tree`: one checkout's ``src`` folder, the environment names its settings take (they
  moved between layouts), and dsocr's vLLM plugin registered for it as ``pip install`` would;
* :data:`BOOT`: runs ``python -m dsocr ARGS`` in a process where vLLM's ``AsyncLLM.generate``
  forces the length of requests asking exactly N tokens (``ignore_eos``). Dummy weights emit EOS at
  random and dsocr's HTTP API refuses ``ignore_eos``; the patch is on vLLM, dsocr runs unchanged;
* :func:`start` and :func:`stop`: a server in a process group of its own, stopped with all of it
  (vLLM's engine core included), so that the next one finds the GPU free;
* :func:`run_client`: ``bench_vllm_serve.py`` (in ``../shared/gpu``; carried to the device, where
  ``../shared`` does not travel) driving a server's ``/v1/chat/completions``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE_PIXELS = 1190 * 1684  # the client's synthetic A4 page
CLIENT_NAME = "bench_vllm_serve.py"

# ``python -c BOOT TOKENS ARGS...``: installs the length forcing when vLLM's AsyncLLM module is
# first imported (dsocr imports vLLM lazily, after setting its environment), then runs
# ``python -m dsocr ARGS``. TOKENS 0: nothing forced.
BOOT = r"""
import importlib.abc, runpy, sys

TOKENS = int(sys.argv[1])

def force(cls):
    generate = cls.generate
    def forced(self, prompt, sampling_params, *args, **kwargs):
        if getattr(sampling_params, "max_tokens", None) == TOKENS:
            sampling_params.ignore_eos = True
        return generate(self, prompt, sampling_params, *args, **kwargs)
    cls.generate = forced
    print(f"bench: requests of {TOKENS} tokens run to full length (ignore_eos)", file=sys.stderr)

class ForceOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "vllm.v1.engine.async_llm":
            return None
        for finder in sys.meta_path:
            find = None if finder is self else getattr(finder, "find_spec", None)
            spec = find(name, path, target) if find else None
            if spec is not None:
                break
        else:
            return None
        exec_module = spec.loader.exec_module
        def exec_and_force(module):
            exec_module(module)
            force(module.AsyncLLM)
        spec.loader.exec_module = exec_and_force
        return spec

if TOKENS:
    sys.meta_path.insert(0, ForceOnImport())
sys.argv = ["dsocr", *sys.argv[2:]]
runpy.run_module("dsocr", run_name="__main__", alter_sys=True)
"""

# ``python -c CLIENT_BOOT CLIENT XARGS_JSON ARGS...``: the peer client with other n-gram arguments in
# vLLM's request fields (its own ``XARGS`` are DeepSeek-OCR's 30 / 90), its code otherwise unchanged.
# Its page bodies are built in this process; its client processes only send them.
CLIENT_BOOT = r"""
import importlib.util, json, os, sys

path, xargs = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
spec = importlib.util.spec_from_file_location("bench_vllm_serve", path)
client = importlib.util.module_from_spec(spec)
sys.modules["bench_vllm_serve"] = client
spec.loader.exec_module(client)
if not isinstance(getattr(client, "XARGS", None), dict):
    raise SystemExit(f"{path} has no XARGS dict to set the n-gram arguments in")
client.XARGS = xargs
print("bench: client n-gram arguments", json.dumps(xargs), flush=True)
sys.argv = [path, *sys.argv[3:]]
client.main()
"""

# Run with a tree's PYTHONPATH: where its dsocr lives and every setting's dotted path, so that
# the environment names follow the tree's own settings layout.
PROBE = r"""
import json, typing
import dsocr, dsocr.settings as s
from pydantic import BaseModel

def section(annotation):
    for a in (annotation, *typing.get_args(annotation)):
        if isinstance(a, type) and issubclass(a, BaseModel):
            return a
    return None

def walk(model, path):
    for name, field in model.model_fields.items():
        sub = section(field.annotation)
        yield from walk(sub, [*path, name]) if sub is not None else [".".join([*path, name])]

print(json.dumps({"file": dsocr.__file__, "fields": sorted(walk(s.Settings, []))}))
"""


class Failure(Exception):
    """A server, a phase or the client failed: that measurement has no result."""


class Stopped(Failure):
    """The run was told to stop (SIGTERM): nothing more may start."""


def tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def python_path(*entries: str) -> str:
    return os.pathsep.join([*entries, *filter(None, [os.environ.get("PYTHONPATH")])])


def modes_plugin(src: Path) -> str | None:
    """``module:register`` of the tree's ``dsocr_modes`` vLLM plugin (dsocr's DeepSeek-OCR
    subclass: every mode, views built on the GPU), wherever the tree keeps it; ``None`` if none."""
    for path in sorted((src / "dsocr" / "engine").rglob("*.py")):
        text = path.read_text(errors="replace")
        if "\ndef register(" in text and "ModelRegistry.register_model" in text:
            return ".".join(path.relative_to(src).with_suffix("").parts) + ":register"
    return None


class Tree:
    """One source tree: its dsocr, and the environment names its settings understand."""

    def __init__(self, label: str, src: Path, work: Path, plugin: bool = True) -> None:
        self.label, self.src = label, src.resolve()
        if not (self.src / "dsocr" / "__init__.py").is_file():
            raise Failure(f"{label}: {src} holds no dsocr package (give a checkout's src folder)")
        self.paths = [str(self.src)]
        target = modes_plugin(self.src) if plugin else None
        if target is not None:  # an entry point, as an installed dsocr has, for vLLM's processes
            info = work / f"plugin_{label}" / "dsocr_bench_modes-0.dist-info"
            info.mkdir(parents=True, exist_ok=True)
            (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dsocr-bench-modes\nVersion: 0\n")
            (info / "entry_points.txt").write_text(f"[vllm.general_plugins]\ndsocr_modes = {target}\n")
            self.paths.append(str(info.parent))
        env = {**os.environ, "PYTHONPATH": python_path(*self.paths)}
        probe = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True)
        if probe.returncode != 0:
            raise Failure(f"{label}: reading {self.src}'s settings failed:\n{probe.stderr[-2000:]}")
        found = json.loads(probe.stdout.strip().splitlines()[-1])
        if not Path(found["file"]).resolve().is_relative_to(self.src):
            raise Failure(f"{label}: dsocr imports from {found['file']}, not from {self.src}")
        self.fields: list[str] = found["fields"]

    def env_name(self, dotted: str, required: bool = True) -> str | None:
        """``DSOCR_ENGINE__LOAD_FORMAT`` for ``engine.load_format``, or wherever the tree moved it
        (``engine.vllm.load_format``, say): the one field of that name in its section, else
        anywhere. ``a|b``: the first of two spellings that the tree has."""
        for spelling in dotted.split("|"):
            section, name = spelling.split(".", 1)[0], spelling.rsplit(".", 1)[-1]
            for candidates in (
                [f for f in self.fields if f == spelling],
                [f for f in self.fields if f.startswith(section + ".") and f.endswith("." + name)],
                [f for f in self.fields if f.endswith("." + name)],
            ):
                if len(candidates) == 1:
                    return "DSOCR_" + candidates[0].replace(".", "__").upper()
                if len(candidates) > 1:
                    break
        if required:
            raise Failure(
                f"{self.label}: no single setting {dotted!r} in {self.src} ({len(self.fields)} fields)"
            )
        print(f"note: {self.label}: setting {dotted} not found, left at its default", file=sys.stderr)
        return None

    def env(self, settings: dict[str, tuple[str, bool]], extra: Sequence[str] = ()) -> dict[str, str]:
        """This process's environment with the tree on ``PYTHONPATH`` and ``settings`` (dotted
        path: (value, required)) under the tree's names; ``extra``: ``KEY=VALUE`` on top."""
        env = {**os.environ, "PYTHONPATH": python_path(*self.paths)}
        for dotted, (value, required) in settings.items():
            name = self.env_name(dotted, required)
            if name is not None:
                env[name] = value
        for item in extra:
            key, value = item.split("=", 1)
            env[key] = value
        return env


def engine_settings(engine: str, model: str, fake_delay_s: float = 0.0) -> dict[str, tuple[str, bool]]:
    """The engine a benchmark runs: vLLM on the dummy full-size model, or the fake engine."""
    if engine == "vllm":
        return {
            "engine.kind": ("vllm", True),
            "engine.model": (model, True),
            "engine.load_format": ("dummy", True),
        }
    wanted = {"engine.kind": (engine, True)}
    if fake_delay_s:
        wanted["engine.fake.delay_s|engine.fake_delay_s"] = (str(fake_delay_s), True)
    return wanted


def server_settings(port: int, pages: int, tokens: int) -> dict[str, tuple[str, bool]]:
    """A loopback server with room for the whole load, so that no page is refused or times out:
    the benchmarks measure speed. Everything else stays at its default, but the result cache,
    which would answer the warm-up's pages again without the engine."""
    return {
        "cache.enabled": ("false", False),
        "server.host": ("127.0.0.1", True),
        "server.port": (str(port), True),
        "limits.max_tokens": (str(max(tokens, 8192)), False),
        "limits.request_timeout_s": ("3600", False),
        "limits.max_queue": (str(max(512, 2 * pages)), False),
        "limits.max_inflight_pixels": (str(max(600_000_000, 2 * (pages + 8) * PAGE_PIXELS)), False),
        "limits.admission_wait_s": ("600", False),
        "server.max_concurrency": (str(max(256, pages + 16)), False),
    }


def find_client(explicit: Path | None) -> Path:
    """The peer client: ``explicit``, else ``../shared/gpu/``, else ``.gpu/bin/`` of this checkout."""
    shared, staged = REPO.parent / "shared/gpu" / CLIENT_NAME, REPO / ".gpu/bin" / CLIENT_NAME
    candidates = [explicit] if explicit else [shared, staged]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise Failure(f"client not found: {candidates[0]} (--client; ../shared does not travel to the device)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    try:
        return status, json.loads(body or b"null")
    except ValueError:
        return status, None


def wait_ready(
    url: str, proc: subprocess.Popen[bytes], log: Path, limit_s: float, poll_s: float = 1.0
) -> Any:
    """Poll ``url`` every ``poll_s`` until it answers 200 (its JSON body, if any); fail early if
    ``proc`` exits."""
    deadline, last = time.monotonic() + limit_s, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Failure(f"server exited with status {proc.returncode} before ready; log tail:\n{tail(log)}")
        with contextlib.suppress(OSError):
            status, last = get_json(url)
            if status == 200:
                return last
        time.sleep(poll_s)
    raise Failure(f"server not ready in {limit_s:.0f} s (last {url}: {last}); log tail:\n{tail(log)}")


RUNNING: set[int] = set()  # process groups started and not yet stopped


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``cmd`` in a process group of its own (it, vLLM's engine core, their helpers), output to ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    RUNNING.add(proc.pid)
    return proc


def group_alive(pgid: int) -> bool:
    """Whether any process of the group still runs (Linux; zombies are left to their parent)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """Ctrl-C to the process, then SIGTERM and SIGKILL to its group until none of it is left: the
    next measurement needs the GPU memory of this one's engine core."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 15
        if group_alive(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
        while group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()
            time.sleep(0.2)
    proc.poll()
    RUNNING.discard(proc.pid)
    if group_alive(proc.pid):
        print(f"warning: processes of group {proc.pid} survive SIGKILL", file=sys.stderr)


def on_sigterm(*_: object) -> None:
    """A device call's time limit sends SIGTERM, and SIGKILL soon after: no time for a graceful
    stop, and a server left behind would hold the GPU for the next call."""
    for pgid in RUNNING:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    raise Stopped("stopped by SIGTERM; the running processes were killed")


def run_client(
    client: Path,
    base: str,
    model_name: str,
    pages: int,
    tokens: int,
    *,
    plain: bool,
    timeout_s: float,
    xargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The client's timed pass against ``base`` (after its 8 warm-up pages): its ``RESULT`` fields.
    ``plain``: OpenAI fields only (dsocr); else also vLLM's own (``ignore_eos``, ``vllm_xargs``:
    the client's n-gram arguments, or ``xargs`` instead)."""
    cmd = [sys.executable, str(client)]
    if xargs is not None:
        cmd = [sys.executable, "-c", CLIENT_BOOT, str(client), json.dumps(xargs)]
    cmd += ["x", "--base", base, "--model-name", model_name]
    cmd += ["--pages", str(pages), "--tokens", str(tokens), *(["--plain"] if plain else [])]
    # Its own group, like a server's: its 8 client processes go with it when the run is stopped.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    RUNNING.add(proc.pid)
    try:
        output = proc.communicate(timeout=timeout_s)[0]
    except subprocess.TimeoutExpired as e:
        raise Failure(f"client ran over {timeout_s:.0f} s") from e
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        RUNNING.discard(proc.pid)
    results = [line.split(" ", 1)[1] for line in output.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        raise Failure(f"client failed (status {proc.returncode}):\n{output[-3000:]}")
    return dict(json.loads(results[-1]))
