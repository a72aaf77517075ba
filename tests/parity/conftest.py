"""Parity fixtures: the servers of each configuration (started once, when first needed) and the
doors onto them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from doors import BatchDoor, ChatDoor, CliDoor, Door, NativeDoor, OpenDoor, PredictDoor
from parity_deployments import Config, Deployments


@pytest.fixture(scope="session")
def deployments(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployments]:
    started = Deployments(tmp_path_factory.mktemp("parity"))
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def open_door(deployments: Deployments, tmp_path: Path) -> OpenDoor:
    """``open_door(name, config)``: the door called ``name`` onto servers (or processes) run with
    ``config``."""

    def open_(name: str, config: Config) -> Door:
        if name == "native":
            return NativeDoor(name, deployments.server(config), multipart=False)
        if name == "native-multipart":
            return NativeDoor(name, deployments.server(config), multipart=True)
        if name == "predict":
            return PredictDoor(name, deployments.server(config))
        if name == "chat":
            return ChatDoor(name, deployments.server(config), stream=False)
        if name == "chat-stream":
            return ChatDoor(name, deployments.server(config), stream=True)
        if name == "truss-predict":
            return PredictDoor(name, deployments.truss(config), path="/v1/models/model:predict")
        if name == "truss-chat":
            return ChatDoor(name, deployments.truss(config), stream=False)
        if name == "truss-chat-stream":
            return ChatDoor(name, deployments.truss(config), stream=True)
        if name == "cli":
            return CliDoor(name, tmp_path, config.env)
        if name == "batch":
            return BatchDoor(name, tmp_path, config.env)
        raise ValueError(f"no door called {name!r}")

    return open_
