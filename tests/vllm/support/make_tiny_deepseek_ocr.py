#!/usr/bin/env python3
# ruff: noqa  # a standalone helper, kept as first written (not linted)
"""Build a tiny DeepSeek-OCR model directory that vLLM can load offline.

Writes config.json (architecture DeepseekOCRForCausalLM, model_type deepseek_vl_v2,
tiny DeepSeek-V2 MoE language model), tokenizer.json / tokenizer_config.json /
special_tokens_map.json (a small byte-level BPE tokenizer trained on an embedded
corpus, with the DeepSeek-OCR special tokens), and optionally random weights
(--weights), see make_tiny_weights.py.

Note: the vision tower (SAM ViT-B + CLIP-L/14, ~400M params) is hard-coded in
vllm/model_executor/models/deepseek_ocr.py; only the language model and the
projector output size (n_embed == hidden_size) can be made tiny from config.json.

--v2 writes DeepSeek-OCR 2 instead (architecture DeepseekOCR2ForCausalLM, module
deepseek_ocr2.py): same tokenizer and language model; the projector reads the 896-wide
query outputs of its Qwen2 "decoder as encoder" (projector input_dim 896), and
vision_config.image_size 1024 is read (the global view's side in the pixel schema).
Name the directory .../DeepSeek-OCR-2 so that dsocr picks the v2 profile by name.

usage: python make_tiny_deepseek_ocr.py OUT_DIR [--v2] [--hidden 128] [--layers 2]
       [--experts 4] [--vocab 1024]
"""

import argparse
import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# Same order as the real tokenizer (ids 128815..128822 there), placed at the end here.
OCR_TOKENS = ["<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>", "<td>", "</td>"]
CHAT_TOKENS = ["<|User|>", "<|Assistant|>"]

CORPUS = [
    "Convert the document to markdown.",
    "Free OCR.",
    "Parse the figure.",
    "Extract the text in the image.",
    "Locate <|ref|>the title<|/ref|> in the image.",
    "# Title\n\n## Section 1\n\nSome paragraph text with numbers 0123456789.",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "<|det|>[[12, 34, 560, 780]]<|/det|>",
    "text, title, table, image, figure, caption, header, footer, formula",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX.",
    "\\[ E = mc^2 \\] and $x_1 + y^2$ and \\frac{a}{b}",
]


def build_tokenizer(out_dir: str, vocab_size: int) -> int:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    n_added = len(OCR_TOKENS) + len(CHAT_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2 as in the real tokenizer
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    # <image>, <|ref|> ... are added tokens (not in special_tokens_map) like the real one.
    tok.add_tokens(OCR_TOKENS)
    tok.add_special_tokens(CHAT_TOKENS)
    # like LlamaTokenizerFast with add_bos_token=True: encode() prepends BOS (id 0)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, 0)]
    )
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    n = tok.get_vocab_size(with_added_tokens=True)

    tok_cfg = {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": 8192,
        "padding_side": "left",
        "tokenizer_class": "LlamaTokenizerFast",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tok_cfg, f, indent=2, ensure_ascii=False)
    with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
        json.dump(
            {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "additional_special_tokens": CHAT_TOKENS},
            f,
            indent=2,
            ensure_ascii=False,
        )
    return n


def build_config(out_dir, vocab_size, hidden, layers, experts, heads, topk, v2=False):
    lm = {
        "architectures": ["DeepseekV2ForCausalLM"],
        "bos_token_id": 0,
        "eos_token_id": 1,
        "first_k_dense_replace": 1,  # layer 0 dense MLP, layers >=1 MoE
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "kv_lora_rank": None,
        "lm_head": True,
        "max_position_embeddings": 8192,
        "moe_intermediate_size": hidden // 2,
        "n_group": 1,
        "n_routed_experts": experts,
        "n_shared_experts": 1,
        "num_attention_heads": heads,
        "num_experts_per_tok": topk,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "q_lora_rank": None,
        "qk_nope_head_dim": 0,  # 0/0 -> plain MHA (DeepseekAttention), no MLA
        "qk_rope_head_dim": 0,
        "rm_head": False,
        "topk_group": 1,
        "topk_method": "greedy",
        "torch_dtype": "bfloat16",
        "use_mla": False,
        "v_head_dim": 0,
        "vocab_size": vocab_size,
    }
    cfg = {
        "architectures": ["DeepseekOCRForCausalLM"],
        "model_type": "deepseek_vl_v2",
        "candidate_resolutions": [[1024, 1024]],
        "global_view_pos": "head",
        "tile_tag": "2D",
        "torch_dtype": "bfloat16",
        "language_config": lm,
        "projector_config": {
            "input_dim": 2048,
            "model_type": "mlp_projector",
            "n_embed": hidden,
            "projector_type": "linear",
        },
        # informational only: vLLM hard-codes SAM ViT-B + CLIP-L/14
        "vision_config": {
            "image_size": 1024,
            "mlp_ratio": 3.7362,
            "model_name": "deeplip_b_l",
            "model_type": "vision",
            "width": {
                "clip-l-14-224": {
                    "heads": 16,
                    "image_size": 224,
                    "layers": 24,
                    "patch_size": 14,
                    "width": 1024,
                },
                "sam_vit_b": {
                    "downsample_channels": [512, 1024],
                    "global_attn_indexes": [2, 5, 8, 11],
                    "heads": 12,
                    "layers": 12,
                    "width": 768,
                },
            },
        },
        # top-level mirrors of LM fields, as in the real config.json
        "bos_token_id": 0,
        "eos_token_id": 1,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "max_position_embeddings": 8192,
        "vocab_size": vocab_size,
    }
    if v2:
        cfg["architectures"] = ["DeepseekOCR2ForCausalLM"]
        # SAM's last conv gives 896 channels, the Qwen2 encoder's width; only its query outputs
        # reach the projector (ref §9.1: Linear(896, 1280) in the real model).
        cfg["projector_config"]["input_dim"] = 896
        # informational except image_size (vLLM hard-codes SAM + the 24-layer Qwen2 encoder)
        cfg["vision_config"] = {
            "image_size": 1024,
            "model_name": "deepencoderv2",
            "model_type": "vision",
            "width": {
                "qwen2-0-5b": {
                    "dim": 896,
                    "heads": 14,
                    "kv_heads": 2,
                    "layers": 24,
                    "intermediate_size": 4864,
                },
                "sam_vit_b": {
                    "downsample_channels": [512, 896],
                    "global_attn_indexes": [2, 5, 8, 11],
                    "heads": 12,
                    "layers": 12,
                    "width": 768,
                },
            },
        }
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 0, "eos_token_id": 1, "do_sample": False}, f, indent=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out_dir")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--v2", action="store_true", help="DeepSeek-OCR 2 (DeepseekOCR2ForCausalLM)")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    n = build_tokenizer(a.out_dir, a.vocab)
    # vocab_size == len(tokenizer): random weights can only sample decodable ids
    build_config(a.out_dir, n, a.hidden, a.layers, a.experts, a.heads, a.topk, v2=a.v2)
    print(f"wrote {a.out_dir}: v2={a.v2} vocab={n} hidden={a.hidden} layers={a.layers} experts={a.experts}")


if __name__ == "__main__":
    main()
