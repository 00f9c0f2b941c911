"""VideoAgent: plan refinement (one condition path in training and sampling), refinement
rounds with feedback, the learned critic, executions as data, and their errors."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gencond import cli
from gencond.errors import UserError
from gencond.refinement import Verdict

from .test_planner import RES, moving_square, train_tiny, write_square_demos

AGENT_CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "video" / "metaworld_small_videoagent.yaml")
TINY = [f"data.resolution={RES}", "data.frames=4", "model.base_channels=8", "model.channel_mult=[1,2]",
        "model.attention_resolutions=[]", "model.head_channels=8", "train.batch_size=8", "train.warmup_steps=5",
        "train.log_every=10", "sampling.num_steps=5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(demos, a tiny planner run, a tiny VideoAgent run trained from it for plan refinement)."""
    demos = write_square_demos(tmp_path_factory.mktemp("demos"), (5, 6, 7))
    root = tmp_path_factory.mktemp("runs")
    planner = train_tiny(demos, root, 40, "train.ema_decay=0.9", "sampling.num_steps=5")
    torch.manual_seed(0)
    assert cli.main(["train", AGENT_CONFIG, f"runs_dir={root}", "name=agent", f"data.root={demos}", *TINY,
                     f"plan_refinement.plans_from={planner}", f"train.init_from={planner}",
                     "plan_refinement.starts_per_episode=2", "plan_refinement.batch_size=4", "train.max_steps=20",
                     "train.checkpoint_every=20", "train.lr=1e-3", "--quiet"]) == 0
    return demos, planner, root / "agent"


def conv_in_inputs(model):
    """Records what the network's first layer receives: (B*T, 3 blocks * C, H, W) per call."""
    seen = []
    model.conv_in.spatial.register_forward_hook(lambda mod, args, out: seen.append(args[0].detach().clone()))
    return seen


