"""``python -m dsocr`` runs the CLI."""

from dsocr.cli import main

main()
