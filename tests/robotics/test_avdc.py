"""AVDC pieces: flow, tracking and the RANSAC rigid-motion fit on synthetic data with a known answer."""
import cv2
import numpy as np
import pytest
from scipy.interpolate import griddata

from robotics.avdc import fit_rigid_motions, optical_flow, track_points
from robotics.envs import backproject, project_points

K = np.array([[150.0, 0, 64], [0, 150.0, 64], [0, 0, 1]])


def look_at(eye, target):
    """OpenCV world->camera matrix of a camera at ``eye`` looking at ``target`` (world z up)."""
    z = (target - eye) / np.linalg.norm(target - eye)
    x = np.cross(z, [0, 0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    rot = np.stack([x, y, z])
    ext = np.eye(4)
    ext[:3, :3], ext[:3, 3] = rot, -rot @ eye
    return ext


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
