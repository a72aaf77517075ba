# ruff: noqa  # a standalone helper, kept as first written (not linted)
"""OPTIONAL speed-up for CPU tests: shrink DeepSeek-OCR's hard-coded vision tower.

vLLM builds SAM ViT-B (12 blocks, 768 wide) + CLIP-L/14 (24 layers) regardless of
config.json, and on 2 CPU cores that tower is ~all of a request's time. Calling
apply() before the model is constructed (i.e. in the process that builds the model:
the test process itself when VLLM_ENABLE_V1_MULTIPROCESSING=0) replaces it with
SAM 1 block x 192 wide + CLIP 1 layer. Every other part of the vLLM path (processor,
image-token expansion, scheduler, encoder cache, projector, embedding merge, MoE LM,
sampler, logits processors, detokenizer) is unchanged; the number of image tokens is
unchanged (SAM output grid and CLIP width stay the same).

Only valid with load_format="dummy" (the random checkpoint from make_tiny_weights.py
has the full-size tower).
"""


def apply(sam_dim=192, sam_heads=3, sam_depth=1, clip_layers=1):
    from vllm.model_executor.models import deepencoder, deepseek_ocr

    def tiny_sam():
        return deepencoder._build_sam(
            encoder_embed_dim=sam_dim,
            encoder_depth=sam_depth,
            encoder_num_heads=sam_heads,
            encoder_global_attn_indexes=[sam_depth - 1],
        )

    orig_cfg = deepseek_ocr.CLIPVisionConfig

    def tiny_clip_config(**kw):
        kw["num_hidden_layers"] = clip_layers
        return orig_cfg(**kw)

    deepseek_ocr.build_sam_vit_b = tiny_sam
    deepseek_ocr.CLIPVisionConfig = tiny_clip_config
