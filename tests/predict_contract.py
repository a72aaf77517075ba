"""The seed Truss server's ``/predict`` response keys, in its order: the contract old clients rely on.

Written down once here (from the seed's code, not from dsocr's) for the grounding, API and e2e tests.
"""

from __future__ import annotations

# Output with grounding references.
SEED_LONG_KEYS = [
    "extracted_text",
    "raw_output",
    "references",
    "image_references",
    "other_references",
    "image_size",
    "prompt_used",
    "model_name",
    "has_bounding_boxes",
]
# Output without any.
SEED_SHORT_KEYS = ["extracted_text", "image_size", "prompt_used", "model_name"]
# What dsocr adds after the seed's keys.
TYPED_ADDITIONS = {
    "blocks",
    "markdown",
    "usage",
    "finish_reason",
    "repetitive",
    "warnings",
    "timings",
    "request_id",
}
