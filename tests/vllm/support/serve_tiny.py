"""``dsocr`` CLI with the test-only vision-tower shrink applied where vLLM forks the model process.

vLLM forks the engine core from this process on its CPU build, so the patch reaches the model.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny_vision_patch

tiny_vision_patch.apply()

if __name__ == "__main__":
    from dsocr.cli import app

    app(prog_name="dsocr")
