"""RGB-D plans: validation, demos with per-frame depth, the RGB-D oracle, and the 3-D rigid fit that
reads the plan's depth (known motions, with noise and outliers, along the viewing ray)."""
import json

import numpy as np
import pytest

from gencond.errors import UserError
from robotics.avdc import fit_rigid_motion_3d, fit_rigid_motions, fit_rigid_motions_3d, kabsch, lift_tracks
from robotics.envs import backproject, project_points
from robotics.execution import fit_plan_to_view, run_episode
from robotics.planners import OraclePlanner, PlanError, RgbdPlan, plan_depth, plan_rgb, validate_plan

from .cameras import K, look_at


def rotation(axis, degrees):
    import cv2

    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    return cv2.Rodrigues(axis * np.deg2rad(degrees))[0]


def rigid(rot, translation, centre):
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, centre - rot @ centre + translation
    return m


def apply(m, points):
    return points @ m[:3, :3].T + m[:3, 3]


# ---------------------------------------------------------------------------------------------- plans

def _rgbd(frames=4, size=16, depth=1.0):
    return RgbdPlan(np.zeros((frames, size, size, 3), np.uint8), np.full((frames, size, size), depth, np.float32))


def test_rgbd_plans_are_accepted_and_their_depth_made_float32():
    plan = _rgbd()
    plan.depth = plan.depth.astype(np.float16)  # a model's half-precision output
    checked = validate_plan(plan)
    assert isinstance(checked, RgbdPlan) and checked.depth.dtype == np.float32 and len(checked) == 4
    assert plan_rgb(checked) is checked.rgb and plan_depth(checked) is checked.depth
    rgb = np.zeros((4, 16, 16, 3), np.uint8)
    assert validate_plan(rgb) is rgb and plan_rgb(rgb) is rgb and plan_depth(rgb) is None


def _bad(**change):
    plan = _rgbd()
    for key, value in change.items():
        setattr(plan, key, value)
    return plan


@pytest.mark.parametrize("plan, message", [
    (_bad(depth=np.ones((4, 16, 8), np.float32)), r"depth must have shape \(4, 16, 16\).*got \(4, 16, 8\)"),
    (_bad(depth=np.ones((3, 16, 16), np.float32)), r"one \(H, W\) map per RGB frame"),
    (_bad(depth=np.ones((4, 16, 16), np.uint16)), "floating-point metres, got dtype uint16"),
    (_bad(depth=[[1.0]]), "depth must be a numpy array"),
    (_bad(depth=np.where(np.arange(4)[:, None, None] == 2, np.nan, np.ones((4, 16, 16), np.float32))),
     r"must be finite: 256 NaN or infinite values \(first in frame 2\)"),
    (_bad(depth=np.full((4, 16, 16), -0.5, np.float32)), r"must be positive metres: 1024 values <= 0"),
    (_bad(depth=np.zeros((4, 16, 16), np.float32)), "must be positive"),
    (_bad(rgb=np.zeros((4, 16, 16, 3), np.float32)), "uint8"),  # the RGB rules still hold
    (_bad(rgb=np.zeros((1, 16, 16, 3), np.uint8), depth=np.ones((1, 16, 16), np.float32)), "future frame"),
])
def test_bad_rgbd_plans_are_one_line_errors(plan, message):
    with pytest.raises(PlanError, match=message) as info:
        validate_plan(plan)
    assert "\n" not in str(info.value)


def test_plans_of_either_form_are_fitted_to_the_view():
    plan = RgbdPlan(np.zeros((3, 32, 32, 3), np.uint8), np.ones((3, 32, 32), np.float32))
    plan.depth[:, :16] = 2.0
    fitted = fit_plan_to_view(plan, (128, 128))
    assert isinstance(fitted, RgbdPlan)
    assert fitted.rgb.shape == (3, 128, 128, 3) and fitted.depth.shape == (3, 128, 128)
    # depth is enlarged by nearest neighbour: no values between the object and what is behind it
    assert set(np.unique(fitted.depth)) == {1.0, 2.0}
    assert (fitted.depth[:, :64] == 2.0).all() and (fitted.depth[:, 64:] == 1.0).all()
    assert fit_plan_to_view(np.zeros((3, 32, 32, 3), np.uint8), (64, 64)).shape == (3, 64, 64, 3)