def blocks(x, b, c):
    """(B*T, 3C, H, W) -> x_t, first frame, previous plan, each (B, C, T, H, W)."""
    bt, _, h, w = x.shape
    v = x.reshape(b, bt // b, 3, c, h, w).permute(2, 0, 3, 1, 4, 5)
    return v[0], v[1], v[2]


def test_plans_are_cached_once_in_the_planner_run(runs):
    from safetensors.torch import load_file

    _, planner, agent = runs
    caches = list((planner / "plan_cache").iterdir())
    assert len(caches) == 1
    chunks = sorted(caches[0].glob("chunk_*.safetensors"))
    plans = torch.cat([load_file(str(p))["plans"] for p in chunks])
    assert plans.shape == (12, 3, 3, RES, RES)  # 6 demos x 2 starts, (C, T, H, W)
    assert plans.float().std() > 0.05
    before = [p.stat().st_mtime_ns for p in chunks]
    assert cli.main(["train", str(agent), "train.max_steps=21", "--quiet"]) == 0  # resumes: no new plans
    assert [p.stat().st_mtime_ns for p in chunks] == before


def test_cheaper_drafts_are_cached_apart_with_their_own_step_count(runs):
    """plan_refinement.draft_steps: the drafts of the compute route (fewer sampler steps than the planner's)
    are another cache, whose identity records the steps, and they are other plans than the full ones."""
    from video.data import DemoClips
    from video.plan_refinement import cached_plans

    demos, planner, _ = runs
    clips = DemoClips(demos, frames=4, resolution=RES)
    full = cached_plans(clips, str(planner), 2, batch_size=4, progress=False)
    cheap = cached_plans(clips, str(planner), 2, batch_size=4, progress=False, steps=2)
    caches = {json.loads((c / "identity.json").read_text())["sampling"]["num_steps"]: c
              for c in (planner / "plan_cache").iterdir()}
    assert set(caches) == {5, 2}
    assert cheap.plans.shape == full.plans.shape and torch.equal(cheap.episode, full.episode)
    assert (cheap.plans.float() - full.plans.float()).abs().mean() > 0.01
    with pytest.raises(UserError, match="plan_refinement.draft_steps 10000: the model was trained on 100 timesteps"):
        cached_plans(clips, str(planner), 2, progress=False, steps=10_000)


def test_training_and_sampling_give_the_network_the_same_condition(runs):
    """One path (video.model.plan_condition): the previous plan lands in the same channels, unscaled,
    in a training step and in a refinement round; the first frame always reaches the network."""
    from gencond.config import load_config
    from video.agent import VideoAgentPlanner
    from video.data import frames_to_unit
    from video.task import build

    demos, _, agent = runs
    cfg = load_config(agent / "config.yaml")
    job = build(cfg)
    batch = job.batch_fn(0, torch.Generator().manual_seed(3))
    batch["previous_plan"][0] = torch.linspace(-1, 1, batch["previous_plan"][0].numel()).reshape(batch["previous_plan"][0].shape)
    seen = conv_in_inputs(job.model)
    job.loss_fn(job.model, batch, torch.Generator().manual_seed(0))
    _, first, previous = blocks(seen[-1], 8, 3)
    torch.testing.assert_close(previous, batch["previous_plan"].clamp(-1, 1), rtol=0, atol=0)
    torch.testing.assert_close(first[:, :, 0], batch["first_frame"], rtol=0, atol=0)

    planner = VideoAgentPlanner(agent, max_rounds=2, weights="last")
    seen = conv_in_inputs(planner.model)
    frame = moving_square(1, 6)[0]
    result = planner.refine_plan(frame, "door open")
    assert len(result.rounds) == 3  # base plan + 2 rounds (no feedback: all of them)
    calls = len(seen) // 3  # sampler steps per round
    observation = frames_to_unit(frame[None])[0]
    for r in range(3):
        _, first, previous = blocks(seen[r * calls], 1, 3)
        torch.testing.assert_close(first[0, :, 0], observation, rtol=0, atol=0)  # the first frame, every round
        expected = torch.zeros_like(previous) if r == 0 else result.rounds[r - 1].clamp(-1, 1)
        torch.testing.assert_close(previous, expected, rtol=0, atol=0)


def test_a_videoagent_run_starts_as_its_planner_exactly(runs):
    from gencond.training import init_weights
    from video.model import VideoUNet
    from video.planner import VideoPlanner

    _, planner_run, _ = runs
    planner = VideoPlanner(planner_run, weights="last")
    agent = VideoUNet(**{**planner.model.config, "previous_plan": True})
    init_weights(agent, f"{planner_run}:last")
    x, t = torch.randn(2, 3, 3, RES, RES), torch.tensor([10, 60])
    cond = {"first_frame": torch.rand(2, 3, RES, RES) * 2 - 1, "previous_plan": torch.randn(2, 3, 3, RES, RES)}
    with torch.no_grad():
        torch.testing.assert_close(agent(x, t, cond), planner.model(x, t, {"first_frame": cond["first_frame"]}))


def test_refinement_stops_at_the_first_accept_and_records_every_round(runs):
    from video.agent import VideoAgentPlanner

    _, _, agent = runs
    asked = []

    def feedback(sample, round):  # the core's feedback protocol, judging a video.feedback.PlanSample
        asked.append(round)
        assert sample.first_frame.shape == (RES, RES, 3) and sample.plan.shape == (4, RES, RES, 3)
        assert sample.instruction == "door open"
        return Verdict(len(asked) == 2, score=0.1 * len(asked), reason=f"call {len(asked)}")

    planner = VideoAgentPlanner(agent, max_rounds=4, feedback=feedback, weights="last")
    planner.begin_episode("door-open", "corner", 100)
    plan = planner.plan(moving_square(1, 6)[0], "door open", "corner")
    refinement = planner.last_refinement
    assert len(refinement.rounds) == 2 and refinement.accepted == 1 and asked == [0, 1]
    assert np.array_equal(plan, planner.to_plan(moving_square(1, 6)[0], refinement.rounds[1]))
    record = planner.episode_record()["plans"][0]
    assert record["rounds"] == 2 and record["accepted"] == 1 and record["verdicts"][1]["reason"] == "call 2"

    def broken(sample, round):
        raise ConnectionError("VLM unreachable")

    planner = VideoAgentPlanner(agent, max_rounds=2, feedback=broken, weights="last")
    planner.plan(moving_square(1, 6)[0], "door open", "corner")
    verdicts = planner.last_refinement.verdicts
    assert len(verdicts) == 3 and "VLM unreachable" in verdicts[0].reason and not verdicts[0].accept


def test_refinement_from_the_previous_plan_keeps_it_at_low_strength(runs):
    from video.agent import VideoAgentPlanner

    _, _, agent = runs
    frame = moving_square(1, 6)[0]
    gaps = {}
    for strength in (0.2, 1.0):
        planner = VideoAgentPlanner(agent, max_rounds=1, refine_from="plan", strength=strength, weights="last")
        planner.begin_episode("door-open", "corner", 0)
        rounds = planner.refine_plan(frame, "door open").rounds
        gaps[strength] = float((rounds[1] - rounds[0]).abs().mean())
    assert gaps[0.2] < 0.5 * gaps[1.0]


def test_videoagent_errors(runs, tmp_path, capsys):
    from video.agent import VideoAgentPlanner, make_videoagent_planner
    from video.feedback import CriticFeedback

    _, planner_run, agent = runs
    with pytest.raises(UserError, match="without the previous-plan input"):
        VideoAgentPlanner(planner_run)
    with pytest.raises(UserError, match="is a 'video-planner' run; a critic feedback needs a 'video-critic' run"):
        CriticFeedback(agent)
    planner = VideoAgentPlanner(agent, weights="last")
    with pytest.raises(ValueError, match=r"previous plan \(1, 3, 5, 16, 16\) does not fit|expected cond\['previous_plan'\]"):
        planner.sample_plan(moving_square(1, 6)[0], "door open", torch.zeros(1, 3, 5, RES, RES))
    with pytest.raises(UserError, match="unknown option"):
        make_videoagent_planner(f"{agent},roundz=2")
    with pytest.raises(UserError, match="refine_from 'both'"):
        VideoAgentPlanner(agent, refine_from="both", weights="last")
    with pytest.warns(FutureWarning, match="config key 'consistency' is now 'plan_refinement'"):  # the old name
        assert cli.main(["train", AGENT_CONFIG, f"runs_dir={tmp_path}", "name=x", "model.previous_plan=false",
                         f"consistency.plans_from={planner_run}", f"data.root={runs[0]}", *TINY, "--quiet"]) != 0
    assert "plan_refinement.plans_from needs model.previous_plan: true" in capsys.readouterr().err


def test_a_vision_language_feedback_reads_accept_and_reject():
    from video.feedback import PlanSample, VisionLanguageFeedback

    frame, plan = np.zeros((8, 8, 3), np.uint8), np.zeros((4, 8, 8, 3), np.uint8)
    prompts = []

    def ask(images, prompt):
        prompts.append((len(images), prompt))
        return answers.pop(0)

    answers = ["Accept. The door opens smoothly.", "**Reject** - the gripper passes through the handle", "maybe?"]
    vlm = VisionLanguageFeedback(ask)
    first, second, third = (vlm(PlanSample(plan, frame, "door open"), r) for r in range(3))
    assert first.accept and "opens smoothly" in first.reason
    assert not second.accept and "gripper passes" in second.reason
    assert not third.accept and "unreadable" in third.reason
    assert prompts[0][0] == 4 and '"door open"' in prompts[0][1] and "slightest errors" in prompts[0][1]


# ---- the critic and executions ----------------------------------------------------------------------
def write_executions(root: Path, scenes, draws: int = 1) -> Path:
    """Fake executed plans: a plan succeeds when its square moves the way its instruction says."""
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for task, direction in (("door-open", 1), ("door-close", -1)):
        for seed in scenes:
            for draw in range(draws):
                moves = 1 if (seed + draw) % 2 == 0 else -1
                plan = moving_square(moves, 6, steps=22)[::3][:8]
                path = root / "plans" / f"{task}_corner_seed{seed}_draw{draw}.npz"
                path.parent.mkdir(parents=True, exist_ok=True)
                np.savez_compressed(path, plan=plan, text=task.replace("-", " "), success=moves == direction, replans=0)
                records.append({"task": task, "camera": "corner", "seed": seed, "draw": draw,
                                "success": bool(moves == direction), "replans": 0, "plan": str(path.relative_to(root))})
    (root / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def test_the_critic_learns_a_separable_case_and_is_a_feedback(tmp_path):
    from video.feedback import CriticFeedback, PlanSample

    train_dir = write_executions(tmp_path / "train", range(12), draws=2)
    held_out = write_executions(tmp_path / "held_out", range(100, 106))
    config = str(Path(__file__).resolve().parents[2] / "configs" / "video" / "metaworld_small_critic.yaml")
    torch.manual_seed(0)
    assert cli.main(["train", config, f"runs_dir={tmp_path}", "name=critic", f"data.executions=[{train_dir}]",
                     f"data.val_executions=[{held_out}]", f"data.resolution={RES}", "model.base_channels=8",
                     "train.max_steps=120", "train.batch_size=16", "train.lr=2e-3", "train.validate_every=40",
                     "train.checkpoint_every=120", "--quiet"]) == 0
    assert cli.main(["eval", str(tmp_path / "critic"), "--executions", str(held_out)]) == 0
    table = json.loads((tmp_path / "critic" / "eval" / "critic.json").read_text())
    assert table["accuracy"] >= 0.9 and table["plans"] == 12 and table["scenes_seen_in_training"] == 0
    critic = CriticFeedback(tmp_path / "critic")
    right, wrong = moving_square(1, 6, steps=22)[::3][:8], moving_square(-1, 6, steps=22)[::3][:8]
    assert critic(PlanSample(right, right[0], "door open"), 0).accept
    assert not critic(PlanSample(wrong, wrong[0], "door open"), 0).accept
    with pytest.raises(UserError, match="trained on plans for: door close, door open; it cannot judge 'hammer'"):
        critic(PlanSample(right, right[0], "hammer"), 0)


def test_online_iterations_log_their_steps_and_resume(runs, tmp_path, monkeypatch):
    import video.online
    from video.online import online

    _, _, agent = runs
    scenes = dict(env_tasks=["door-open"], cameras=["corner"], seeds=[5], eval_seeds=[100], steps=3, max_rounds=1,
                  max_replans=0, resolution=64, progress=False)
    with pytest.raises(UserError, match="overlap"):
        online(agent, tmp_path / "x", 1, **{**scenes, "eval_seeds": [5]})
    with pytest.raises(UserError, match="demonstrations' own scenes"):  # seeds 0-2 are the demos'
        online(agent, tmp_path / "x", 1, **{**scenes, "seeds": [2, 5]})
    real, calls = video.online.train_run, []

    def stop_in_iteration_2(cfg, run_dir, progress=True):
        calls.append(run_dir)
        if "iter_2" in str(run_dir) and len(calls) == 2:
            raise KeyboardInterrupt
        return real(cfg, run_dir, progress)

    monkeypatch.setattr(video.online, "train_run", stop_in_iteration_2)
    with pytest.raises(KeyboardInterrupt):
        online(agent, tmp_path / "online", 2, **scenes)
    first = (tmp_path / "online" / "online.jsonl").read_text()
    log = online(agent, tmp_path / "online", 2, **scenes)
    assert [e["iteration"] for e in log] == [1, 2] and first.splitlines()[0] == json.dumps(log[0])
    assert log[0]["executed"] == 1 and log[0]["finetune_steps"] == 3 and log[1]["eval_episodes"] == 1
    assert log[0]["clips_added"] == log[0]["execution_success"]  # every success (here: none) is a new clip
    cfg = OmegaConf.load(tmp_path / "online" / "iter_2" / "model" / "config.yaml")
    assert cfg.train.init_from.endswith("iter_1/model:last") and cfg.plan_refinement.plans_from.endswith("iter_1/model:last")
    assert [Path(p).parent.parent.name for p in cfg.data.extra_roots] == ["iter_1", "iter_2"]


def test_a_videoagent_trained_on_informative_drafts_uses_the_plan(tmp_path):
    """The positive control of plan refinement: where the first frame and the text leave the future
    open (the square moves 1 or 3 pixels a frame from the same start), drafts that are the real future plus
    noise carry the missing information, and a short training learns to use them: the loss with the matching
    draft is clearly below the loss with another clip's draft and with an empty slot, on training clips and
    on a held-out start position."""
    from gencond.config import load_config
    from gencond.diffusion import DiffusionProcess
    from gencond.runs import load_run
    from gencond.text import text_encoder
    from video.plan_refinement import clip_starts, plan_use
    from video.task import load_clips

    demos = write_square_demos(tmp_path / "demos", (4, 4, 5, 5, 6, 6, 7, 7), speed=(1, 3) * 4)
    torch.manual_seed(0)
    assert cli.main(["train", AGENT_CONFIG, f"runs_dir={tmp_path}", "name=control", f"data.root={demos}", *TINY,
                     "plan_refinement.drafts=noised_future", "plan_refinement.draft_noise=0.3",
                     "plan_refinement.plans_from=null",
                     "train.init_from=null", "data.seeds=[0,1,2,3,4,5]", "train.max_steps=400", "train.lr=3e-3",
                     "train.checkpoint_every=400", "train.threads=1", "--quiet"]) == 0
    cfg, model = load_run(tmp_path / "control", "last")
    clips = load_clips(load_config(tmp_path / "control" / "config.yaml", ["data.seeds=null"]))
    text = text_encoder(cfg.model.text_max_tokens).encode(clips.texts)
    process = DiffusionProcess(cfg.diffusion)
    for seeds in ({0, 1, 2, 3, 4, 5}, {6, 7}):  # training clips, then the held-out start position
        items = [(e, s) for e, s in clip_starts(clips, 3, seed=1) if clips.episodes[e].seed in seeds]
        future = torch.stack([clips.clip(e, s)[1:].movedim(0, 1) for e, s in items])
        drafts = (future + 0.3 * torch.randn(future.shape, generator=torch.Generator().manual_seed(2))).clamp(-1, 1)
        result = plan_use(model, process, clips, text, items, drafts, timesteps=(80, 90, 95))
        for t, matched in result["matched"].items():
            assert matched < 0.85 * min(result["other_clip"][t], result["empty"][t]), (seeds, t, result)


def test_an_online_iteration_turns_a_success_on_a_new_scene_into_a_clip_it_finetunes_on(runs, tmp_path, monkeypatch):
    """The success -> clip -> finetune path end to end: the expert's own plans (the oracle, in place of the
    refined plans) succeed on a scene the demonstrations never showed; that execution becomes a clip of the
    finetuning run's data."""
    import video.agent
    from gencond.config import load_config
    from robotics.planners import OraclePlanner
    from video.online import online
    from video.task import load_clips

    _, _, agent = runs
    monkeypatch.setattr(video.agent, "make_planner", lambda run, **kw: OraclePlanner(8, 128))
    log = online(agent, tmp_path / "online", 1, env_tasks=["door-close"], cameras=["corner"], seeds=[5],
                 eval_seeds=[100], steps=2, max_rounds=1, max_replans=0, resolution=128, progress=False)
    assert log[0]["execution_success"] == 1 and log[0]["clips_added"] == 1 and log[0]["finetune_steps"] == 2
    cfg = load_config(tmp_path / "online" / "iter_1" / "model" / "config.yaml")
    clips = load_clips(cfg)
    new = [e for e in clips.episodes if e.seed == 5]
    assert len(new) == 1 and new[0].text == "door close" and len(clips.episodes) == 7  # 6 demos + the success
