"""vision: image diffusion (U-ViT, DiT) with DDAE++ feature conditioning, linear probes and Fréchet distances."""