class _RecordingFollower:
    """A follower that records the kind of plan it is given (RGB only unless it says it uses depth)."""

    needs_depth = False
    needs_rgb_every_step = False

    def __init__(self, uses_depth):
        self.uses_plan_depth = uses_depth
        self.plans = []

    def start(self, env, view, plan):
        self.plans.append(plan)

    def act(self, env, state, rgb):
        return np.zeros(4, np.float32)


class _RgbdRepeatPlanner:
    def plan(self, frame, task, camera):
        return RgbdPlan(np.repeat(frame[None], 4, 0), np.ones((4, *frame.shape[:2]), np.float32))


def test_rgbd_plans_reach_only_followers_that_use_depth_and_videos_show_rgb():
    from robotics.envs import TaskEnv

    env = TaskEnv("handle-press", "corner", 32)
    for uses in (True, False):
        follower = _RecordingFollower(uses)
        result = run_episode(env, _RgbdRepeatPlanner(), follower, seed=0, max_steps=3, record=True)
        assert result.error is None
        assert isinstance(follower.plans[0], RgbdPlan) == uses
        assert isinstance(result.plans[0][1], np.ndarray) and result.plans[0][1].shape == (4, 32, 32, 3)
    env.close()


# ------------------------------------------------------------------------------------ the 3-D fitting

def test_kabsch_recovers_an_exact_rigid_motion():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(30, 3)) * 0.05
    m = rigid(rotation([1, 2, 3], 35), np.array([0.1, -0.05, 0.2]), src.mean(0))
    np.testing.assert_allclose(kabsch(src, apply(m, src)), m, atol=1e-9)
    planar = rigid(rotation([0, 0, 1], -20), np.array([0.03, 0.04, 0.0]), np.zeros(3))
    fitted = kabsch(src, apply(planar, src), planar=True)
    np.testing.assert_allclose(fitted, planar, atol=1e-9)


@pytest.mark.parametrize("planar", [False, True])
def test_robust_3d_fit_recovers_a_known_motion_despite_noise_and_outliers(planar):
    rng = np.random.default_rng(1)
    src = rng.uniform(-0.03, 0.03, size=(200, 3)) + [0.0, 0.7, 0.1]
    rot = rotation([0, 0, 1], 25) if planar else rotation([1, 1, 0], 20)
    shift = np.array([0.05, -0.08, 0.0 if planar else 0.15])
    truth = rigid(rot, shift, src.mean(0))
    dst = apply(truth, src) + rng.normal(0, 0.004, size=src.shape)  # 4 mm depth-like noise
    bad = rng.random(len(src)) < 0.3  # 30 % of the tracks lost: they read the table behind the object
    dst[bad] += np.array([0.0, 0.25, -0.2]) + rng.normal(0, 0.03, size=(bad.sum(), 3))
    fitted, inliers = fit_rigid_motion_3d(src, dst, rng, planar=planar)
    centre = src.mean(0)
    assert np.linalg.norm(apply(fitted, centre[None]) - apply(truth, centre[None])) < 0.005
    assert (inliers & bad).sum() <= 2 and inliers[~bad].mean() > 0.9
    # a plain least-squares fit on the same points is far off: the outliers matter
    plain = kabsch(src, dst, planar)
    assert np.linalg.norm(apply(plain, centre[None]) - apply(truth, centre[None])) > 0.02


def _render_depth(points, ext, size=128, background=5.0):
    """A depth image of ``points`` (a dense surface): each point's camera depth at its pixel."""
    depth = np.full((size, size), background, np.float32)
    uv = project_points(points, K, ext)
    z = (points @ ext[:3, :3].T + ext[:3, 3])[:, 2]
    cols, rows = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    keep = (cols >= 0) & (cols < size) & (rows >= 0) & (rows < size)
    order = np.argsort(-z[keep])  # nearer points drawn last
    depth[rows[keep][order], cols[keep][order]] = z[keep][order]
    return depth


