"""The offline world's two diffusion models, pre-trained here: `texforce/world` (a tiny Stable Diffusion: CLIP, VAE,
U-Net) and `texforce/world-flow` (an SD3 transformer on the same CLIP and VAE), with their probes."""
