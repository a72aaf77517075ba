"""What a batch run has to do: find the input files, hash and open each, and ask the manifest.

* :func:`discover_inputs` — folders (recursively), globs and files → a sorted list of files.
* :func:`scan_file` — one file → its SHA-256 and page numbers, or the typed error that stops it
  (no pixels decoded: images are checked by their header, PDFs opened for their page tree).
* :func:`plan_run` — every file registered in the manifest; the pages still to do.
* :class:`PageSource` — renders one document's pages on demand (local runner and Ray workers).
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from PIL import Image

from dsocr.batch.manifest import Manifest
from dsocr.batch.names import NameAllocator, display_path
from dsocr.batch.outputs import page_json_path
from dsocr.errors import DsocrError, InvalidInput, UndecodableInput
from dsocr.inputs import Document, open_document
from dsocr.inputs.formats import sniff_format
from dsocr.inputs.images import image_header_size
from dsocr.inputs.sources import read_local_file
from dsocr.settings import LimitSettings

__all__ = [
    "INPUT_SUFFIXES",
    "DocumentPlan",
    "FileScan",
    "PageSource",
    "RunPlan",
    "discover_inputs",
    "plan_run",
    "scan_file",
]

# Files picked up when walking a folder (an explicitly named file is always taken).
INPUT_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".pdf"})
_FIELD = "inputs"


def discover_inputs(inputs: Sequence[str], *, exclude: Path | None = None) -> list[Path]:
    """Expand folders (recursively, image and PDF suffixes, hidden files skipped), globs and files.

    Paths under ``exclude`` (the output folder) are left out. Raises ``InvalidInput`` naming an
    input that is neither a file, a folder nor a glob matching anything.
    """
    found: dict[Path, None] = {}
    excluded = exclude.resolve() if exclude is not None else None

    def add(path: Path) -> None:
        resolved = path.resolve()
        if excluded is not None and resolved.is_relative_to(excluded):
            return
        found.setdefault(resolved, None)

    def walk(folder: Path) -> None:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder).parts
            if any(part.startswith(".") for part in relative):
                continue
            if path.is_file() and path.suffix.lower() in INPUT_SUFFIXES:
                add(path)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            walk(path)
        elif path.is_file():
            add(path)
        else:
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise InvalidInput(f"{item!r} is not a file or folder and matches no file", field=_FIELD)
            for match in matches:
                candidate = Path(match)
                if candidate.is_dir():
                    walk(candidate)
                elif candidate.is_file():
                    add(candidate)
    return sorted(found)


@dataclass(frozen=True, slots=True, kw_only=True)
class FileScan:
    """One input file, inspected: content hash and selected pages, or why it cannot be used."""

    path: Path
    sha256: str
    kind: Literal["image", "pdf"] | None = None
    pages: tuple[int, ...] = ()
    error: DsocrError | None = None


def scan_file(path: Path, *, limits: LimitSettings, dpi: int) -> FileScan:
    """Hash ``path`` and find its pages (1-based); errors are returned, not raised."""
    try:
        data = read_local_file(path, limits=limits, field=_FIELD).data
    except DsocrError as exc:
        # Unreadable: key it by its path, so a later run retries it.
        return FileScan(path=path, sha256="unreadable-" + _sha256(os.fsencode(path)), error=exc)
    digest = _sha256(data)
    try:
        if sniff_format(data) == "PDF":
            with open_document(data, limits=limits, dpi=dpi, field=_FIELD) as pdf:
                return FileScan(
                    path=path, sha256=digest, kind="pdf", pages=tuple(i + 1 for i in pdf.page_indices)
                )
        # An image is checked by its header only: no pixels are decoded for the plan.
        image_header_size(data, field=_FIELD)
        return FileScan(path=path, sha256=digest, kind="image", pages=(1,))
    except DsocrError as exc:
        return FileScan(path=path, sha256=digest, error=exc)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class DocumentPlan:
    """One document of the run. ``todo`` are the pages this run processes (1-based)."""

    doc_key: str
    path: Path
    sha256: str
    out_name: str
    pages: tuple[int, ...] = ()
    todo: tuple[int, ...] = ()
    error: DsocrError | None = None


@dataclass(slots=True, kw_only=True)
class RunPlan:
    """Every input of a run, after the manifest was consulted."""

    settings_key: str
    documents: list[DocumentPlan] = field(default_factory=list)
    # (file, the earlier file with the same bytes): processed once, under the first name.
    duplicates: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def pages_total(self) -> int:
        """Pages of all documents that opened."""
        return sum(len(doc.pages) for doc in self.documents)

    @property
    def pages_todo(self) -> int:
        """Pages this run sends to the engine."""
        return sum(len(doc.todo) for doc in self.documents)

    @property
    def failed_documents(self) -> list[DocumentPlan]:
        """Documents that could not be read or opened."""
        return [doc for doc in self.documents if doc.error is not None]


def plan_run(
    paths: Sequence[Path],
    *,
    manifest: Manifest,
    settings_key: str,
    out_dir: Path,
    limits: LimitSettings,
    dpi: int,
) -> RunPlan:
    """Scan every file and register it in the manifest; pages already done (with files) are skipped.

    A page marked done whose JSON file is gone (output folder cleaned) is done again.
    """
    plan = RunPlan(settings_key=settings_key)
    first_path: dict[str, Path] = {}
    names = NameAllocator(out_dir, manifest.out_names())
    for path in paths:
        scan = scan_file(path, limits=limits, dpi=dpi)
        if scan.sha256 in first_path:
            plan.duplicates.append((path, first_path[scan.sha256]))
            continue
        first_path[scan.sha256] = path
        out_name = names.name_for(path, scan.sha256, previous=manifest.out_name_of(scan.sha256))
        doc_key = f"{scan.sha256}:{settings_key}"
        common = {
            "doc_key": doc_key,
            "sha256": scan.sha256,
            "settings_key": settings_key,
            "path": display_path(path),
        }
        if scan.error is not None:
            manifest.fail_document(
                **common, out_name=out_name, reason=scan.error.code, message=scan.error.message
            )
            plan.documents.append(
                DocumentPlan(
                    doc_key=doc_key, path=path, sha256=scan.sha256, out_name=out_name, error=scan.error
                )
            )
            continue
        manifest.register_document(**common, out_name=out_name, pages=scan.pages)
        doc_dir = out_dir / out_name
        todo = tuple(
            record.page
            for record in manifest.pages(doc_key)
            if record.status != "done" or not page_json_path(doc_dir, record.page).exists()
        )
        plan.documents.append(
            DocumentPlan(
                doc_key=doc_key, path=path, sha256=scan.sha256, out_name=out_name, pages=scan.pages, todo=todo
            )
        )
    return plan


class PageSource:
    """Renders pages of one document on demand; thread-safe; opened on first use, then kept open.

    The file is read again and its hash checked, so a file changed since the scan fails its pages
    instead of mixing two versions into one document.
    """

    def __init__(self, path: Path, *, sha256: str, limits: LimitSettings, dpi: int) -> None:
        self._path = path
        self._sha256 = sha256
        self._limits = limits
        self._dpi = dpi
        self._lock = threading.Lock()
        self._document: Document | None = None
        self._closed = False

    def render(self, page: int) -> Image.Image:
        """Page ``page`` (1-based) as an RGB image (blocking)."""
        with self._lock:
            if self._closed:
                raise UndecodableInput(
                    f"{display_path(self._path)} was closed before page {page} was rendered", field=_FIELD
                )
            if self._document is None:
                self._document = self._open()
            document = self._document
        # Outside the lock: pages render in worker processes, under the render budget, several
        # of one document at once (page_image is thread-safe; closing cancels what still runs).
        return document.page_image(page - 1)

    def _open(self) -> Document:
        data = read_local_file(self._path, limits=self._limits, field=_FIELD).data
        if _sha256(data) != self._sha256:
            raise UndecodableInput(
                f"{display_path(self._path)} changed since the run started; run the batch again",
                field=_FIELD,
            )
        return open_document(data, limits=self._limits, dpi=self._dpi, field=_FIELD)

    def close(self) -> None:
        """Release the PDF, cancelling renders still running; idempotent."""
        with self._lock:
            self._closed = True
            document, self._document = self._document, None
        if document is not None:
            document.close()
