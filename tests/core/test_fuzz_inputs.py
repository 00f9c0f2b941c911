"""Fuzz-style: every field of every registered task's schema, and every input reader, given what a user can
get wrong, is a one-line error naming the key (or the file), so that the next field or reader is covered
without anyone remembering to (issue 38)."""
import dataclasses
import typing

import numpy as np
import pytest
from omegaconf import OmegaConf

from gencond.config import TYPE_DOMAINS, ConfigError, _unwrap, load_config
from gencond.errors import UserError
from gencond.registry import TASKS, load_domains

load_domains()
SCHEMAS = {name: task.schema for name, task in sorted(TASKS.items()) if not name.startswith("toy")}


def leaf_fields(schema, prefix=""):
    """(dotted key, field, type inside Optional/List, is a list) of every leaf of a schema."""
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        kind, is_list = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(kind):  # a section, or a list of them (its first item: [0])
            yield from leaf_fields(kind, f"{prefix}{f.name}{'[0]' if is_list else ''}.")
        else:
            yield f"{prefix}{f.name}", f, kind, is_list


def sections(schema):
    hints = typing.get_type_hints(schema)
    return [f.name for f in dataclasses.fields(schema) if dataclasses.is_dataclass(_unwrap(hints[f.name])[0])]


def base_config(task: str) -> dict:
    """The smallest valid config of ``task``: its required keys given a plain value."""
    cfg = OmegaConf.structured(SCHEMAS[task])
    raw = {"task": task}
    for key in OmegaConf.missing_keys(cfg):
        OmegaConf.update(cfg, key, "x")
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = "x"
    return raw


def bad_values(kind, is_list, domain):
    """(label, value) pairs the field must refuse: a wrong type, and values outside its domain."""
    wrong = {int: "abc", float: "abc", bool: "maybe", str: {"a": 1}}.get(kind)
    values = [("wrong type", wrong)] if wrong is not None else []
    if is_list:
        values.append(("not a list", {"a": 1}))
    if kind in (int, float):
        values += [("out of range", -1)] if domain is None or not domain.ok(-1) else []
        values += [("not finite", float("nan"))] if kind is float else []
    elif domain is not None and kind is str:
        values += [("not allowed", v) for v in ("no-such-choice", "", " ") if not domain.ok(v)][:1]
    return [(label, [v] if is_list and label not in ("not a list",) else v) for label, v in values]


CASES = [(task, key, label, value) for task, schema in SCHEMAS.items() for key, f, kind, is_list in leaf_fields(schema)
         for label, value in bad_values(kind, is_list, f.metadata.get("domain") or TYPE_DOMAINS.get(kind))]


def test_every_numeric_field_has_a_domain():
    for task, schema in SCHEMAS.items():
        for key, f, kind, _ in leaf_fields(schema):
            if kind in (int, float):
                assert f.metadata.get("domain") or TYPE_DOMAINS.get(kind), f"{task}: {key}"


@pytest.mark.parametrize("task, key, label, value", CASES, ids=[f"{t}:{k}:{l}" for t, k, l, _ in CASES])
def test_a_bad_field_value_is_a_one_line_error_naming_key_and_file(tmp_path, task, key, label, value):
    raw = base_config(task)
    node, schema = raw, SCHEMAS[task]
    *parents, leaf = key.split(".")
    for p in parents:
        name, is_item = p.removesuffix("[0]"), p.endswith("[0]")
        schema = _unwrap(typing.get_type_hints(schema)[name])[0]
        if is_item:  # a valid first item, then the bad value in it
            item = {f.name: {int: 1, float: 1.0, str: "x"}.get(_unwrap(typing.get_type_hints(schema)[f.name])[0])
                    for f in dataclasses.fields(schema) if f.default is dataclasses.MISSING or f.default == "???"}
            node = node.setdefault(name, [item])[0]
        else:
            node = node.setdefault(name, {})
    node[leaf] = value
    path = tmp_path / "fuzz.yaml"
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(raw)))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert "\n" not in message and key in message and str(path) in message, message


@pytest.mark.parametrize("task", list(SCHEMAS))
def test_a_section_without_keys_or_with_a_plain_value(tmp_path, task):
    path = tmp_path / "fuzz.yaml"
    base = base_config(task)
    path.write_text(OmegaConf.to_yaml(OmegaConf.create(base)))
    load_config(path)  # the base config is valid
    for section in sections(SCHEMAS[task]):
        for value in (None, 5, "text", [1]):
            path.write_text(OmegaConf.to_yaml(OmegaConf.create({**base, section: value})))
            with pytest.raises(ConfigError) as e:
                load_config(path)
            assert "\n" not in str(e.value) and f"'{section}'" in str(e.value), (section, value, str(e.value))


