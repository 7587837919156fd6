"""Tiny twins of the shipped pipeline configs: the same config file, with `--set`s that shrink
every model and budget (32 px, channels 8/16, a few steps), so each runs end to end in seconds."""

TINY_MODELS = {
    "landcover.max_minutes": "null",
    "landcover.autoencoder.block_out_channels": "[8,16]",
    "landcover.autoencoder.norm_num_groups": "8",
    "landcover.autoencoder.max_steps": "3",
    "landcover.autoencoder.batch_size": "4",
    "landcover.diffusion.block_out_channels": "[16,16]",
    "landcover.diffusion.attention": "[false,true]",
    "landcover.diffusion.norm_num_groups": "8",
    "landcover.diffusion.max_steps": "3",
    "landcover.diffusion.batch_size": "4",
    "landcover.diffusion.warmup_steps": "1",
    "landcover.sampling.steps": "2",
    "spade.model.ngf": "8",
    "spade.model.ndf": "8",
    "spade.model.hidden": "8",
    "spade.max_steps": "3",
    "spade.max_minutes": "null",
    "spade.batch_size": "2",
    "spade.checkpoint_every": "2",
    "spade.select.judge_steps": "2",
    "spade.select.val_tiles": "4",
    "controlnet_base.max_minutes": "null",
    "controlnet_base.vae.block_out_channels": "[8,16,16]",
    "controlnet_base.vae.max_steps": "3",
    "controlnet_base.vae.batch_size": "4",
    "controlnet_base.unet.block_out_channels": "[16,32]",
    "controlnet_base.unet.cross_attention": "[false,true]",
    "controlnet_base.unet.layers_per_block": "1",
    "controlnet_base.unet.cross_attention_dim": "16",
    "controlnet_base.unet.context_tokens": "2",
    "controlnet_base.unet.max_steps": "3",
    "controlnet_base.unet.batch_size": "4",
    "controlnet.max_minutes": "null",
    "controlnet.max_steps": "3",
    "controlnet.batch_size": "4",
    "controlnet.sampling.steps": "2",
    "segment.train.max_steps": "2",
    "segment.train.max_minutes": "null",
    "segment.train.batch_size": "4",
    "segment.train.val_every": "2",
    "segment.train.checkpoint_every": "2",
    "segment.train.encoder": "tu-mobilenetv3_small_050",  # 2 M parameters: checkpoints stay small
    "segment.per_arch": "{}",
    "mixing.fractions": "[0.0,0.5]",
    "mixing.train": "null",
    "report.realism_samples": "16",
}


def twin_sets(**extra: str) -> list[str]:
    sets = []
    for k, v in {**TINY_MODELS, **extra}.items():
        sets += ["--set", f"{k}={v}"]
    return sets
