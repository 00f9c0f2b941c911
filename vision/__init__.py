"""vision: image diffusion (U-ViT, DiT) with DDAE++ feature self-conditioning, linear probes and Fréchet distances."""
