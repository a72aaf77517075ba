"""A full-size DeepSeek-OCR 2 model directory for ``load_format="dummy"`` runs, from the DeepSeek-OCR one.

    python3 bench/make_dummy_ocr2.py /root/dsocr-dummy /root/DeepSeek-OCR-2

``V1_DUMMY_DIR`` is what ``.gpu/bin/make_dummy_model.py`` writes (``config.json``, a stand-in
tokenizer with the special tokens at their real ids, ``generation_config.json``). Both models share
the tokenizer and the 3B MoE decoder (docs/models.md), so every file is copied as it is except
``config.json``, which keeps v1's language-model fields and changes what DeepSeek-OCR 2 changes:

* ``architectures: ["DeepseekOCR2ForCausalLM"]``: the class vLLM's registry maps to
  ``model_executor/models/deepseek_ocr2.py``;
* ``model_type: "deepseek_vl_v2"``: as in v1, and as the released ``config.json`` says (quoted by
  ports that parse it: openvino.genai's ``DeepseekOCR2ConfigTest``, the DeepSeek-OCR-2 plan notes
  of several vLLM ports). vLLM's ``DeepseekVLV2Config`` reads it and turns the model type into
  ``deepseek_ocr2`` itself when it sees the architecture;
* ``vision_config``: ``model_name: "deepencoderv2"``, ``image_size`` 1024 (the global view: vLLM's
  ``DeepseekOCR2ForCausalLM`` takes its base size from it), ``width`` with ``sam_vit_b`` (12 layers,
  768 wide, 12 heads, global attention at 2/5/8/11, downsample channels 512/1024) and
  ``qwen2-0-5b`` ``{"dim": 896}``, as in the released config. vLLM builds both encoders from
  constants (``ImageEncoderViT(depth=12, embed_dim=768, ..., last_conv_output=896)`` and
  ``build_qwen2_decoder_as_encoder()``: 24 layers, 896 wide, 14 heads, 2 KV heads), not from here;
* ``projector_config``: ``linear`` from 896 (the Qwen2 encoder's width) to 1280 (the decoder's),
  as in the released config and vLLM's ``MlpProjector`` with ``projector_type="linear"``.

Weights are random: the text is meaningless, force output lengths (``ignore_eos``) to measure.
Name the output directory ``DeepSeek-OCR-2`` (``/root/DeepSeek-OCR-2``): dsocr trees that do not
read ``config.json``'s architectures yet recognise DeepSeek-OCR 2 by the directory's last path
component. Standard library only, so that it runs on the device's bare ``python3``.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

V1_ARCH, V2_ARCH = "DeepseekOCRForCausalLM", "DeepseekOCR2ForCausalLM"

VISION_V2: dict[str, Any] = {
    "image_size": 1024,
    "mlp_ratio": 3.7362,
    "model_name": "deepencoderv2",
    "model_type": "vision",
    "width": {
        "qwen2-0-5b": {"dim": 896},
        "sam_vit_b": {
            "downsample_channels": [512, 1024],
            "global_attn_indexes": [2, 5, 8, 11],
            "heads": 12,
            "layers": 12,
            "width": 768,
        },
    },
}
PROJECTOR_V2: dict[str, Any] = {
    "input_dim": 896,
    "model_type": "mlp_projector",
    "n_embed": 1280,
    "projector_type": "linear",
}


def v2_config(v1: dict[str, Any]) -> dict[str, Any]:
    """DeepSeek-OCR 2's ``config.json`` from DeepSeek-OCR's: the decoder's fields kept."""
    if V1_ARCH not in v1.get("architectures", []):
        raise SystemExit(f"not a DeepSeek-OCR config (architectures {v1.get('architectures')})")
    out = dict(v1)
    out.update(
        architectures=[V2_ARCH],
        model_type="deepseek_vl_v2",
        vision_config=VISION_V2,
        projector_config=PROJECTOR_V2,
    )
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = Path(argv[0]), Path(argv[1])
    v1 = json.loads((src / "config.json").read_text())
    config = v2_config(v1)
    dst.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.name != "config.json":
            shutil.copy2(path, dst / path.name)
    (dst / "config.json").write_text(json.dumps(config, indent=1) + "\n")
    print(f"model dir {dst}: {V2_ARCH}, tokenizer and decoder of {src}")
    if dst.resolve().name != "DeepSeek-OCR-2":
        print("note: name the directory DeepSeek-OCR-2 for dsocr trees that go by the name", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
