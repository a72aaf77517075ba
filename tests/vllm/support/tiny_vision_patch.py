# ruff: noqa  # a standalone helper, kept as first written (not linted)
"""OPTIONAL speed-up for CPU tests: shrink DeepSeek-OCR's hard-coded vision towers.

vLLM builds SAM ViT-B (12 blocks, 768 wide) + CLIP-L/14 (24 layers) regardless of
config.json, and on 2 CPU cores that tower is ~all of a request's time. Calling
apply() before the model is constructed (i.e. in the process that builds the model:
the test process itself when VLLM_ENABLE_V1_MULTIPROCESSING=0) replaces it with
SAM 1 block x 192 wide + CLIP 1 layer. Every other part of the vLLM path (processor,
image-token expansion, scheduler, encoder cache, projector, embedding merge, MoE LM,
sampler, logits processors, detokenizer) is unchanged; the number of image tokens is
unchanged (SAM output grid and CLIP width stay the same).

DeepSeek-OCR 2 (deepseek_ocr2.py) gets the same SAM shrink (its last conv still gives
896 channels) and a 1-layer Qwen2 "decoder as encoder" (still 896 wide with 14/2 heads,
FFN 1024 instead of 4864, a 16-entry vocabulary whose embedding it deletes anyway).
Its token grid is unchanged: SAM still turns a 1024² view into 16x16 and a 768² tile
into 12x12, and the encoder keeps one learned query per grid cell (query_1024 /
query_768), whose outputs are the view's tokens.

Only valid with load_format="dummy" (the random checkpoint from make_tiny_weights.py
has the full-size tower).
"""


def apply(sam_dim=192, sam_heads=3, sam_depth=1, clip_layers=1, qwen2_layers=1, qwen2_ffn=1024):
    from vllm.model_executor.models import deepencoder, deepencoder2, deepseek_ocr, deepseek_ocr2

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

    # v2: the originals come from their own modules, so applying twice changes nothing more.
    def tiny_v2_sam(**kw):
        kw.update(
            depth=sam_depth, embed_dim=sam_dim, num_heads=sam_heads, global_attn_indexes=(sam_depth - 1,)
        )
        return deepencoder.ImageEncoderViT(**kw)

    class TinyQwen2Decoder(deepencoder2.CustomQwen2Decoder):
        def __init__(self, **kw):
            kw["vocab_size"] = 16
            super().__init__(**kw)

    def tiny_qwen2():
        # Qwen2Decoder2Encoder passes no vocab_size: swap the class it builds for the call.
        orig_decoder = deepencoder2.CustomQwen2Decoder
        deepencoder2.CustomQwen2Decoder = TinyQwen2Decoder
        try:
            return deepencoder2.build_qwen2_decoder_as_encoder(
                decoder_layer=qwen2_layers, intermediate_size=qwen2_ffn
            )
        finally:
            deepencoder2.CustomQwen2Decoder = orig_decoder

    deepseek_ocr2.ImageEncoderViT = tiny_v2_sam
    deepseek_ocr2.build_qwen2_decoder_as_encoder = tiny_qwen2
