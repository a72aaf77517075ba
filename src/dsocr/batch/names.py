"""Names of a batch run's files: each document's folder under OUT, and input paths as shown.

A document's folder is named after its file, and file names are data nobody checked: ``...png``
has the stem ``..``, a name may hold newlines or escape sequences, start with a dash, be a Windows
device name (``CON``), be longer than the file system allows once ``.md`` and a temporary suffix
are added, or not be UTF-8 at all. :func:`safe_stem` turns any stem into a portable folder name;
:class:`NameAllocator` keeps names unique and confined to OUT. Names are chosen in input order
and remembered by the manifest, so the same inputs get the same folders on every run.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Mapping
from itertools import chain, count
from pathlib import Path

__all__ = ["MAX_NAME_BYTES", "NameAllocator", "display_path", "printable", "safe_stem"]

# Linux allows 255 bytes per name; a document's temporary files add 17 (".NAME.md.XXXXXXXX.tmp").
MAX_NAME_BYTES = 200
FALLBACK_NAME = "document"
# Files a run keeps at the top of OUT (compared case-insensitively); a folder must not take them.
_RUN_FILES = frozenset(
    {
        "summary.json",
        "manifest.sqlite",
        "manifest.sqlite-wal",
        "manifest.sqlite-shm",
        "manifest.sqlite-journal",
    }
)
# Device names Windows refuses as a file name, with any extension.
_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{port}{n}" for port in ("COM", "LPT") for n in "0123456789¹²³"}
)
_NOT_PORTABLE = re.compile(r'[/\\:*?"<>|]')
_HASH_LENGTHS = (12, 20, 64)


def display_path(path: Path | str) -> str:
    """``path`` as valid UTF-8 text: bytes that are not UTF-8 become U+FFFD (for JSON and SQLite)."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def printable(text: str) -> str:
    """``text`` for a terminal line: control characters (newlines, escape sequences) escaped."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if _is_control(char) else char for char in text
    )


def _is_control(char: str) -> bool:
    # Cc: C0/C1 controls; Cf: invisible format characters such as U+202E (right-to-left override);
    # Cs: lone surrogates (undecodable bytes of a file name).
    return unicodedata.category(char) in ("Cc", "Cf", "Cs")


def _fit(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` UTF-8 bytes, never cutting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def safe_stem(stem: str) -> str:
    """A portable folder name for a file stem; idempotent (a safe name maps to itself).

    Undecodable bytes, control characters and characters Windows forbids become ``_``; leading dots
    and dashes become one ``_`` (no hidden folders, nothing a shell takes for an option); trailing
    dots and spaces go; Windows device names and OUT's own files get a ``_`` in front; the result
    is cut to ``MAX_NAME_BYTES`` bytes of UTF-8; an empty result is ``document``.
    """
    text = display_path(stem)
    text = "".join("_" if char == "\ufffd" or _is_control(char) else char for char in text)
    text = _NOT_PORTABLE.sub("_", text).strip(" ")
    stripped = text.lstrip(".-")
    if stripped != text:
        text = "_" + stripped if stripped else ""
    text = _fit(text, MAX_NAME_BYTES).rstrip(". ")
    if not text:
        return FALLBACK_NAME
    if text.split(".")[0].rstrip(" ").upper() in _WINDOWS_DEVICES or text.casefold() in _RUN_FILES:
        text = _fit("_" + text, MAX_NAME_BYTES).rstrip(". ")
    return text


def _fold(name: str) -> str:
    """Names that one case-insensitive file system (macOS, Windows) would take for one folder."""
    return unicodedata.normalize("NFC", name).casefold()


class NameAllocator:
    """Hands out document folder names under ``out_dir``: safe, unique per content, confined.

    ``taken`` maps the names earlier runs gave out (from the manifest) to the content they hold.
    """

    def __init__(self, out_dir: Path, taken: Mapping[str, str]) -> None:
        self._root = out_dir.resolve()
        self._owners = {_fold(name): key for name, key in taken.items()}

    def name_for(self, path: Path, key: str, *, previous: str | None = None) -> str:
        """The folder for the content ``key`` (a SHA-256, or a key of an unreadable file).

        ``previous`` is the name an earlier run gave this content: kept when it is still safe,
        so a resumed run finds its pages. Otherwise the file's stem, or stem-<hash> when another
        content has that name.
        """
        if previous is not None and safe_stem(previous) == previous and self._usable(previous, key):
            return self._claim(previous, key)
        base = safe_stem(path.stem)
        digest = key.rsplit("-", 1)[-1]  # "unreadable-<hex>" → "<hex>"
        hashed = (f"-{digest[:length]}" for length in _HASH_LENGTHS)
        numbered = (f"-{digest[:12]}-{n}" for n in count(2))  # only if full hashes clash too
        for suffix in chain([""], hashed, numbered):
            name = self._with_suffix(base, suffix)
            if self._usable(name, key):
                return self._claim(name, key)
        raise AssertionError("unreachable: the numbered names never run out")

    @staticmethod
    def _with_suffix(base: str, suffix: str) -> str:
        return safe_stem(_fit(base, MAX_NAME_BYTES - len(suffix.encode("utf-8"))) + suffix)

    def _usable(self, name: str, key: str) -> bool:
        owner = self._owners.get(_fold(name))
        if owner is not None and owner != key:
            return False
        # Belt and braces: the folder must be a direct child of OUT, also after following links.
        return (self._root / name).resolve().parent == self._root

    def _claim(self, name: str, key: str) -> str:
        self._owners[_fold(name)] = key
        return name
