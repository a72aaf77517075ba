"""The seed README's `from visualizer import DeepSeekOCRVisualizer` still works from truss/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TRUSS_DIR = Path(__file__).resolve().parents[2] / "truss"

# The README's example, verbatim in spirit: load image, visualise, decode the base64 PNG.
SCRIPT = """
import base64, io
from PIL import Image
from visualizer import DeepSeekOCRVisualizer

image = Image.new("RGB", (300, 200), "white")
ocr_result = {
    "raw_output": "<|ref|>title<|/ref|><|det|>[[100, 100, 900, 400]]<|/det|>\\n# Hi\\n",
    "has_bounding_boxes": True,
}
viz_result = DeepSeekOCRVisualizer().create_visualization(image, ocr_result)
viz_image = Image.open(io.BytesIO(base64.b64decode(viz_result["visualization"])))
print(viz_image.size, sorted(viz_result))
"""


def test_seed_import_path_works_from_the_truss_directory() -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=TRUSS_DIR, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0].startswith("(300, 200)")
    for key in ("visualization", "geometric_visualization", "has_bounding_boxes", "has_geometric_elements"):
        assert key in done.stdout