def test_an_unresolvable_interpolation_names_the_key(tmp_path):
    path = tmp_path / "fuzz.yaml"
    path.write_text("task: tsdiff\ndata: {dataset: x}\ntrain: {lr: '${nowhere.lr}'}\n")
    with pytest.raises(ConfigError, match=r"fuzz\.yaml: 'train\.lr' cannot be resolved: Interpolation key 'nowhere\.lr' not found$"):
        load_config(path)


def test_what_is_allowed_is_said(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task: tsdiff\ndata: {dataset: x}\ntrain: {checkpoint_every: 0}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: bad value for 'train\.checkpoint_every': 0; allowed: an integer ≥ 1$"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"override 'train\.lr_schedule=cosin': bad value for 'train\.lr_schedule': 'cosin'; "
                                          r"allowed: one of constant, "):
        load_config(path, ["train.checkpoint_every=5", "train.lr_schedule=cosin"])
    assert load_config(path, ["train.checkpoint_every=5", "train.validate_every=0"]).train.validate_every == 0


def test_the_config_knows_the_samplers_aliases():
    from gencond.config import SCHEDULER_ALIAS_NAMES
    from gencond.sampling import SCHEDULER_ALIASES

    assert sorted(SCHEDULER_ALIAS_NAMES) == sorted(SCHEDULER_ALIASES)


# ---------------------------------------------------------------- input readers


def _readers(tmp_path):
    """name -> (file suffix, read(path), a valid file's bytes) of every reader of a user's file."""
    from robotics.collect import load_demonstration, read_index
    from timeseries.data import read_series_file
    from timeseries.synthesis import load_windows
    from vision.data import read_idx
    from vision.interact.annotations import load_annotations
    from vision.interact.cli import read_prompts
    from vision.interact.hico import read_verbs

    npy = tmp_path / "good.npy"
    np.save(npy, np.zeros((4, 10), np.float32))
    npz = tmp_path / "good.npz"
    np.savez(npz, task=np.array("x"))

    def index(path):
        root = path.parent / (path.name + ".dataset")
        root.mkdir()
        path.rename(root / "index.json")
        return read_index(root)

    csv = "time,a,b\n" + "".join(f"2024-01-{d:02d},{d},{2 * d}\n" for d in range(1, 20))
    triplets = ('{"caption": "a person rides a horse", "triplets": [{"subject": "person", "action": "ride", "object": '
                '"horse", "subject_box": [0.1, 0.1, 0.5, 0.9], "object_box": [0.2, 0.3, 0.9, 0.9]}]}')
    return {
        "csv": (".csv", lambda p: read_series_file(p, "D", None), csv.encode()),
        "jsonl": (".jsonl", lambda p: read_series_file(p, "D", None), b'{"start": "2024-01-01", "target": [1, 2, 3]}\n' * 3),
        "windows": (".npy", lambda p: load_windows(p, 10), npy.read_bytes()),
        "triplets": (".json", lambda p: read_prompts(p, None), triplets.encode()),
        "annotations": (".jsonl", load_annotations, b'{"image": "nowhere.png", "caption": "x", "triplets": []}\n'),
        "idx": ("-idx3-ubyte", read_idx, b"\x00\x00\x08\x03" + (2).to_bytes(4, "big") * 3 + bytes(8)),
        "verbs": (".txt", read_verbs, b"1 adjust\n2 board\n"),
        "episode": (".npz", load_demonstration, npz.read_bytes()),
        "dataset index": (".json", index, b'{"format": "gencond-robotics-demos/1", "episodes": [], "resolution": [32, 32]}'),
        "config": (".yaml", load_config, b"task: tsdiff\ndata: {dataset: x}\ntrain: {max_steps: 10, batch_size: 4}\n"),
    }


BINARY = bytes(range(256)) * 4


@pytest.mark.parametrize("damage", ["empty", "binary", "truncated", "folder"])
@pytest.mark.parametrize("reader", ["csv", "jsonl", "windows", "triplets", "annotations", "idx", "verbs", "episode",
                                    "dataset index", "config"])
def test_a_damaged_input_file_is_a_one_line_error_naming_it(tmp_path, reader, damage):
    if (reader, damage) == ("verbs", "truncated"):
        pytest.skip("a verb list cut at a line end is a shorter verb list (cut mid-line: see test_verbs_cut_after_an_id)")
    suffix, read, good = _readers(tmp_path)[reader]
    path = tmp_path / f"input{suffix}"
    if damage == "folder":
        path.mkdir()
    else:
        path.write_bytes({"empty": b"", "binary": BINARY, "truncated": good[: len(good) // 2 + 1]}[damage])
    with pytest.raises(UserError) as e:
        read(path)
    message = str(e.value)
    assert "\n" not in message and "input" in message, message


def test_verbs_cut_after_an_id(tmp_path):
    from vision.interact.hico import read_verbs

    path = tmp_path / "verbs.txt"
    path.write_text("1 adjust\n2")
    with pytest.raises(UserError, match=r"verbs\.txt: verb 2 is only an id"):
        read_verbs(path)
