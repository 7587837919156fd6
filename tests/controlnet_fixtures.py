"""Tiny models and CLI overrides for the ControlNet tests (32 px, channels 8/16); the data is conftest's ``toy_pairs``."""

from __future__ import annotations

import json
from pathlib import Path

# No wall-time budget: the LR schedule then depends on steps only, so reruns give the same weights.
TINY_BASE = [
    "vae.block_out_channels=[8,16,16]", "vae.latent_channels=4", "vae.max_steps=4", "vae.batch_size=4",
    "unet.block_out_channels=[16,32]", "unet.cross_attention=[false,true]", "unet.layers_per_block=1",
    "unet.cross_attention_dim=16", "unet.attention_head_dim=8", "unet.context_tokens=2",
    "unet.max_steps=4", "unet.batch_size=4", "checkpoint_every=2", "warmup_steps=1", "max_minutes=null",
]  # fmt: skip
TINY_CONTROLNET = ["max_steps=4", "batch_size=4", "warmup_steps=1", "lr=3e-3", "checkpoint_every=2", "max_minutes=null",
                   "sampling.steps=3", "sampling.batch_size=4"]  # fmt: skip


def tiny_sd_checkpoint(root: Path) -> Path:
    """A randomly initialised Stable-Diffusion-layout checkpoint (as diffusers' own tests build)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "aerial</w>": 2, "photograph</w>": 3}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=8)
    tok.save_pretrained(root / "tokenizer")
    text = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=16, intermediate_size=32,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=8,
    ))  # fmt: skip
    text.save_pretrained(root / "text_encoder")
    AutoencoderKL(
        block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8, layers_per_block=1,
    ).save_pretrained(root / "vae")  # fmt: skip
    UNet2DConditionModel(
        sample_size=4, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=8, norm_num_groups=8,
    ).save_pretrained(root / "unet")  # fmt: skip
    DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon").save_pretrained(root / "scheduler")
    return root
