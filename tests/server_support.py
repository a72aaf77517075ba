"""Real servers on loopback for the e2e, web and CLI tests.

* :func:`running_server` — ``create_app`` under uvicorn in a thread, on a free port.
* :func:`dsocr_serve` — ``python -m dsocr serve`` as a process, as users start it.
* :func:`wait_ready` — poll ``/ready`` until 200, failing early if the process died.
* :func:`dsocr_serve_with_env` — ``dsocr serve`` as a process with given ``DSOCR_*`` settings.
* :func:`truss_docker_server` — the Truss deployment as Truss's image runs it (its proxy config in
  nginx, in front of the config's ``start_command``), without docker.
"""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import uvicorn
from fastapi import FastAPI

from dsocr.engine.fake import FakeEngine
from dsocr.server.app import create_app
from dsocr.settings import Settings


@dataclass(frozen=True)
class Server:
    """A running in-process server: its root URL and the engine behind it."""

    url: str
    engine: FakeEngine
    app: FastAPI | None = None  # in-process servers: the app, for checks of its state

    @property
    def base_url(self) -> str:
        """The OpenAI client's base URL."""
        return f"{self.url}/v1"


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_server(settings: Settings, engine: FakeEngine) -> Iterator[Server]:
    """uvicorn in a thread on a free loopback port; stopped and joined on exit."""
    # The socket is bound here and handed to uvicorn, so no other process can take the port.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    app = create_app(settings, engine=engine)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="none")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield Server(url=f"http://127.0.0.1:{port}", engine=engine, app=app)
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def wait_ready(
    base: str,
    *,
    process: subprocess.Popen[Any] | None = None,
    output: Callable[[], str] = lambda: "",
    timeout_s: float = 60,
    headers: dict[str, str] | None = None,
) -> None:
    """Poll ``base``/ready (with ``headers``) until it answers 200; ``output`` explains a process
    that exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {output()}")
        try:
            if httpx.get(f"{base}/ready", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{base} did not become ready in {timeout_s} s")


@contextmanager
def dsocr_serve(
    *args: str,
    stdout: IO[Any] | int = subprocess.PIPE,
    stderr: IO[Any] | int = subprocess.PIPE,
    output: Callable[[], str] | None = None,
    timeout_s: float = 60,
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``python -m dsocr serve --port P ARGS…`` until ready; yields (root URL, process).

    The developer's ``DSOCR_*`` variables are not passed on. On exit the process is terminated
    (killed after 20 s).
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "dsocr", "serve", "--port", str(port), *args],
        stdout=stdout,
        stderr=stderr,
        text=True,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"

    def exited_output() -> str:
        if output is not None:
            return output()
        return process.stderr.read() if process.stderr is not None else ""

    try:
        wait_ready(base, process=process, output=exited_output, timeout_s=timeout_s)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _stop(process: subprocess.Popen[Any]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def dsocr_serve_with_env(
    env: Mapping[str, str],
    *args: str,
    log: Path,
    timeout_s: float = 60,
    ready_headers: dict[str, str] | None = None,
    port: int | None = None,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m dsocr serve --port P ARGS…`` with the ``DSOCR_*`` variables of ``env`` and no
    others, until ready; yields (root URL, process). Its output goes to ``log`` (a pipe nobody
    reads would fill up and stall a long-lived server). ``ready_headers`` go with the readiness
    polls (an API key where health is closed). ``port``: a given one (a server started again
    where its clients expect it), else a free one."""
    port = port if port is not None else free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "dsocr", "serve", "--port", str(port), *args],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**clean, **env},
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(
            base,
            process=process,
            output=lambda: log.read_text(errors="replace"),
            timeout_s=timeout_s,
            headers=ready_headers,
        )
        yield base, process
    finally:
        _stop(process)


TRUSS_DIR = Path(__file__).resolve().parents[1] / "truss"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
)
# An nginx main configuration around Truss's proxy.conf (a conf.d include in the image).
_NGINX_CONF = """
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{}}
http {{
    include {work}/proxy.conf;
}}
"""


