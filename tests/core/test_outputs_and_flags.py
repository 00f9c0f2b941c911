"""Output folders are not silently overwritten, resume files survive damage, flags and input files that a
user gets wrong are one-line errors (issue 38, items 3, 8, 9 and 10)."""
import argparse
import json

import numpy as np
import pytest

from gencond.errors import UserError
from gencond.arguments import add_sampling_arguments, check_sampling_steps
from gencond.runs import claim_output, prepare_output, read_arrays, read_resume_log


# ---------------------------------------------------------------- 3: results are not overwritten silently


def test_an_output_folder_holding_other_results_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"CRPS": 0.1}')
    results = ("metrics.json", "forecasts.csv")
    with pytest.raises(UserError, match=r"out already holds metrics\.json that this command did not write; pass --overwrite"):
        prepare_output(out, results, identity=out / "samples" / "identity.json")
    assert (out / "metrics.json").read_text() == '{"CRPS": 0.1}'
    assert prepare_output(out, results, overwrite=True) == out  # the explicit flag
    claim_output(out / "samples" / "identity.json", {"seed": 0}, "forecast")
    assert prepare_output(out, results, identity=out / "samples" / "identity.json") == out  # a resume of the same job


def test_an_output_path_that_is_a_file_or_not_writable(tmp_path, monkeypatch):
    import os

    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"--out .*file is a file; pass a folder"):
        prepare_output(tmp_path / "file")
    with pytest.raises(UserError, match=r"file is a file, not a folder"):
        prepare_output(tmp_path / "file" / "sub")
    monkeypatch.setattr(os, "access", lambda p, mode: False)  # a read-only run (root writes everywhere)
    with pytest.raises(UserError, match=r"cannot write to .*; pass --out DIR"):
        prepare_output(tmp_path / "run" / "forecasts")
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 8: damaged resume files


def test_a_torn_resume_log_is_repaired_and_its_item_redone(tmp_path, capsys):
    log = tmp_path / "episodes.jsonl"
    good = [{"task": "t", "camera": "c", "seed": s, "success": True} for s in range(3)]
    log.write_text("".join(json.dumps(r) + "\n" for r in good) + '[1]\n{"task": "t"}\n{"task": "t", "cam')
    assert read_resume_log(log, ("task", "camera", "seed")) == good
    assert "dropping damaged line(s) 4, 5, 6 (redone)" in capsys.readouterr().out
    with log.open("a") as f:  # the next record starts a line of its own
        f.write(json.dumps({"task": "t", "camera": "c", "seed": 3, "success": False}) + "\n")
    assert [r["seed"] for r in read_resume_log(log, ("task", "camera", "seed"))] == [0, 1, 2, 3]


def test_a_truncated_result_chunk_is_computed_again(tmp_path, capsys):
    path = tmp_path / "chunk_000000.npz"
    np.savez(path, samples=np.ones((2, 3)), misfit=np.zeros(2))
    assert read_arrays(path, ("samples", "misfit"))["samples"].shape == (2, 3)
    path.write_bytes(path.read_bytes()[:100])
    assert read_arrays(path, ("samples", "misfit")) is None
    assert "is damaged" in capsys.readouterr().out


@pytest.mark.parametrize("damaged", ["", "{", "[]", "\x00\xff"])
def test_a_damaged_identity_is_a_one_line_error(tmp_path, damaged):
    path = tmp_path / "out" / "evaluation.json"
    path.parent.mkdir()
    path.write_text(damaged)
    with pytest.raises(UserError, match=r"evaluation\.json is damaged \(not a JSON object\)") as e:
        claim_output(path, {"seed": 0}, "evaluation")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------- 9: flags


def test_more_sampling_steps_than_trained_and_a_negative_seed_are_refused(capsys):
    with pytest.raises(UserError, match=r"--steps 1000: the model was trained on 100 timesteps"):
        check_sampling_steps({"num_steps": 1000}, 100)
    with pytest.raises(UserError, match=r"--timesteps: 100 is not a training timestep"):
        check_sampling_steps({"timesteps": [100, 50]}, 100)
    check_sampling_steps({"num_steps": 100, "timesteps": [99, 0]}, 100)
    p = argparse.ArgumentParser(prog="gencond forecast")
    add_sampling_arguments(p)
    with pytest.raises(SystemExit):
        p.parse_args(["--seed", "-1"])
    assert "--seed: must be an integer ≥ 0, got '-1'" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("run,rounds=abc", "rounds='abc' must be an integer ≥ 0"),
    ("run,rounds=2,rounds=3", "option rounds is given twice"),
    ("run,feedback=simulator,critic=c", "critic= is read only by feedback=critic, not feedback=simulator"),
    ("run,threshold=0.3", "threshold= is read only with critic=CRITIC_RUN_DIR"),
    ("run,strength=2", "strength='2' must be a number in (0, 1]"),
    ("run,from=pla", "from='pla' must be noise or plan"),
])
def test_videoagent_options_are_checked(spec, message):
    from video.agent import parse_videoagent_options

    with pytest.raises(UserError) as e:
        parse_videoagent_options(spec)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert parse_videoagent_options("run,rounds=2,critic=c,threshold=0.3") == ("run", {"rounds": 2, "critic": "c", "threshold": 0.3})


# ---------------------------------------------------------------- 10: input files


TRIPLET = {"subject": "person", "action": "ride", "object": "horse", "subject_box": [0.1, 0.1, 0.5, 0.9],
           "object_box": [0.2, 0.3, 0.9, 0.9]}


@pytest.mark.parametrize("content, message", [
    ({"caption": "a person rides a horse", "triplet": [TRIPLET]}, "prompt 0 has unknown key 'triplet'"),
    ({"caption": None, "triplets": [TRIPLET]}, "prompt 0: 'caption' must be a string, got None"),
    ([], "holds no prompt"),
])
def test_triplets_files_that_would_be_silently_misread(tmp_path, content, message):
    from vision.interact.cli import read_prompts

    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    with pytest.raises(UserError) as e:
        read_prompts(path, None)
    assert message in str(e.value) and "t.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text, message", [
    ("time,a,b\n", "holds no rows"),
    ("time,a,b\n2024-01-01,1,2\n2024-01-02,3\n", "line 3: a ragged row of 2 fields under a header of 3"),
    ("time,a,b\n2024-01-01,1,2,9\n", "line 2: a ragged row of 4 fields under a header of 3"),
])
def test_csv_header_only_or_ragged(tmp_path, text, message):
    from timeseries.data import read_series_file

    path = tmp_path / "my.csv"
    path.write_text(text)
    with pytest.raises(UserError, match="my\\.csv") as e:
        read_series_file(path, "D", None)
    assert message in str(e.value)


def test_an_annotation_whose_image_cannot_be_decoded(tmp_path):
    from vision.interact.annotations import load_annotations

    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"image": "broken.png", "caption": "x", "triplets": []}) + "\n")
    with pytest.raises(UserError, match=r"ann\.jsonl:1: image .*broken\.png cannot be decoded"):
        load_annotations(path)
