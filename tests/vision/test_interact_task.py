"""InteractDiffusion phase 2: GroundedUNet as a gencond denoiser and the ``interact`` task end to end
(base trained from scratch, then grounded on the frozen base through the core trainer)."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gencond import cli
from gencond.errors import UserError
from vision.interact.adapter import small_unet
from vision.interact.model import GROUNDING_KEYS, GroundedUNet, null_grounding, null_text

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "vision"
TINY = ["data.image_size=16", "data.num_train=64", "model.block_out_channels=[16,32]",
        "model.attention_levels=[false,true]", "model.head_dim=8", "train.batch_size=4", "train.warmup_steps=0",
        "train.log_every=5", "train.ema_decay=null", "--quiet"]


def condition(batch=2, tokens=6, slots=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(batch, slots)
    masks[:, :2] = 1
    corner = torch.rand(batch, slots, 2, generator=g) * 0.5
    box = torch.cat([corner, corner + 0.4], -1)
    return {"text": torch.randn(batch, tokens, 384, generator=g), "text_mask": torch.ones(batch, tokens, dtype=torch.bool),
            "subject_boxes": box, "object_boxes": box.flip(1), "masks": masks,
            **{k: torch.randn(batch, slots, 384, generator=g) * masks[..., None]
               for k in ("subject_embeddings", "object_embeddings", "action_embeddings")}}


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    unet = small_unet(16, 3, (16, 32), (False, True), head_dim=8)
    return GroundedUNet({k: v for k, v in unet.config.items() if not k.startswith("_")}, "none")


@pytest.mark.parametrize("kind", ["gligen", "interact"])
def test_a_grounded_model_starts_as_its_base_and_saves_its_tokenizer(base, kind, tmp_path):
    grounded = GroundedUNet.from_base(base.unet, kind)
    x, t, cond = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), condition()
    with torch.no_grad():
        ref, out = base(x, t, cond), grounded(x, t, cond)
    assert torch.equal(ref, out)
    trainable = {n for n, p in grounded.named_parameters() if p.requires_grad}
    assert trainable == set(grounded.new_parameter_names()) and trainable
    assert all(".fuser." in n or "position_net." in n for n in trainable)
    with torch.no_grad():  # open the gates: now grounding changes the output
        for n, p in grounded.named_parameters():
            if n.endswith("alpha_attn") or n.endswith("alpha_dense"):
                p.fill_(1.0)
        opened = grounded(x, t, cond)
        without = grounded(x, t, null_grounding(cond))
    assert (opened - without).abs().max() > 1e-4
    grounded.save_pretrained(tmp_path)
    again = GroundedUNet.from_pretrained(tmp_path)
    assert type(again.unet.position_net) is type(grounded.unet.position_net)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, cond), opened)


def test_null_condition_drops_caption_and_grounding(base):
    grounded = GroundedUNet.from_base(base.unet, "interact")
    cond = condition()
    null = grounded.null_condition(cond)
    assert set(null) == set(cond)
    assert not null["text_mask"].any() and null["text"].abs().sum() == 0
    assert all(null[k].abs().sum() == 0 for k in GROUNDING_KEYS)
    assert set(base.null_condition(cond)) == set(cond) and torch.equal(base.null_condition(cond)["masks"], cond["masks"])
    assert torch.equal(null_text(cond)["masks"], cond["masks"])  # dropping the caption keeps the grounding
    with torch.no_grad():
        assert torch.isfinite(grounded(torch.randn(2, 3, 16, 16), torch.tensor([5, 5]), null)).all()


def test_base_then_interact_trains_only_the_new_layers(tmp_path):
    runs = tmp_path / "runs"
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_base.yaml"), f"runs_dir={runs}", "name=base",
                     "train.max_steps=30", "train.lr=2e-3", "train.checkpoint_every=30", *TINY]) == 0
    losses = [json.loads(line)["loss"] for line in (runs / "base" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_interact.yaml"), f"runs_dir={runs}", "name=inter",
                     f"model.base={runs / 'base'}", "train.max_steps=6", "train.lr=1e-2", "train.checkpoint_every=6",
                     *TINY]) == 0
    before = load_file(str(next((runs / "base" / "model").glob("*.safetensors"))))
    after = load_file(str(next((runs / "inter" / "model").glob("*.safetensors"))))
    changed = {k for k in after if k not in before or not torch.equal(after[k], before[k])}
    assert changed and all(".fuser." in k or "position_net." in k for k in changed)
    assert any(k.endswith("alpha_attn") for k in changed)  # the gates opened


def test_interact_config_errors(tmp_path, capsys):
    with pytest.raises(UserError, match="model.grounding 'boxes' is not one of none, gligen, interact"):
        GroundedUNet({}, "boxes")
    (tmp_path / "config.yaml").write_text("task: tsdiff\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_interact.yaml"), f"runs_dir={tmp_path}/r",
                     f"model.base={tmp_path}", *TINY]) != 0
    assert "is a 'tsdiff' run; model.base needs a 'interact' run" in capsys.readouterr().err