def test_rgbd_lifting_recovers_motion_along_the_viewing_ray_that_rgb_alone_cannot():
    """A carried block moving mostly along the camera's ray (the carry tasks' failure): with each plan
    frame's depth the 3-D fit recovers its end position; the reprojection fit, which must guess the part
    along the ray, does not. Depth noise and lost tracks included."""
    rng = np.random.default_rng(2)
    eye, target = np.array([0.0, -0.6, 0.7]), np.array([0.0, 0.2, 0.05])
    ext = look_at(eye, target)
    ray = (target - eye) / np.linalg.norm(target - eye)
    # an 8 cm block facing the camera (about 11 x 11 pixels), sampled finely enough to cover each pixel
    a, b = np.meshgrid(np.linspace(-0.04, 0.04, 80), np.linspace(-0.04, 0.04, 80))
    right = np.cross(ray, [0, 0, 1.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, ray)
    surface = target + a.reshape(-1, 1) * right + b.reshape(-1, 1) * up
    move = 0.15 * ray + np.array([0.0, 0.0, 0.04])  # 15 cm along the ray, 4 cm up
    truth = [rigid(np.eye(3), move * k / 7, target) for k in range(8)]
    depth = np.stack([_render_depth(apply(m, surface), ext) for m in truth])
    depth[1:] += rng.normal(0, 0.003, size=depth[1:].shape).astype(np.float32)  # a learned model's noise
    # tracks: object pixels of frame 0, carried by the true motion (a perfect flow), a fifth of them lost
    pixels = np.stack(np.nonzero(depth[0] < 4)[::-1], 1)[:, :2] + 0.5
    pixels = pixels[rng.choice(len(pixels), 80, replace=False)]
    points = backproject(pixels, depth[0][(pixels[:, 1] - 0.5).astype(int), (pixels[:, 0] - 0.5).astype(int)],
                         K, ext)
    tracks = np.stack([project_points(apply(m, points), K, ext) for m in truth])
    lost = rng.random(len(pixels)) < 0.2
    tracks[1:, lost] += rng.normal(0, 10, size=tracks[1:, lost].shape)
    centre = points.mean(0)
    end = apply(truth[-1], centre[None])[0]

    lifted, valid = lift_tracks(tracks, depth, K, ext)
    assert lifted.shape == (8, 80, 3) and valid[0].all()
    rgbd = fit_rigid_motions_3d(lifted, valid)
    rgb = fit_rigid_motions(points, tracks, K, ext)
    err_rgbd = np.linalg.norm(apply(rgbd[-1], centre[None])[0] - end)
    err_rgb = np.linalg.norm(apply(rgb[-1], centre[None])[0] - end)
    assert err_rgbd < 0.01  # < 1 cm of a 15.5 cm motion
    assert err_rgb > 0.05 and err_rgbd < err_rgb / 5
    for m_true, m_fit in zip(truth, rgbd):  # every frame, not only the last
        assert np.linalg.norm(apply(m_fit, centre[None]) - apply(m_true, centre[None])) < 0.01


def test_a_frame_without_usable_points_keeps_the_previous_motion():
    points = np.zeros((3, 10, 3))
    points[1] += [0.1, 0.0, 0.0]
    points[0] += np.random.default_rng(0).normal(0, 0.01, (10, 3))
    points[1] += points[0]
    valid = np.ones((3, 10), bool)
    valid[2] = False
    motions = fit_rigid_motions_3d(points, valid)
    np.testing.assert_allclose(motions[1][:3, 3], [0.1, 0, 0], atol=1e-9)
    np.testing.assert_allclose(motions[2], motions[1])


# ------------------------------------------------------------------------ demos and the RGB-D oracle

@pytest.fixture(scope="module")
def depth_dataset(tmp_path_factory):
    from robotics.collect import collect

    root = tmp_path_factory.mktemp("rgbd_demos")
    index = collect(root, ["handle-press"], ["corner"], [0], resolution=32, progress=False, depth=True)
    return root, index


def test_collect_with_depth_stores_every_frames_depth(depth_dataset):
    from robotics.collect import episode_path, load_dataset, load_demonstration

    root, index = depth_dataset
    assert index["depth"] is True and json.loads((root / "index.json").read_text())["depth"] is True
    path = episode_path(root, "handle-press", "corner", 0)
    with np.load(path) as z:
        assert z["depth"].dtype == np.float16 and z["depth"].shape == z["frames"].shape[:3]
        assert z["first_depth"].dtype == np.float32  # today's first-frame keys are unchanged
    demo = load_demonstration(path)
    assert demo.depth.shape == (len(demo) + 1, 32, 32)
    np.testing.assert_allclose(demo.depth[0], demo.first_depth, rtol=1e-3)  # float16: ~3 digits
    assert 0.3 < float(np.median(demo.depth)) < 3.0  # metres
    assert load_dataset(root)[0].depth is not None


def test_datasets_with_and_without_depth_do_not_mix(depth_dataset, tmp_path):
    from robotics.collect import collect, load_demonstration

    root, _ = depth_dataset
    with pytest.raises(UserError, match="collected with per-frame depth; pass --depth to add to it") as info:
        collect(root, ["handle-press"], ["corner"], [1], resolution=32, progress=False)
    assert "\n" not in str(info.value)
    collect(tmp_path, ["handle-press"], ["corner"], [0], resolution=32, progress=False)
    with pytest.raises(UserError, match="collected without per-frame depth; drop --depth"):
        collect(tmp_path, ["handle-press"], ["corner"], [1], resolution=32, progress=False, depth=True)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["depth"] is False
    # a dataset written before depth existed (no "depth" in its index) resumes without depth, loads as before
    index.pop("depth")
    (tmp_path / "index.json").write_text(json.dumps(index))
    collect(tmp_path, ["handle-press"], ["corner"], [1], resolution=32, progress=False)
    assert load_demonstration(tmp_path / "handle-press" / "corner" / "seed_1.npz").depth is None


def test_collect_depth_flag_on_the_command_line(tmp_path):
    from gencond.cli import main

    assert main(["collect", "--tasks", "handle-press", "--cameras", "corner", "--seeds", "1", "--resolution",
                 "32", "--depth", "--out", str(tmp_path), "--quiet"]) == 0
    with np.load(tmp_path / "handle-press" / "corner" / "seed_0.npz") as z:
        assert z["depth"].shape == z["frames"].shape[:3]


def test_rgbd_oracle_depth_matches_a_rendered_depth_of_the_same_state():
    from robotics.envs import TaskEnv

    planner = OraclePlanner(num_frames=6, resolution=48, depth=True)
    planner.begin_episode("handle-press", "corner", 2)
    frames = planner._frames
    plan = planner.plan(frames[0], "handle press", "corner")
    assert isinstance(plan, RgbdPlan) and plan.depth.shape == (6, 48, 48) and plan.depth.dtype == np.float32
    validate_plan(plan)
    # the same state rendered in another environment: the first frame, and the last after replaying
    # the expert's actions (the simulation is deterministic per seed)
    from robotics.experts import run_expert

    env = TaskEnv("handle-press", "corner", 48)
    actions = run_expert(env, 2).actions
    env.reset(2)
    np.testing.assert_array_equal(plan.depth[0], env.render(depth=True).depth)
    for action in actions:
        env.step(action)
    np.testing.assert_array_equal(plan.depth[-1], env.render(depth=True).depth)
    np.testing.assert_array_equal(plan.rgb[-1], env.render().rgb)
    env.close()
    # at a plan resolution: frames and depth shrunk together
    small = OraclePlanner(num_frames=6, resolution=48, depth=True, plan_resolution=16)
    small.begin_episode("handle-press", "corner", 2)
    plan16 = small.plan(frames[0], "handle press", "corner")
    assert plan16.rgb.shape == (6, 16, 16, 3) and plan16.depth.shape == (6, 16, 16)
    np.testing.assert_allclose(plan16.depth[0], plan.depth[0].reshape(16, 3, 16, 3).mean(axis=(1, 3)), rtol=1e-5)
    assert repr(small) == "OraclePlanner(num_frames=6, resolution=48, depth=True, plan_resolution=16)"
    assert repr(OraclePlanner(8)) == "OraclePlanner(num_frames=8, resolution=128)"  # the RGB identity as before
    planner.close()
    small.close()


def test_oracle_rgbd_on_the_command_line_and_in_benchmark_names(tmp_path, capsys):
    from gencond.cli import main
    from robotics.results import evaluate_name

    out = tmp_path / "eval"
    args = ["evaluate-planner", "--tasks", "button-press-topdown", "--cameras", "corner", "--seeds", "1",
            "--videos", "0", "--quiet", "--out", str(out)]
    assert main([*args, "--planner", "oracle-rgbd", "--plan-resolution", "64"]) == 0
    identity = json.loads((out / "evaluation.json").read_text())
    assert identity["planner"] == "oracle-rgbd" and identity["plan_resolution"] == 64
    assert json.loads((out / "results.json").read_text())["overall"] == 100.0
    capsys.readouterr()
    assert main([*args, "--planner", "oracle"]) == 2  # another evaluation: refused, naming what differs
    err = capsys.readouterr().err
    assert "planner 'oracle-rgbd' -> 'oracle'" in err and "plan_resolution 64 -> None" in err
    assert main([*args, "--planner", "repeat-first", "--plan-resolution", "32"]) == 2
    assert main([*args, "--planner", "oracle", "--plan-resolution", "4"]) == 2
    assert "--plan-resolution 4 is too small" in capsys.readouterr().err
    assert evaluate_name("oracle-rgbd", "avdc", plan_resolution=32) == "evaluate_oracle-rgbd_avdc_plan32px"


def test_an_rgbd_plan_without_a_lift_is_read_as_its_rgb_plan():
    """Depth is used for what it adds (a lift, a carry); a plan in which depth shows no lasting lift
    gives exactly what its RGB frames give, so pushes keep their measured behaviour."""
    from robotics.avdc import extract_object_motion
    from robotics.envs import TaskEnv

    env = TaskEnv("shelf-place", "corner", 96)
    env.reset(0)
    view = env.render(depth=True, segmentation=True)
    mask = env.object_mask(view)
    rgb = np.repeat(view.rgb[None], 4, 0)
    depth = np.repeat(view.depth[None], 4, 0)
    from_rgb = extract_object_motion(rgb, view, mask)
    from_rgbd = extract_object_motion(RgbdPlan(rgb, depth), view, mask)
    assert not from_rgbd.grasp and not from_rgb.grasp
    np.testing.assert_array_equal(from_rgbd.motions, from_rgb.motions)
    np.testing.assert_array_equal(from_rgbd.subgoals, from_rgb.subgoals)
    env.close()


def test_rgbd_oracle_plan_shows_the_hammer_lift_that_rgb_misses():
    """From the steep corner3 camera the hammer's 12 cm lift runs mostly along the viewing ray: the RGB
    plan reads it as a push; the RGB-D plan sees the lift and its height."""
    from robotics.avdc import extract_object_motion
    from robotics.envs import TaskEnv

    planner = OraclePlanner(num_frames=8, resolution=128, depth=True)
    planner.begin_episode("hammer", "corner3", 101)
    env = TaskEnv("hammer", "corner3", 128)
    env.reset(101)
    view = env.render(depth=True, segmentation=True)
    plan = planner.plan(view.rgb, "hammer", "corner3")
    mask = env.object_mask(view)
    rgbd = extract_object_motion(plan, view, mask)
    rgb = extract_object_motion(plan.rgb, view, mask)
    assert rgbd.grasp and not rgb.grasp
    rise = rgbd.subgoals[-1, 2] - rgbd.contact[2]
    assert 0.09 < rise < 0.15  # the expert lifts the hammer by about 12 cm
    env.close()
    planner.close()