@dataclass(frozen=True)
class TrussProxy:
    """A running Truss ``docker_server`` deployment: Truss's proxy URL and the config it came from."""

    url: str
    config: Any  # truss.base.truss_config.TrussConfig


def render_truss_proxy(work: Path, server_port: int) -> tuple[Any, Any, int]:
    """Truss's own nginx configuration for truss/config.yaml, written into ``work`` with the model
    server on ``server_port`` and the proxy on a free loopback port instead of 8080; returns the
    config, the config as rendered, and the proxy's port."""
    from truss.base.truss_config import TrussConfig
    from truss.contexts.image_builder.serving_image_builder import generate_docker_server_nginx_config

    config = TrussConfig.from_yaml(TRUSS_DIR / "config.yaml")
    assert config.docker_server is not None
    rendered = config.model_copy(
        update={"docker_server": config.docker_server.model_copy(update={"server_port": server_port})}
    )
    generate_docker_server_nginx_config(work, rendered)
    proxy_port = free_port()
    proxy = (work / "proxy.conf").read_text(encoding="utf-8")
    assert proxy.count("listen 8080;") == 1
    (work / "proxy.conf").write_text(proxy.replace("listen 8080;", f"listen 127.0.0.1:{proxy_port};"))
    (work / "nginx.conf").write_text(_NGINX_CONF.format(work=work))
    return config, rendered, proxy_port


@contextmanager
def truss_docker_server(work: Path, env: Mapping[str, str], *, timeout_s: float = 60) -> Iterator[TrussProxy]:
    """truss/config.yaml served as Truss's image serves it, on free loopback ports.

    For ``docker_server`` Truss renders ``proxy.conf`` (nginx: Baseten's predict, readiness and
    liveness paths mapped onto the config's endpoints, every other path forwarded) and a
    supervisord program running the config's ``start_command``. Both are rendered here by the
    installed truss package; the command runs with the config's environment, then ``env`` on top
    (the ``DSOCR_*`` settings under test), and nginx runs the proxy. The one change: nginx listens
    on a free loopback port instead of 8080. Needs nginx (``NGINX``).
    """
    from truss.contexts.image_builder.serving_image_builder import generate_docker_server_supervisord_config

    if NGINX is None:
        raise RuntimeError("nginx is not installed")
    # Free ports instead of 8000 (server_port, DSOCR_SERVER__PORT) and 8080 (Truss's proxy).
    server_port = free_port()
    config, rendered, proxy_port = render_truss_proxy(work, server_port)
    generate_docker_server_supervisord_config(work, rendered)
    supervisord = configparser.ConfigParser()
    supervisord.read(work / "supervisord.conf")
    command = shlex.split(supervisord["program:model-server"]["command"])

    server_env = {k: v for k, v in os.environ.items() if not k.startswith("DSOCR_")}
    server_env.update(config.environment_variables)
    server_env.update(env)
    server_env.update(
        {
            "DSOCR_SERVER__PORT": str(server_port),
            # `dsocr` on PATH is this environment's, as it is the image's after the build command.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), server_env.get("PATH", "")]),
        }
    )
    server_log, nginx_log = work / "server.log", work / "nginx-error.log"
    with server_log.open("wb") as log:
        server = subprocess.Popen(command, env=server_env, stdout=log, stderr=subprocess.STDOUT)
    nginx = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(work / "nginx.conf"), "-e", str(nginx_log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{proxy_port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            for process in (server, nginx):
                if process.poll() is not None:
                    logs = [p.read_text(errors="replace") for p in (server_log, nginx_log) if p.exists()]
                    raise AssertionError(
                        f"{process.args!r} exited with {process.returncode}:\n" + "\n".join(logs)
                    )
            try:
                if httpx.get(f"{url}/v1/models/model", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{url}/v1/models/model did not answer 200 in {timeout_s} s")
            time.sleep(0.1)
        yield TrussProxy(url=url, config=config)
    finally:
        _stop(nginx)
        _stop(server)
