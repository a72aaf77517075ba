"""`import dsocr` and `import dsocr.batch` stay free of Ray (it is an optional extra)."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_batch_package_does_not_import_ray() -> None:
    code = "import sys, dsocr, dsocr.batch, dsocr.cli; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
