"""Drawing from a server's thread pool: same pictures as drawing alone, no pyplot state."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

from dsocr.grounding import parse
from dsocr.render.figure import draw_geometry
from dsocr.render.overlay import draw_blocks

GEOMETRY = (
    "{'Line': {'line': ['(0,0) -- (8,0)', '(8,0) -- (4,6)'], 'line_type': ['-', '--'], "
    "'line_endpoint': ['A: (0,0)', 'B: (8,0)', 'C: (4,6)']}, "
    "'Circle': {'circle_center': ['O: (4,2)'], 'radius': [2]}}"
)
RAW = "<|ref|>title<|/ref|><|det|>[[100, 100, 900, 300]]<|/det|>\n# T\n\n"


def test_concurrent_drawing_gives_the_same_pictures_as_sequential() -> None:
    geometry = parse(GEOMETRY, width=1, height=1).geometry
    assert geometry is not None
    page = Image.new("RGB", (400, 300), "white")
    blocks = parse(RAW, width=400, height=300).blocks

    def both(_: int) -> tuple[bytes, bytes]:
        return draw_geometry(geometry), draw_blocks(page, blocks).tobytes()  # type: ignore[arg-type]

    alone = both(0)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(both, range(8)))
    assert all(result == alone for result in results)


def test_geometry_drawing_never_touches_pyplot() -> None:
    code = (
        "import sys\n"
        "from dsocr.visualize import DeepSeekOCRVisualizer\n"
        f"assert DeepSeekOCRVisualizer().create_geometric_visualization({GEOMETRY!r})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
