"""AVDC pieces: flow, tracking and the RANSAC rigid-motion fit on synthetic data with a known answer."""
import cv2
import numpy as np
import pytest
from scipy.interpolate import griddata

from robotics.avdc import fit_rigid_motions, is_press, optical_flow, track_points
from robotics.envs import backproject, project_points

from .cameras import K, look_at


def motion(angle_deg, translation, centre):
    """Rotation about the vertical axis through ``centre``, then a translation."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = rot, centre - rot @ centre + translation
    return m


def test_optical_flow_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 255, (160, 160, 3), dtype=np.uint8), (5, 5), 0)
    a, b = base[16:144, 16:144], base[18:146, 13:141]  # content moves by (u, v) = (+3, -2)
    flow = optical_flow(np.stack([a, b]))[0]
    centre = flow[32:96, 32:96].reshape(-1, 2)
    np.testing.assert_allclose(np.median(centre, axis=0), [3, -2], atol=0.3)


@pytest.mark.parametrize("outliers", [0.0, 0.2])
def test_rigid_fit_recovers_known_motion_from_synthetic_flow(outliers):
    rng = np.random.default_rng(1)
    ext = look_at(np.array([0.0, -0.9, 0.6]), np.array([0.0, 0.0, 0.05]))
    # an object seen in frame 0: a 50x50-pixel patch whose depth varies (a bumpy, tilted surface)
    rows, cols = np.mgrid[40:90, 40:90]
    pixels = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1)
    cam_dist = np.linalg.norm(ext[:3, 3])
    depth = cam_dist + 0.001 * (cols.ravel() - 64) + 0.04 * np.sin(rows.ravel() / 6.0)
    points = backproject(pixels, depth, K, ext)
    centre = points.mean(0)
    truth = [motion(12 * k / 7, np.array([0.06, 0.03, 0.10]) * k / 7, centre) for k in range(8)]
    positions = [project_points(points @ m[:3, :3].T + m[:3, 3], K, ext) for m in truth]
    # dense flow fields: the object's image motion interpolated over the whole image (zero outside)
    grid = np.stack(np.meshgrid(np.arange(128) + 0.5, np.arange(128) + 0.5), -1).reshape(-1, 2)
    flows = []
    for k in range(7):
        disp = positions[k + 1] - positions[k]
        dense = griddata(positions[k], disp, grid, method="linear", fill_value=0.0)
        flows.append(dense.reshape(128, 128, 2).astype(np.float32))
    flows = np.stack(flows)
    sample = pixels[rng.choice(len(pixels), 300, replace=False)]
    tracks = track_points(sample, flows)
    if outliers:  # corrupt a fifth of the tracks, as occlusions would
        bad = rng.random(len(sample)) < outliers
        tracks[1:, bad] += rng.normal(0, 8, size=tracks[1:, bad].shape)
    sample_depth = cam_dist + 0.001 * (sample[:, 0] - 0.5 - 64) + 0.04 * np.sin((sample[:, 1] - 0.5) / 6.0)
    sample_points = backproject(sample, sample_depth, K, ext)
    fitted = fit_rigid_motions(sample_points, tracks, K, ext)
    assert fitted.shape == (8, 4, 4)
    np.testing.assert_allclose(fitted[0], np.eye(4), atol=1e-9)
    for m_true, m_fit in zip(truth, fitted):
        moved_true = centre @ m_true[:3, :3].T + m_true[:3, 3]
        moved_fit = centre @ m_fit[:3, :3].T + m_fit[:3, 3]
        assert np.linalg.norm(moved_true - moved_fit) < 0.01  # < 1 cm
        cos = (np.trace(m_true[:3, :3].T @ m_fit[:3, :3]) - 1) / 2
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))) < 2.0


def test_track_points_follows_constant_flow():
    flows = np.zeros((3, 32, 32, 2), np.float32)
    flows[..., 0], flows[..., 1] = 1.5, -0.5
    tracks = track_points(np.array([[10.5, 10.5], [20.5, 5.5]]), flows)
    np.testing.assert_allclose(tracks[-1], [[15.0, 9.0], [25.0, 4.0]], atol=1e-5)


def _scene_with_ball(centre_uv, size=128):
    """A grey textured background with an orange 5x5 'ball' at ``centre_uv`` (u, v)."""
    rng = np.random.default_rng(3)
    img = np.full((size, size, 3), 120, np.uint8) + rng.integers(0, 20, (size, size, 3), dtype=np.uint8)
    u, v = int(centre_uv[0]), int(centre_uv[1])
    img[v - 2:v + 3, u - 2:u + 3] = (230, 120, 20)
    return img


def test_color_model_and_blob_location():
    from robotics.avdc import locate_by_color, object_color_model

    first = _scene_with_ball((40, 40))
    mask = np.zeros(first.shape[:2], bool)
    mask[38:43, 38:43] = True
    model = object_color_model(first, mask, window=12)
    assert model.shape == (16 ** 3,)
    later = _scene_with_ball((50, 44))
    centre, box = locate_by_color(later, model, predicted=np.array([46.0, 42.0]), radius=12)
    np.testing.assert_allclose(centre, [50.5, 44.5], atol=0.01)
    np.testing.assert_array_equal(box, [48, 42, 53, 47])
    assert locate_by_color(later, model, predicted=np.array([100.0, 100.0]), radius=12) is None


def test_tracks_re_anchored_on_the_object_when_flow_loses_it():
    from robotics.avdc import object_color_model, track_points_by_color

    positions = [(40, 40), (48, 42), (56, 44)]
    plan = np.stack([_scene_with_ball(p) for p in positions])
    mask = np.zeros(plan.shape[1:3], bool)
    mask[38:43, 38:43] = True
    model = object_color_model(plan[0], mask, window=12)
    flows = np.zeros((2, 128, 128, 2), np.float32)  # a flow that lost the ball: nothing moves
    points = np.array([[39.5, 39.5], [41.5, 41.5], [40.5, 40.5]])
    tracks = track_points_by_color(points, flows, plan, model)
    assert tracks.shape == (3, 3, 2)
    np.testing.assert_allclose(tracks[-1].mean(axis=0), [56.5, 44.5], atol=0.01)
    # a flow that stays on the object is left alone (no blob-centroid bias on large, occluded objects)
    good = np.zeros_like(flows)
    good[..., 0], good[..., 1] = 8.0, 2.0
    tracks = track_points_by_color(points, good, plan, model)
    np.testing.assert_allclose(tracks[-1], points + [16.0, 4.0], atol=1e-4)


def test_planar_fit_recovers_a_hinge_rotation_seen_from_one_camera():
    """A door-like panel turning about a vertical axis: the planar fit (yaw + shift) recovers it."""
    ext = look_at(np.array([0.9, -0.6, 0.7]), np.array([0.0, 0.2, 0.1]))
    rows, cols = np.mgrid[50:80, 40:90]
    pixels = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1).astype(float)
    depth = np.linalg.norm(ext[:3, 3]) + 0.002 * (cols.ravel() - 64)
    points = backproject(pixels, depth, K, ext)
    hinge = points[np.argmin(points[:, 0])]
    truth = [motion(-25 * k / 5, np.zeros(3), hinge) for k in range(6)]
    tracks = np.stack([project_points(points @ m[:3, :3].T + m[:3, 3], K, ext) for m in truth])
    fitted = fit_rigid_motions(points, tracks, K, ext, planar=True)
    far = points[np.argmax(points[:, 0])]
    for m_true, m_fit in zip(truth, fitted):
        np.testing.assert_allclose(m_fit[2, :3], [0, 0, 1], atol=1e-9)  # no tilt: rotation about z only
        moved_true = m_true[:3, :3] @ far + m_true[:3, 3]
        assert np.linalg.norm(moved_true - (m_fit[:3, :3] @ far + m_fit[:3, 3])) < 0.01


def test_a_press_sinks_above_its_support_and_anything_else_is_a_planar_push():
    path = np.linspace(0, 1, 6)[:, None]
    button = np.array([0.0, 0.8, 0.12])
    assert is_press(button, button + path * [0.0, 0.01, -0.05])          # pressed 5 cm from above
    handle = np.array([0.2, 0.7, 0.15])
    # a door handle "sinking" 20 cm would go through the table at z = 0: the free fit's ray error
    assert not is_press(handle, handle + path * [-0.1, 0.0, -0.2])
    assert not is_press(handle, handle + path * [-0.2, 0.1, -0.05])      # mostly sideways: a slide
    assert is_press(handle, handle + path * [0.0, 0.0, -0.1], support_height=0.0)
    assert not is_press(handle, handle + path * [0.0, 0.0, -0.1], support_height=0.1)
