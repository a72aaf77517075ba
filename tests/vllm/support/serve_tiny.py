"""``dsocr`` CLI with the test-only vision-tower shrink applied where vLLM forks the model process.

vLLM's CPU build starts each engine core with the ``spawn`` method, which re-runs this script
(as ``__mp_main__``) in the child: the patch reaches the model there. An engine built inside
pytest gets it through support/tiny_worker.py instead.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import tiny_vision_patch

tiny_vision_patch.apply()

if __name__ == "__main__":
    from dsocr.cli import app

    app(prog_name="dsocr")
