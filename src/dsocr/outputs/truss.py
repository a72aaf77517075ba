"""``truss``: the original Truss server's ``/predict`` response, key for key, plus typed additions.

The seed's keys come first (long form when the output has grounding references, short form
otherwise), then the page JSON's fields that clients of ``/predict`` read: ``blocks``,
``markdown``, ``usage``, ``finish_reason``, ``repetitive``, ``warnings``, ``timings`` and
``request_id``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dsocr import grounding
from dsocr.outputs.base import Output, RenderContext

if TYPE_CHECKING:
    from dsocr.results import PageResult

__all__ = ["OUTPUT", "TYPED_ADDITIONS"]

TYPED_ADDITIONS = ("blocks", "markdown", "usage", "finish_reason", "repetitive", "warnings", "timings")


def _page(result: PageResult, context: RenderContext) -> dict[str, Any] | None:
    from dsocr.outputs import page_json  # here: the registry in dsocr.outputs imports this module

    if result.parsed is None:
        return None
    # A preset name is echoed as the full prompt the model got; a free prompt verbatim, as the seed did.
    sent = context.prompt_as_sent
    echoed = context.prompt if sent is None or sent.strip().lower() in _preset_names() else sent
    body = grounding.legacy_fields(result.parsed, prompt=echoed, model_name=context.model)
    page = page_json(result, ("markdown", "blocks"), context)
    body.update({key: page[key] for key in TYPED_ADDITIONS})
    body["request_id"] = context.request_id
    return body


def _preset_names() -> frozenset[str]:
    from dsocr.prompts import PRESETS

    return frozenset(PRESETS)


OUTPUT = Output(
    name="truss",
    description="The original Truss /predict response (seed keys first, then typed additions).",
    page=_page,
    selectable=False,
)
