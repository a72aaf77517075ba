"""Jobs: OCR requests run in the background, stored on disk."""
