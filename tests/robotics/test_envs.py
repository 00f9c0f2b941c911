"""Rendering: shapes, orientation, camera matrices against segmentation, and name errors."""
import numpy as np
import pytest

from gencond.errors import UserError
from robotics.envs import BENCHMARK_TASKS, CAMERAS, backproject, check_camera, check_env_task, make_env


@pytest.fixture(scope="module")
def views():
    out = {}
    for camera in CAMERAS:
        env = make_env("button-press-topdown", camera, resolution=(96, 128), seed=0)
        out[camera] = (env, env.render(depth=True, segmentation=True))
    yield out
    for env, _ in out.values():
        env.close()


def test_all_benchmark_tasks_exist():
    for task in BENCHMARK_TASKS:
        assert check_env_task(task) == task


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown task 'dor-open'; valid tasks: .*door-open"):
        check_env_task("dor-open")
    with pytest.raises(UserError, match=r"unknown camera 'top'; valid cameras: corner, corner2, corner3"):
        check_camera("top")


@pytest.mark.parametrize("camera", CAMERAS)
def test_render_shapes_and_types(views, camera):
    _, frame = views[camera]
    assert frame.rgb.shape == (96, 128, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (96, 128) and frame.depth.dtype == np.float32
    assert frame.segmentation.shape == (96, 128) and frame.segmentation.dtype == np.int32
    assert frame.rgb.std() > 10  # a real image, not a blank buffer
    assert 0.3 < np.median(frame.depth) < 5.0  # metric depth of a tabletop scene seen from ~1-2 m
    assert frame.intrinsics.shape == (3, 3) and frame.world_to_camera.shape == (4, 4)


@pytest.mark.parametrize("camera", CAMERAS)
def test_images_are_upright(views, camera):
    """The floor is in the lower part of the image and the robot's head above it (v3 corner cams are
    mounted upside down; the renderer must undo it)."""
    env, frame = views[camera]
    seg = frame.segmentation
    floor_rows = np.nonzero(seg == env.model.geom("floor").id)[0]
    head = [g for g in range(env.model.ngeom) if env.model.body(env.model.geom_bodyid[g]).name == "head"]
    head_rows = np.nonzero(np.isin(seg, head))[0]
    table_rows = np.nonzero(np.isin(seg, [g for g in range(env.model.ngeom)
                                          if env.model.body(env.model.geom_bodyid[g]).name == "tablelink"]))[0]
    assert len(floor_rows) > 50 and len(head_rows) > 20 and len(table_rows) > 50
    # an upside-down image would put the robot's head below the floor and the table
    assert head_rows.mean() < floor_rows.mean() - 5
    assert head_rows.mean() < table_rows.mean() - 5
    # world up is image up: a point 20 cm above the button projects higher in the image
    button = env.data.body("button").xpos
    (_, v_low), (_, v_high) = frame.project(np.array([button, button + [0, 0, 0.2]]))
    assert v_high < v_low - 5


@pytest.mark.parametrize("camera", CAMERAS)
def test_camera_matrix_projects_onto_the_segmentation(camera):
    """The ball's centre projects inside the ball's mask (a sphere's centre always does), and
    depth + camera matrix lift the ball's pixels back onto the ball's surface."""
    env = make_env("basketball", camera, resolution=(240, 320), seed=0)
    frame = env.render(depth=True, segmentation=True)
    centre = env.data.body("bsktball").xpos.copy()
    env.close()
    mask = np.isin(frame.segmentation, env.object_geom_ids)
    assert mask.sum() >= 20
    u, v = frame.project(centre[None])[0]
    assert mask[int(v), int(u)], f"ball centre projects to ({u:.1f}, {v:.1f}), outside its mask"
    rows, cols = np.nonzero(mask)
    assert abs(u - (cols.mean() + 0.5)) < 1.5 and abs(v - (rows.mean() + 0.5)) < 1.5
    points = backproject(np.stack([cols + 0.5, rows + 0.5], 1), frame.depth[rows, cols],
                         frame.intrinsics, frame.world_to_camera)
    radius = np.linalg.norm(points - centre, axis=1)
    assert np.all(np.abs(radius - 0.03) < 0.012)  # the ball's radius is 3 cm


def test_same_seed_same_scene_different_seed_different_scene():
    env = make_env("basketball", "corner", 64)
    a = env.reset(3).copy()
    b = env.reset(3).copy()
    c = env.reset(4).copy()
    env.close()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[4:7] - c[4:7]).max() > 1e-3


def test_fast_rgb_path_matches_the_public_renderer_pixel_for_pixel():
    """The reused-camera, single-copy RGB path gives exactly what mujoco.Renderer gives (all cameras,
    including the upside-down ones), and leaves depth and segmentation unchanged."""
    for camera in ("corner", "corner3"):
        env = make_env("assembly", camera, 64, seed=1)
        renderer = env.renderer
        assert renderer._fast
        env.step([0.3, 0.2, 0.1, 0.5])
        fast = renderer.render(env.data, depth=True, segmentation=True)
        renderer._fast = False
        slow = renderer.render(env.data, depth=True, segmentation=True)
        np.testing.assert_array_equal(fast.rgb, slow.rgb)
        np.testing.assert_array_equal(fast.depth, slow.depth)
        np.testing.assert_array_equal(fast.segmentation, slow.segmentation)
        assert fast.rgb.flags["C_CONTIGUOUS"] and fast.rgb.shape == (64, 64, 3)
        env.close()


def test_object_body_holds_the_handle_and_more():
    env = make_env("door-open", "corner", 64, seed=0)
    view = env.render(depth=True, segmentation=True)
    assert set(env.object_geom_ids) < set(env.object_body_geom_ids)
    handle, door = env.object_mask(view), env.object_body_mask(view)
    assert handle.any() and not (handle & ~door).any() and door.sum() > 3 * handle.sum()
    env.close()


def test_importing_diffusers_after_rendering_does_not_crash():
    """libtriton (imported by torch._dynamo, which diffusers imports) and Mesa's llvmpipe both carry LLVM;
    loaded in that order after a GL context exists, the process died with a segmentation fault."""
    import subprocess
    import sys

    code = ("from robotics.envs import make_env\n"
            "env = make_env('door-open', camera='corner', resolution=32, seed=0)\n"
            "assert env.render().rgb.shape == (32, 32, 3)\n"
            "import diffusers.models.modeling_utils\n"
            "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
