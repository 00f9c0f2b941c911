"""InteractDiffusion (Hoe et al., CVPR 2024): (subject, action, object) triplets with boxes control a
diffusers text-to-image UNet through GLIGEN's gated self-attention; GLIGEN's boxes + phrases as the baseline.

* :mod:`.tokenizer` — the interaction tokenizer and GLIGEN's, replacing ``unet.position_net``;
* :mod:`.adapter` — a gated copy of any ``UNet2DConditionModel`` with the base frozen;
* :mod:`.grounding` — triplets to tokenizer inputs (MiniLM phrase embeddings, padded boxes and masks);
* :mod:`.annotations` — the JSON-lines annotation format and its loader;
* :mod:`.scenes` — HOI-shapes, procedural interaction scenes with exact ground truth.
"""
