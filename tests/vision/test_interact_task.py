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


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny base (30 steps from scratch) and an InteractDiffusion run on it (6 steps, a large lr)."""
    runs = tmp_path_factory.mktemp("runs")
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_base.yaml"), f"runs_dir={runs}", "name=base",
                     "train.max_steps=30", "train.lr=2e-3", "train.checkpoint_every=30", *TINY]) == 0
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_interact.yaml"), f"runs_dir={runs}", "name=inter",
                     f"model.base={runs / 'base'}", "train.max_steps=6", "train.lr=1e-2", "train.checkpoint_every=6",
                     *TINY]) == 0
    return runs


def test_base_then_interact_trains_only_the_new_layers(runs):
    losses = [json.loads(line)["loss"] for line in (runs / "base" / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]
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


PROMPT = {"caption": "a person kicking a red ball",
          "triplets": [{"subject": "person", "action": "kicking", "object": "red ball",
                        "subject_box": [0.1, 0.2, 0.45, 0.95], "object_box": [0.5, 0.7, 0.7, 0.9]}]}


def sampled(run, tmp_path, name, prompt, *flags):
    import numpy as np
    from PIL import Image

    (tmp_path / f"{name}.json").write_text(json.dumps(prompt))
    out = tmp_path / name
    assert cli.main(["sample", str(run), "--triplets", str(tmp_path / f"{name}.json"), "--num", "2", "--steps", "4",
                     "--out", str(out), "--quiet", *flags]) == 0
    assert (out / "prompt0_boxes.png").is_file()
    return np.asarray(Image.open(out / "prompt0.png"))


@pytest.fixture(scope="module")
def opened(runs, tmp_path_factory):
    """The interact run with every gate at 1 (six training steps barely open them): grounding then
    visibly steers sampling."""
    import shutil

    from safetensors.torch import save_file

    run = tmp_path_factory.mktemp("opened") / "inter"
    shutil.copytree(runs / "inter", run)
    path = next((run / "model").glob("*.safetensors"))
    state = load_file(str(path))
    save_file({k: torch.ones_like(v) if k.endswith(("alpha_attn", "alpha_dense")) else v for k, v in state.items()},
              str(path), metadata={"format": "pt"})
    return run


def test_sample_with_triplets_and_scheduled_sampling(opened, tmp_path):
    moved = {**PROMPT, "triplets": [{"subject": "robot", "action": "holding", "object": "blue kite",
                                     "subject_box": [0.5, 0.1, 0.9, 0.9], "object_box": [0.05, 0.05, 0.3, 0.3]}]}
    a = sampled(opened, tmp_path, "a", PROMPT)
    b = sampled(opened, tmp_path, "b", moved)
    assert a.shape == (128, 256, 3) and not np_equal(a, b)  # the grounding steers the image
    # beta 0: the gated layers are off for every step, so the boxes no longer matter
    assert np_equal(sampled(opened, tmp_path, "c", PROMPT, "--beta", "0"),
                    sampled(opened, tmp_path, "d", moved, "--beta", "0"))
    text_only = sampled(opened, tmp_path, "e", {"caption": "a person"})
    assert text_only.shape == a.shape


def np_equal(a, b) -> bool:
    return bool((a == b).all())


def test_sample_input_errors(runs, tmp_path, capsys):
    bad = {**PROMPT, "triplets": [{**PROMPT["triplets"][0], "object_box": [0.5, 0.7, 1.3, 0.9]}]}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    assert cli.main(["sample", str(runs / "inter"), "--triplets", str(tmp_path / "bad.json"), "--quiet"]) != 0
    assert "prompt 0: triplet 0 object_box [0.5, 0.7, 1.3, 0.9] is outside [0, 1]" in capsys.readouterr().err
    assert cli.main(["sample", str(runs / "inter"), "--triplets", str(tmp_path / "none.json"), "--quiet"]) != 0
    assert "no such file" in capsys.readouterr().err
    three = {**PROMPT, "triplets": PROMPT["triplets"] * 3}  # the HOI-shapes configs take 2
    (tmp_path / "three.json").write_text(json.dumps(three))
    assert cli.main(["sample", str(runs / "inter"), "--triplets", str(tmp_path / "three.json"), "--quiet"]) != 0
    assert "prompt 0 has 3 triplets;" in capsys.readouterr().err


def test_the_verb_evaluator_beats_chance_on_held_out_renders(tmp_path, monkeypatch):
    from vision.interact.evaluators import box_mask, verb_classifier
    from vision.interact.scenes import ACTIONS

    mask = box_mask((0.25, 0.5, 0.75, 1.0), 4)
    assert mask.tolist() == [[-1, -1, -1, -1], [-1, -1, -1, -1], [-1, 1, 1, -1], [-1, 1, 1, -1]]
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path))
    _, accuracy = verb_classifier(size=32, train_scenes=300, test_scenes=60, steps=100)
    assert accuracy["single"] > 2.5 / len(ACTIONS) and accuracy["double"] > 1.5 / len(ACTIONS), accuracy
    assert list(tmp_path.rglob("hoi-verbs-32px-*.safetensors"))  # cached for the next evaluation


def test_the_detector_decodes_its_targets_and_learns_beyond_chance(tmp_path, monkeypatch):
    import torch

    from vision.interact.detector import (CLASSES, box_alignment, box_iou, detect, entity_detector, targets,
                                          triplet_recall)
    from vision.interact.evaluators import rendered
    from vision.interact.scenes import COLOURS

    assert box_iou((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == 1 / 3 and box_iou((0, 0, 0.1, 0.1), (0.5, 0.5, 1, 1)) == 0
    images, scenes = rendered("double", 6, 1, 32)
    triplets = [s.triplets for s in scenes]
    heat, size, colour, _ = targets(triplets, 32)

    class Oracle(torch.nn.Module):  # outputs the training targets: decoding must give the boxes back
        def forward(self, x):
            return (torch.logit(heat.clamp(1e-4, 1 - 1e-4)), size,
                    torch.nn.functional.one_hot(colour.clamp_min(0), len(COLOURS)).permute(0, 3, 1, 2).float())

    found = detect(Oracle(), images)
    assert all(len(f) == 4 for f in found)  # two subjects and two objects per double scene
    assert box_alignment(found, triplets) > 0.8 and {d["class"] for f in found for d in f} <= set(range(len(CLASSES)))

    class Verbs(torch.nn.Module):  # a verb "classifier" that always answers the right verb
        def __init__(self, labels):
            super().__init__()
            self.labels, self.k = labels, 0

        def forward(self, x):
            out = torch.nn.functional.one_hot(self.labels[self.k:self.k + len(x)], 5).float()
            self.k += len(x)
            return out

    from vision.interact.evaluators import pair_inputs

    _, labels = pair_inputs(images, triplets)
    assert all(triplet_recall(found, images, triplets, Verbs(labels)))
    assert not any(triplet_recall([[] for _ in found], images, triplets, Verbs(labels)))
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path))
    _, recall = entity_detector(32, train_scenes=300, test_scenes=40, steps=150)
    assert recall["single"] > 0.3 and recall["double"] > 0.2, recall  # chance (a right box and class) is ~0
    assert list(tmp_path.rglob("hoi-detector-32px-*.safetensors"))


def test_eval_scores_generated_images_beside_renders(opened, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    assert cli.main(["eval", str(opened), "--splits", "single,double", "--num", "4", "--batch-size", "4", "--steps", "2",
                     "--evaluator-scenes", "100", "--evaluator-steps", "20", "--detector-scenes", "60",
                     "--detector-steps", "5", "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["splits"]) == {"single", "double"} and results["grounding"] == "interact"
    single, double = results["splits"]["single"], results["splits"]["double"]
    assert single["pairs"] == 4 and double["pairs"] == 8  # double scenes hold two pairs each
    for r in (single, double):
        lo, hi = r["interval_95"]
        assert 0 <= lo <= r["interaction_accuracy"] <= hi <= 1 and 0 <= r["renders_accuracy"] <= 1
        assert r["fd_evaluator_features"] >= 0 and "kid_evaluator_features" in r
        assert 0 <= r["triplet_recall_iou50"] <= 1 and 0 <= r["box_alignment"] <= 1 and 0 <= r["renders_box_alignment"] <= 1
        assert len(r["pair_correct"]) == r["pairs"] == len(r["triplet_recalled"])  # per pair, for paired tests
        assert sum(r["pair_correct"]) / r["pairs"] == pytest.approx(r["interaction_accuracy"], abs=1e-4)
    assert set(results["detector_entity_recall_on_renders"]) == {"single", "double"}
    assert cli.main(["eval", str(opened), "--splits", "train", "--quiet"]) != 0
    assert "--splits: unknown split 'train'" in capsys.readouterr().err


def test_hico_det_converter_on_a_tiny_fixture(tmp_path, capsys):
    from PIL import Image

    from vision.interact.annotations import load_annotations
    from vision.interact.hico import main

    (tmp_path / "images").mkdir()
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (200, 100)).save(tmp_path / "images" / name)
    boxes = [{"bbox": [20, 10, 100, 90], "category_id": 1}, {"bbox": [110, 50, 190, 95], "category_id": 2},
             {"bbox": [0, 0, 30, 30], "category_id": 47}]
    items = [{"file_name": "a.jpg", "annotations": boxes,
              "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 2},    # ride bicycle
                                 {"subject_id": 0, "object_id": 2, "category_id": 1},    # hold cup
                                 {"subject_id": 0, "object_id": 1, "category_id": 3}]},  # no interaction
             {"file_name": "b.jpg", "annotations": boxes[:2],
              "hoi_annotation": [{"subject_id": 0, "object_id": 1, "category_id": 3}]}]
    (tmp_path / "trainval_hico.json").write_text(json.dumps(items))
    (tmp_path / "verbs.txt").write_text("1 hold\n2 ride\n3 no_interaction\n")
    out = tmp_path / "hico.jsonl"
    main(["--annotations", str(tmp_path / "trainval_hico.json"), "--images", str(tmp_path / "images"),
          "--verbs", str(tmp_path / "verbs.txt"), "--out", str(out)])
    assert "1 images, 2 triplets (1 images without an interaction skipped)" in capsys.readouterr().out
    (a,) = load_annotations(out)
    ride, hold = a.triplets  # the larger pair first
    assert (ride.subject, ride.action, ride.object) == ("person", "ride", "bicycle") and hold.object == "cup"
    assert ride.subject_box == (0.1, 0.1, 0.5, 0.9) and ride.object_box == (0.55, 0.5, 0.95, 0.95)
    assert a.caption == "a person ride a bicycle and a person hold a cup"
    with pytest.raises(SystemExit, match="does not exist"):
        main(["--annotations", str(tmp_path / "trainval_hico.json"), "--images", str(tmp_path / "nowhere"),
              "--verbs", str(tmp_path / "verbs.txt"), "--out", str(out)])


def test_kid_is_unbiased_near_zero_for_one_distribution_and_grows_with_a_shift():
    import numpy as np

    from vision.frechet import kernel_inception_distance

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, shifted = kernel_inception_distance(a, b), kernel_inception_distance(a, b + 1.0)
    assert abs(same) < 0.05 and shifted > 10 * max(abs(same), 1e-3)


def test_interact_starts_from_a_gligen_run(runs, tmp_path, capsys):
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_gligen.yaml"), f"runs_dir={runs}", "name=gligen",
                     f"model.base={runs / 'base'}", "train.max_steps=2", "train.lr=1e-2", "train.checkpoint_every=2",
                     *TINY]) == 0
    from gencond.config import load_config
    from vision.interact.task import build_model

    cfg = load_config(CONFIGS / "hoi_shapes_interact.yaml", [f"model.base={runs / 'base'}", f"model.from_gligen={runs / 'gligen'}",
                                                            *[o for o in TINY if not o.startswith("--")]])
    model = build_model(cfg)
    gligen = GroundedUNet.from_pretrained(runs / "gligen" / "model")
    g_state, i_state = gligen.unet.state_dict(), model.unet.state_dict()
    fusers = [k for k in g_state if ".fuser." in k]
    assert fusers and all(torch.equal(g_state[k], i_state[k]) for k in fusers)
    mlp = gligen.unet.position_net.linears.state_dict()
    for name in ("linears", "linear_action"):
        assert all(torch.equal(v, getattr(model.unet.position_net, name).state_dict()[k]) for k, v in mlp.items())
    assert cli.main(["train", str(CONFIGS / "hoi_shapes_gligen.yaml"), f"runs_dir={runs}", "name=bad",
                     f"model.base={runs / 'base'}", f"model.from_gligen={runs / 'gligen'}", *TINY]) != 0
    assert "model.from_gligen starts an InteractDiffusion run" in capsys.readouterr().err


def test_an_exported_interact_model_samples_as_its_run(runs, tmp_path):
    out = tmp_path / "exported"
    assert cli.main(["export", str(runs / "inter"), "--out", str(out)]) == 0
    assert np_equal(sampled(runs / "inter", tmp_path, "run", PROMPT), sampled(out, tmp_path, "export", PROMPT))
