"""AVDC-style action extraction: video plan -> object motion in 3D -> subgoals -> position control.

1. Dense optical flow between consecutive plan frames (OpenCV Farneback, on 2x upsampled frames).
2. Object pixels from the segmentation mask of the current view (the task's object part, see
   ``robotics.envs.TASK_OBJECT``), lifted to 3D with depth and the camera matrix, tracked through the
   plan by chaining the flow. Flow loses small objects (a 5-pixel ball, a block) once the gripper
   covers them, so the tracks are re-anchored on the object's colour: a colour model P(object | colour)
   is learnt from the current frame (object mask vs. its surroundings), and in each plan frame where
   the flow-tracked centroid has left the nearest object-coloured blob, the tracks are moved onto it.
3. For each plan frame a rigid object motion: RANSAC-PnP (``cv2.solvePnPRansac``: 3D points of the
   first frame, their tracked pixels in frame k) picks the inlier tracks, then a robust least-squares
   refinement with a small-motion prior fixes what one camera cannot see (motion along the viewing ray).
4. Subgoals: the contact point (object centroid, 1.5 cm behind the visible surface) moved by each
   frame's motion. "Grasp" when it rises more than ``grasp_rise`` metres along the plan (AVDC: 0.1;
   0.08 here because a hammer is lifted only ~0.12 m and the estimate runs low), else "push".
5. A proportional position controller visits: above the contact point (or above a point behind it,
   for a push: behind along the first clear move, a third of the largest), the contact point, closes
   the gripper if grasping, then the subgoals in order. After a grasp the carry waypoints are shifted
   by where the hand actually closed (fingers stop on the table above the contact point), so the object
   hangs where the plan wants it. A waypoint the hand cannot reach because it is blocked by contact is
   skipped after 5 still steps.
6. Replans (see ``robotics.execution``) start from where the hand is: a hand at or holding the object
   moves by the object's planned motion; "holding" is read from the current observation (fingers held
   apart by an object, and the object's visible points near the hand); while holding, gripper and
   object are tracked as one body; an object hidden by the hand is tracked at the pose where the
   previous plan left it.

Pushes that are not presses are fitted as planar motions (yaw + horizontal shift, see
:func:`extract_object_motion`): 96 of 105 oracle episodes on the seven push tasks against 89 with the
free 6-DoF fit (5 seeds x 3 cameras). Evaluated and left off by default
(``AvdcFollower(whole_body=True)``): fitting the motion on the whole body a handle belongs to, which
lost episodes on the faucets in 5-seed comparisons.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from robotics.envs import CameraFrame, TaskEnv, backproject, project_points
from robotics.planners import Plan, plan_depth, plan_rgb

FARNEBACK = dict(pyr_scale=0.5, levels=4, winsize=11, iterations=5, poly_n=5, poly_sigma=1.1, flags=0)


def optical_flow(frames: np.ndarray, upsample: int = 2) -> np.ndarray:
    """Flow (T, H, W, 2) from frame t to t+1 for RGB frames (T+1, H, W, 3); flow[..., 0] is along u.

    Frames are upsampled before Farneback: small objects (a 6-pixel ball at 128x128) are tracked far
    better, at 4x the (small) cost.
    """
    height, width = frames.shape[1:3]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    if upsample > 1:
        size = (width * upsample, height * upsample)
        gray = [cv2.resize(g, size, interpolation=cv2.INTER_CUBIC) for g in gray]
    flows = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray[:-1], gray[1:])]
    if upsample > 1:
        flows = [cv2.resize(f, (width, height), interpolation=cv2.INTER_AREA) / upsample for f in flows]
    return np.stack(flows)


def track_points(points: np.ndarray, flows: np.ndarray) -> np.ndarray:
    """Pixel positions (N, 2) carried through consecutive flows -> tracks (T+1, N, 2)."""
    tracks = [np.asarray(points, dtype=np.float32)]
    for flow in flows:
        p = tracks[-1]
        map_x = p[:, 0].reshape(-1, 1).astype(np.float32)
        map_y = p[:, 1].reshape(-1, 1).astype(np.float32)
        # pixel (i, j) has its centre at (u, v) = (j + 0.5, i + 0.5)
        delta = cv2.remap(flow, map_x - 0.5, map_y - 0.5, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        tracks.append(p + delta.reshape(-1, 2))
    return np.stack(tracks)


def _refine_motion(points: np.ndarray, pixels: np.ndarray, intrinsics: np.ndarray,
                   world_to_camera: np.ndarray, previous: np.ndarray, motion_weight_px: float,
                   rotation_weight_px: float, planar: bool = False) -> np.ndarray:
    """Least-squares rigid motion: reprojection error (robust) plus a small-motion prior.

    Motion of a small object along the camera ray barely changes its image, so plain PnP lets it slide
    along the ray. The prior (``motion_weight_px`` pixels of cost per metre the centroid moves since the
    previous frame, ``rotation_weight_px`` per radian) resolves what the image cannot and is negligible
    for what it can. ``planar``: the motion is a rotation about the vertical and a horizontal translation
    (an object pushed on its support, a door or a faucet turning on a vertical hinge).
    """
    from scipy.optimize import least_squares

    centroid = points.mean(axis=0)
    prev_centroid = previous[:3, :3] @ centroid + previous[:3, 3]
    prev_rot = previous[:3, :3]
    scale = np.sqrt(len(points))

    def full(x):  # planar parameters (yaw, dx, dy) -> (rotation vector, translation)
        return np.array([0, 0, x[0], x[1], x[2], 0.0]) if planar else x

    def motion_of(f):  # (rotation vector, translation of the centroid) -> 4x4 motion
        m = np.eye(4)
        m[:3, :3] = cv2.Rodrigues(f[:3])[0] @ prev_rot
        m[:3, 3] = f[3:] + prev_centroid - m[:3, :3] @ centroid
        return m

    def residuals(x):
        f = full(x)
        m = motion_of(f)
        moved = points @ m[:3, :3].T + m[:3, 3]
        cam = moved @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
        uv = cam[:, :2] / cam[:, 2:3] * intrinsics[[0, 1], [0, 1]] + intrinsics[:2, 2]
        prior = scale * np.concatenate([rotation_weight_px * f[:3], motion_weight_px * f[3:]])
        return np.concatenate([(uv - pixels).ravel(), prior])

    fit = least_squares(residuals, np.zeros(3 if planar else 6), loss="soft_l1", f_scale=1.5, max_nfev=50)
    return motion_of(full(fit.x))


def fit_rigid_motions(points: np.ndarray, tracks: np.ndarray, intrinsics: np.ndarray,
                      world_to_camera: np.ndarray, reprojection_px: float = 2.0,
                      motion_weight_px: float = 20.0, rotation_weight_px: float = 5.0,
                      planar: bool = False) -> np.ndarray:
    """World-frame rigid motions (T+1, 4, 4) with ``M[k] @ p`` = where point ``p`` is in frame ``k``.

    ``points`` (N, 3) are world points seen in frame 0; ``tracks`` (T+1, N, 2) their pixels in each frame.
    Per frame, RANSAC-PnP (``cv2.solvePnPRansac``) picks the inlier tracks; the motion is then refined on
    the inliers with a robust loss and a small-motion prior (see :func:`_refine_motion`).
    """
    motions = [np.eye(4)]
    obj = np.ascontiguousarray(points, dtype=np.float64)
    for k in range(1, len(tracks)):
        image = np.ascontiguousarray(tracks[k], dtype=np.float64)
        pose = world_to_camera @ motions[-1]
        rvec, _ = cv2.Rodrigues(pose[:3, :3])
        tvec = pose[:3, 3].reshape(3, 1).copy()
        ok, _, _, inliers = cv2.solvePnPRansac(
            obj, image, intrinsics, None, rvec, tvec, useExtrinsicGuess=True, iterationsCount=100,
            reprojectionError=reprojection_px, confidence=0.99, flags=cv2.SOLVEPNP_ITERATIVE)
        keep = inliers.ravel() if ok and inliers is not None and len(inliers) >= 6 else np.arange(len(obj))
        motions.append(_refine_motion(obj[keep], image[keep], intrinsics, world_to_camera, motions[-1],
                                      motion_weight_px, rotation_weight_px, planar))
    return np.stack(motions)


def lift_tracks(tracks: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray,
                max_depth: float = 10.0, likely: np.ndarray | None = None,
                snap_radius: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Tracked pixels (T+1, N, 2) lifted to world points (T+1, N, 3) with each plan frame's depth
    (T+1, H, W), read at the pixel under the track (nearest: no depth blended across an edge); and
    whether each is usable (inside the image, finite depth below ``max_depth``: not the background).

    ``likely`` (T+1, H, W) bool: where each frame shows the object's colour. A track a few pixels off a
    small object reads the depth of the table behind it, tens of centimetres off; so a track not on an
    object-coloured pixel takes the depth of the nearest one within ``snap_radius`` pixels, and is
    unusable beyond that (the object hidden, or the track lost).
    """
    from scipy.ndimage import distance_transform_edt

    frames, height, width = depth.shape
    cols = np.floor(tracks[..., 0]).astype(int)
    rows = np.floor(tracks[..., 1]).astype(int)
    inside = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
    rows, cols = rows.clip(0, height - 1), cols.clip(0, width - 1)
    near = np.ones(rows.shape, bool)
    if likely is not None:
        rows, cols = rows.copy(), cols.copy()
        for k in range(frames):
            if likely[k].all():
                continue
            if not likely[k].any():
                near[k] = False
                continue
            dist, (nr, nc) = distance_transform_edt(~likely[k], return_indices=True)
            r, c = rows[k], cols[k]
            near[k] = dist[r, c] <= snap_radius
            rows[k], cols[k] = nr[r, c], nc[r, c]
    z = depth[np.arange(frames)[:, None], rows, cols].astype(np.float64)
    valid = inside & near & np.isfinite(z) & (z > 0) & (z < max_depth)
    z = np.where(valid, z, 1.0)
    points = np.stack([backproject(t, d, intrinsics, world_to_camera) for t, d in zip(tracks, z)])
    return points, valid


def kabsch(src: np.ndarray, dst: np.ndarray, planar: bool = False) -> np.ndarray:
    """The least-squares rigid motion (4, 4) taking points ``src`` (N, 3) onto ``dst`` (Kabsch/Umeyama
    without scale). ``planar``: a rotation about the vertical (z) axis and a horizontal translation."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    a, b = src - cs, dst - cd
    m = np.eye(4)
    if planar:
        # the yaw maximising sum of b_xy . R a_xy
        sin = np.sum(a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
        cos = np.sum(a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1])
        yaw = np.arctan2(sin, cos)
        m[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
        m[:3, 3] = cd - m[:3, :3] @ cs
        m[2, 3] = 0.0
        return m
    u, _, vt = np.linalg.svd(a.T @ b)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    m[:3, :3] = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    m[:3, 3] = cd - m[:3, :3] @ cs
    return m


def fit_rigid_motion_3d(src: np.ndarray, dst: np.ndarray, rng: np.random.Generator, planar: bool = False,
                        iterations: int = 64, inlier_distance: float = 0.01, trim_sigmas: float = 3.0,
                        refine: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A robust rigid motion taking ``src`` (N, 3) onto ``dst`` (N, 3) (corresponding points, some of
    them wrong): RANSAC over minimal samples (3 points, 2 when ``planar``) scored by the count of points
    within ``inlier_distance`` metres (the median residual breaks ties), then Kabsch on the inliers,
    repeated ``refine`` times with the inlier distance widened to ``trim_sigmas`` robust standard
    deviations of the inliers' residuals (noisy depth from a learned model: the threshold follows the
    noise). Returns the motion (4, 4) and the inlier mask."""
    n = len(src)
    if n < 3:
        m = np.eye(4)
        if n:
            m[:3, 3] = np.median(dst - src, axis=0)
            if planar:
                m[2, 3] = 0.0
        return m, np.ones(n, bool)
    size = 2 if planar else 3
    best, best_score = kabsch(src, dst, planar), None
    candidates = [best] + [kabsch(src[i], dst[i], planar) for i in
                           (rng.choice(n, size, replace=False) for _ in range(iterations))]
    for m in candidates:
        residual = np.linalg.norm(src @ m[:3, :3].T + m[:3, 3] - dst, axis=1)
        score = (int((residual < inlier_distance).sum()), -float(np.median(residual)))
        if best_score is None or score > best_score:
            best, best_score = m, score
    residual = np.linalg.norm(src @ best[:3, :3].T + best[:3, 3] - dst, axis=1)
    inliers = residual < inlier_distance
    for _ in range(refine):
        if inliers.sum() < size:
            break
        best = kabsch(src[inliers], dst[inliers], planar)
        residual = np.linalg.norm(src @ best[:3, :3].T + best[:3, 3] - dst, axis=1)
        sigma = 1.4826 * np.median(residual[inliers])
        inliers = residual < max(inlier_distance, trim_sigmas * sigma)
    return best, inliers


def fit_rigid_motions_3d(points: np.ndarray, valid: np.ndarray, seed: int = 0, planar: bool = False,
                         min_points: int = 3, **kwargs) -> np.ndarray:
    """World-frame rigid motions (T+1, 4, 4) from tracked 3-D points (T+1, N, 3) (``valid`` (T+1, N):
    which are usable): ``M[k]`` takes frame 0's points onto frame ``k``'s (see
    :func:`fit_rigid_motion_3d`). A frame with fewer than ``min_points`` usable correspondences (the
    object hidden) is interpolated between its neighbours that have them (translation; the rotation of
    the earlier one), or keeps the previous frame's motion when no later frame has them."""
    rng = np.random.default_rng(seed)
    motions: list[np.ndarray | None] = [np.eye(4)]
    for k in range(1, len(points)):
        both = valid[0] & valid[k]
        if both.sum() < min_points:
            motions.append(None)
            continue
        m, inliers = fit_rigid_motion_3d(points[0][both], points[k][both], rng, planar=planar, **kwargs)
        motions.append(m if inliers.sum() >= min_points else None)
    known = [k for k, m in enumerate(motions) if m is not None]
    centre = points[0][valid[0]].mean(axis=0) if valid[0].any() else np.zeros(3)
    for k, m in enumerate(motions):
        if m is None:
            b = max(j for j in known if j < k)
            later = [j for j in known if j > k]
            before, m = motions[b], motions[b].copy()
            if later:  # the points' centre moves on a straight line between the neighbouring frames
                a = later[0]
                w = (k - b) / (a - b)
                moved = (1 - w) * (before[:3, :3] @ centre + before[:3, 3]) + \
                    w * (motions[a][:3, :3] @ centre + motions[a][:3, 3])
                m[:3, 3] = moved - before[:3, :3] @ centre
            motions[k] = m
    return np.stack(motions)


def sample_object_pixels(mask: np.ndarray, depth: np.ndarray, count: int, rng: np.random.Generator,
                         erode: bool = True) -> np.ndarray:
    """Up to ``count`` pixel centres (u, v) inside ``mask`` (eroded when that leaves enough pixels)."""
    m = mask.astype(np.uint8)
    if erode:
        eroded = cv2.erode(m, np.ones((3, 3), np.uint8))
        if eroded.sum() >= 12:
            m = eroded
    rows, cols = np.nonzero(m & (depth < 10).astype(np.uint8))
    if len(rows) == 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(rows), size=min(count, len(rows)), replace=False)
    return np.stack([cols[pick] + 0.5, rows[pick] + 0.5], axis=1)


COLOR_BINS = 16  # per RGB channel, for the object's colour model


def _color_index(rgb: np.ndarray) -> np.ndarray:
    q = (rgb.astype(np.int32) * COLOR_BINS) // 256
    return (q[..., 0] * COLOR_BINS + q[..., 1]) * COLOR_BINS + q[..., 2]


def object_color_model(rgb: np.ndarray, mask: np.ndarray, window: int | None = None) -> np.ndarray:
    """P(object | colour) per colour bin, from the current frame: object-mask pixels vs the others
    (all others, or those within ``window`` pixels of the object's bounding box: its surroundings)."""
    index = _color_index(rgb)
    size = COLOR_BINS ** 3
    around = ~mask
    if window is not None and mask.any():
        rows, cols = np.nonzero(mask)
        near = np.zeros_like(mask)
        near[max(rows.min() - window, 0):rows.max() + window + 1,
             max(cols.min() - window, 0):cols.max() + window + 1] = True
        around = around & near
    inside = np.bincount(index[mask].ravel(), minlength=size).astype(np.float64)
    outside = np.bincount(index[around].ravel(), minlength=size).astype(np.float64)
    return inside / (inside + outside + 1.0)


def locate_by_color(frame: np.ndarray, model: np.ndarray, predicted: np.ndarray, radius: float,
                    min_pixels: int = 3, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray] | None:
    """The object-coloured blob nearest ``predicted`` (within ``radius`` px): its centroid (u, v) and
    bounding box (u0, v0, u1, v1), or None.

    The blob is a connected component of pixels whose colour is mostly seen on the object in the
    current frame; a blob too small (the object hidden by the hand) gives None.
    """
    likely = (model[_color_index(frame)] > threshold).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(likely, connectivity=8)
    best, best_dist = None, radius
    for label in range(1, count):
        if stats[label, cv2.CC_STAT_AREA] < min_pixels:
            continue
        centre = centroids[label] + 0.5  # pixel centres
        dist = float(np.linalg.norm(centre - predicted))
        if dist < best_dist:
            x, y, w, h = stats[label, :4]
            best, best_dist = (centre, np.array([x, y, x + w, y + h], dtype=np.float64)), dist
    return best


def track_points_by_color(points: np.ndarray, flows: np.ndarray, plan: np.ndarray, model: np.ndarray,
                          radius: float = 12.0, min_pixels: int = 3, margin: float = 1.0) -> np.ndarray:
    """Flow tracks (T+1, N, 2) re-anchored on the object's colour blob where the flow lost the object.

    Flow drifts off a small object that the gripper covers. After each flow step, if the tracked points'
    centroid has left the object-coloured blob nearest to it (within ``radius`` px) -- it lies outside
    the blob's bounding box grown by ``margin`` px -- the points are shifted onto the blob's centroid.
    Where the flow still sits on the object (large or elongated objects, followed well by the flow and
    partly hidden by the hand, which would bias a blob centroid) or no blob is found (the object
    hidden), they follow the flow. The next step's flow is sampled at the corrected positions.
    """
    tracks = [np.asarray(points, dtype=np.float32)]
    for k, flow in enumerate(flows, start=1):
        moved = track_points(tracks[-1], flow[None])[-1]
        predicted = moved.mean(axis=0)
        blob = locate_by_color(plan[k], model, predicted, radius, min_pixels)
        if blob is not None:
            centre, (u0, v0, u1, v1) = blob
            inside = u0 - margin <= predicted[0] <= u1 + margin and v0 - margin <= predicted[1] <= v1 + margin
            if not inside:
                moved = moved + (centre - predicted).astype(np.float32)
        tracks.append(moved)
    return np.stack(tracks)


def is_press(contact: np.ndarray, subgoals: np.ndarray, support_height: float = 0.0) -> bool:
    """Whether a push moves the contact point down more than sideways without sinking below the support
    (a button pressed from above), rather than sliding or turning the object on its support."""
    moved = subgoals - contact
    sink = -moved[:, 2].min()
    sideways = np.linalg.norm(moved[:, :2], axis=1).max()
    return bool(sink > sideways and contact[2] - sink > support_height)


@dataclass
class MotionSettings:
    """How :func:`extract_object_motion` reads a plan; the defaults are the measured ones.

    RGB-D plans: tracks are re-anchored on the object's colour within ``color_radius_rgbd`` pixels and read
    the depth of the nearest object-coloured pixel, when the colour tells the object apart in the whole
    view (``color_window_rgbd`` None; not a red handle by the red arm); the 3-D fit (RANSAC + trimmed
    Kabsch, options ``fit_3d`` of :func:`fit_rigid_motions_3d`) finds a grasp when the object rises by
    ``grasp_rise`` and stays up (by ``lasting_rise`` of it) to the plan's end. ``rgbd_pushes=True``: the
    3-D fit for pushes too (on the oracle it lost faucet episodes); ``rgb_grasp=False``: no grasp without a
    lift in depth (137 instead of 135 of 165 oracle episodes at 128x128, but a carry seen only in RGB is lost
    where the object is too small to track). ``use_plan_depth=False`` reads an RGB-D plan as an RGB one.
    """

    num_points: int = 300  # object pixels sampled and tracked
    grasp_rise: float = 0.08  # metres the contact point rises in a grasp-and-carry (AVDC: 0.1)
    min_pixels: int = 6  # fewer visible object pixels: the previous plan's believed points are used
    surface_to_centre: float = 0.015  # the contact point lies this far behind the visible surface
    motion_weight_px: float = 20.0  # the reprojection fit's small-motion prior
    color_correct: bool = True  # re-anchor flow tracks on the object's colour (RGB plans)
    planar_push: bool = True  # a push that is not a press is fitted as yaw + horizontal shift
    color_window: int | None = 12  # the RGB colour model's surroundings (pixels around the object's box)
    support_height: float = 0.0  # a press does not sink the object below this height
    use_plan_depth: bool = True
    color_radius: float = 12.0
    color_radius_rgbd: float = 20.0
    color_window_rgbd: int | None = None
    lasting_rise: float = 0.5
    rgbd_pushes: bool = False
    rgb_grasp: bool = True
    fit_3d: dict = field(default_factory=dict)


def _rgbd_motions(plan, depth, view, mask, pixels, flows, settings: MotionSettings, seed, planar=False) -> np.ndarray:
    """The object's motions (T+1, 4, 4) from an RGB-D plan: tracks (flow, re-anchored on the object's
    colour when it tells the object apart in the view) lifted with each frame's depth, snapped onto
    object-coloured pixels, and a robust 3-D rigid fit per frame (see :func:`extract_object_motion`)."""
    likely = None
    if settings.color_correct and mask.any():
        # the colour model against the whole view (window None): a colour the object shares with
        # something else in view (a red handle and the red arm) does not tell the object apart
        model = object_color_model(view.rgb, mask, settings.color_window_rgbd)
        likely = model[_color_index(plan)] > 0.5  # where each plan frame shows the object's colour
        if likely[0][mask].mean() >= 0.5:
            tracks = track_points_by_color(pixels, flows, plan, model, radius=settings.color_radius_rgbd)
            likely[0] = True  # frame 0: the mask's own points
        else:
            tracks, likely = track_points(pixels, flows), None
    else:
        tracks = track_points(pixels, flows)
    lifted, valid = lift_tracks(tracks, depth, view.intrinsics, view.world_to_camera, likely=likely)
    fit_3d = dict(settings.fit_3d, planar=True) if planar else settings.fit_3d
    return fit_rigid_motions_3d(lifted, valid, seed=seed, **fit_3d)


@dataclass
class ObjectMotionPlan:
    """What the extractor reads from one video plan."""

    motions: np.ndarray     # (T+1, 4, 4) world-frame rigid motions of the object
    contact: np.ndarray     # (3,) contact / grasp point on the object, world frame
    subgoals: np.ndarray    # (T+1, 3) contact point moved by each motion
    grasp: bool             # grasp-and-carry (object rises) or push
    points: np.ndarray      # (N, 3) object points used


@dataclass
class _Reading:
    """One plan being read: its frames and flow, the object's tracked pixels and 3-D points, the contact."""

    plan: np.ndarray
    view: CameraFrame
    mask: np.ndarray
    pixels: np.ndarray  # (N, 2) tracked pixels in the view
    points: np.ndarray  # (N, 3) their 3-D points
    part_points: np.ndarray  # the touched part's points (the contact is their centroid)
    contact: np.ndarray
    flows: np.ndarray

    def moved(self, motions: np.ndarray) -> np.ndarray:
        return motions[:, :3, :3] @ self.contact + motions[:, :3, 3]

    def plan_of(self, motions: np.ndarray, grasp: bool) -> ObjectMotionPlan:
        return ObjectMotionPlan(motions, self.contact, self.moved(motions), grasp, self.part_points)


def extract_object_motion(plan: Plan, view: CameraFrame, mask: np.ndarray, settings: MotionSettings | None = None, *,
                          seed: int = 0, believed_points: np.ndarray | None = None,
                          body_mask: np.ndarray | None = None, held: bool = False) -> ObjectMotionPlan:
    """Object motion and subgoals from a plan whose first frame is ``view`` (depth + camera needed).

    An RGB-D plan (:class:`~robotics.planners.RgbdPlan`, at the view's resolution) is read with its depth:
    each frame's tracked object pixels are lifted to 3-D with that frame's depth, and each frame's motion is
    a robust 3-D rigid fit from frame 0's lifted points to frame k's, instead of the reprojection fit, which
    cannot see motion along the viewing ray (both ends lifted with the plan's depth, so a consistently biased
    depth cancels out). A grasped or ``held`` object follows the 3-D motion. Otherwise the plan is read as
    an RGB plan (the reprojection fit and its grasp / press / planar-push decision): on its support a pushed
    object's motion is well posed without depth, depth read where tracks slip off a thin handle onto the arm
    or table misleads, and an object too small to track in a low-resolution plan gives depth no evidence.

    ``mask`` is the part to touch (a handle); ``body_mask`` (default: ``mask``) the rigid body it belongs
    to, whose larger image gives the motion fit more points to work with. When too few object pixels are
    visible (the hand covers the object, typically at a replan), ``believed_points`` -- where the previous
    plan left the object -- are used instead: their projections are tracked, which follows whatever covers
    them (the hand pushing or holding it). A plan in which the object does not rise by ``grasp_rise`` is a
    push: a press (the object sinks more than it moves sideways and stays above ``support_height``: a
    button pressed from above) or a slide or turn on its support (``planar_push``: a rotation about the
    vertical plus a horizontal translation, which removes the motion along the viewing ray that one camera
    cannot see; an unconstrained fit can sink a door handle through the table). ``settings``: see
    :class:`MotionSettings`.
    """
    settings = settings or MotionSettings()
    if view.depth is None:
        raise ValueError("the view must be rendered with depth=True")
    depth = plan_depth(plan) if settings.use_plan_depth else None
    rgb = plan_rgb(plan)
    if depth is not None and depth.shape != rgb.shape[:3]:
        raise ValueError(f"plan depth {depth.shape} does not match its frames {rgb.shape[:3]}")
    reading = _read_plan(rgb, view, mask, settings, np.random.default_rng(seed), believed_points, body_mask)
    if depth is not None:  # RGB-D plan: 3-D points in every frame
        motion = _rgbd_motion(reading, depth, settings, seed, held)
        if motion is not None:
            return motion
        # no lasting lift in depth: what the RGB plan alone gives (below)
    return _rgb_motion(reading, settings, rgb_grasp=depth is None or settings.rgb_grasp)


def _read_plan(plan: np.ndarray, view: CameraFrame, mask: np.ndarray, settings: MotionSettings,
               rng: np.random.Generator, believed_points, body_mask) -> _Reading:
    """The object's pixels to track (the body's, else the part's, else the believed points' projections),
    their 3-D points, the plan's flow and the contact point a little behind the part's visible surface."""
    def lift(pixels):
        depth = view.depth[(pixels[:, 1] - 0.5).astype(int), (pixels[:, 0] - 0.5).astype(int)]
        return backproject(pixels, depth, view.intrinsics, view.world_to_camera)

    enough = settings.min_pixels
    part_pixels = sample_object_pixels(mask, view.depth, settings.num_points, rng)
    part_points = lift(part_pixels) if len(part_pixels) >= enough else None
    body_pixels = np.zeros((0, 2))
    if body_mask is not None and part_points is not None:
        body_pixels = sample_object_pixels(body_mask, view.depth, settings.num_points, rng)
    if len(body_pixels) >= enough:
        pixels, points = body_pixels, lift(body_pixels)
    elif part_points is not None:
        pixels, points = part_pixels, part_points
    elif believed_points is not None and len(believed_points) >= enough:
        points = part_points = believed_points
        pixels = project_points(points, view.intrinsics, view.world_to_camera)
    else:
        raise RuntimeError(f"object not visible: {len(part_pixels)} object pixels in the current view")
    # the visible points lie on the object's camera-facing surface: aim a little behind them
    camera_centre = -view.world_to_camera[:3, :3].T @ view.world_to_camera[:3, 3]
    centroid = part_points.mean(axis=0)
    ray = (centroid - camera_centre) / np.linalg.norm(centroid - camera_centre)
    contact = centroid + settings.surface_to_centre * ray
    return _Reading(plan, view, mask, pixels, points, part_points, contact, optical_flow(plan))


def _rgbd_motion(r: _Reading, depth: np.ndarray, settings: MotionSettings, seed: int,
                 held: bool) -> ObjectMotionPlan | None:
    """The 3-D motion of a grasped (lifted for good) or ``held`` object, or of any object with
    ``rgbd_pushes``; None where the RGB reading decides (no lasting lift)."""
    motions = _rgbd_motions(r.plan, depth, r.view, r.mask, r.pixels, r.flows, settings, seed)
    rise = r.moved(motions)[:, 2] - r.contact[2]
    # lifted, and up from then to the end of the plan (by ``lasting_rise`` of the threshold: an object
    # is also put down); tracks that slip onto the arm for a frame or two make a rise that does not last
    lifted = np.nonzero(rise > settings.grasp_rise)[0]
    grasp = bool(len(lifted) and (rise[lifted[0]:] > settings.grasp_rise * settings.lasting_rise).all())
    if grasp or held:  # carried: the 3-D motion, along the viewing ray too
        return r.plan_of(motions, grasp)
    if not settings.rgbd_pushes:  # a push stays on its support: the RGB reading is well posed there
        return None
    if settings.planar_push and not is_press(r.contact, r.moved(motions), settings.support_height):
        motions = _rgbd_motions(r.plan, depth, r.view, r.mask, r.pixels, r.flows, settings, seed, planar=True)
    return r.plan_of(motions, grasp)


def _rgb_motion(r: _Reading, settings: MotionSettings, rgb_grasp: bool) -> ObjectMotionPlan:
    """The reprojection fit of the tracks (re-anchored on the object's colour), read as a grasp when the
    contact point rises by ``grasp_rise``, else as a press or (``planar_push``) a planar push."""
    if settings.color_correct and r.mask.any():  # as measured for RGB plans
        model = object_color_model(r.view.rgb, r.mask, settings.color_window)
        tracks = track_points_by_color(r.pixels, r.flows, r.plan, model, radius=settings.color_radius)
    else:
        tracks = track_points(r.pixels, r.flows)

    def fit(planar=False):
        return fit_rigid_motions(r.points, tracks, r.view.intrinsics, r.view.world_to_camera, planar=planar,
                                 motion_weight_px=settings.motion_weight_px)

    motions = fit()
    grasp = bool(r.moved(motions)[:, 2].max() - r.contact[2] > settings.grasp_rise) and rgb_grasp
    if settings.planar_push and not grasp and not is_press(r.contact, r.moved(motions), settings.support_height):
        motions = fit(planar=True)
    return r.plan_of(motions, grasp)


class AvdcFollower:
    """Turns an :class:`ObjectMotionPlan` into actions with a proportional position controller."""

    needs_depth = True
    needs_rgb_every_step = False
    uses_plan_depth = True  # RGB-D plans arrive as RgbdPlan (see robotics.execution)

    def __init__(self, gain: float = 10.0, reach_tolerance: float = 0.02, approach_height: float = 0.1,
                 push_offset: float = 0.05, grasp_steps: int = 10, holding_distance: float = 0.03,
                 blocked_steps: int = 5, min_held_aperture: float = 0.05, whole_body: bool = False,
                 push_direction_fraction: float = 0.33, motion: MotionSettings | None = None):
        self.motion_settings = motion or MotionSettings()  # how plans are read (extract_object_motion)
        self.push_direction_fraction = push_direction_fraction
        self.whole_body = whole_body
        self.gain = gain
        self.min_held_aperture = min_held_aperture
        self.blocked_steps = blocked_steps
        self.holding_distance = holding_distance
        self.reach_tolerance = reach_tolerance
        self.approach_height = approach_height
        self.push_offset = push_offset
        self.grasp_steps = grasp_steps
        self.motion: ObjectMotionPlan | None = None
        self._waypoints: list[tuple[np.ndarray, float]] = []
        self._closing = 0
        self._plans = 0
        self._grasped = False  # the gripper closed on the object and has not let go since
        self._last_hand: np.ndarray | None = None
        self._blocked = 0

    def start(self, env: TaskEnv, view: CameraFrame, plan: Plan) -> None:
        self._plans += 1
        believed = None
        if self.motion is not None:  # where the previous plan left the object
            last = self.motion.motions[-1]
            believed = self.motion.points @ last[:3, :3].T + last[:3, 3]
        hand = env.hand_position
        mask = env.object_mask(view)
        holding = self._grasped and self._still_holding(env, view, mask, hand)
        body = env.object_body_mask(view) if self.whole_body else mask
        if holding:  # gripper and grasped object move as one rigid body: track both
            mask = mask | env.gripper_mask(view)
            body = body | mask
        settings = self.motion_settings
        if holding:  # the hand hides the object's colour: follow the flow alone
            settings = replace(settings, color_correct=False)
        self.motion = extract_object_motion(plan, view, mask, settings, seed=self._plans, believed_points=believed,
                                            body_mask=body, held=holding)
        self._grasped = holding
        self._waypoints = self._route(hand, self.motion, holding)
        self._closing = 0

    def _still_holding(self, env: TaskEnv, view: CameraFrame, mask: np.ndarray, hand: np.ndarray) -> bool:
        """Whether the object grasped earlier is still in the hand, from the current observation.

        The fingers stopped by an object stay apart (proprioception: the gripper opening in the state);
        and the object's visible points, when any, must lie near the hand.
        """
        aperture = float(env.state[3]) if env.state is not None else 1.0
        if aperture < self.min_held_aperture:
            return False
        rows, cols = np.nonzero(mask & (view.depth < 10))
        if len(rows) >= 3:
            pixels = np.stack([cols + 0.5, rows + 0.5], axis=1)
            points = backproject(pixels, view.depth[rows, cols], view.intrinsics, view.world_to_camera)
            return bool(np.linalg.norm(points.mean(axis=0) - hand) < 3 * self.holding_distance)
        return True

    def _route(self, hand: np.ndarray, motion: ObjectMotionPlan, holding: bool) -> list:
        """(target, gripper effort) waypoints: approach, contact, then the subgoals."""
        contact, goals = motion.contact, motion.subgoals[1:]
        up = np.array([0.0, 0.0, self.approach_height])
        if holding or np.linalg.norm(hand - contact) < self.holding_distance:
            # hand already at (or holding) the object, as at a replan: move the hand as the object moves
            return [(g + hand - contact, 1.0) for g in goals]
        if motion.grasp:
            route = [(contact + up, -1.0), (contact, -1.0), (contact, None)]
            return route + [(g, 1.0) for g in goals]
        moved = goals - contact
        # push direction: the first clear move (a third of the largest), not the first centimetre,
        # which is often noise from the hand arriving over the object
        distance = np.linalg.norm(moved, axis=1)
        far = distance > max(0.01, self.push_direction_fraction * distance.max(initial=0.0))
        direction = moved[np.argmax(far)] if far.any() else np.zeros(3)
        direction = direction / max(np.linalg.norm(direction), 1e-9)
        behind = contact - self.push_offset * direction
        return [(behind + up, 1.0), (behind, 1.0)] + [(g, 1.0) for g in goals]

    @property
    def holding_still(self) -> bool:
        """True while the hand stays put on purpose (closing the gripper): not "stuck"."""
        return bool(self._waypoints) and self._waypoints[0][1] is None

    def act(self, env: TaskEnv, state: np.ndarray, rgb=None) -> np.ndarray:
        hand = state[:3]
        moved = np.linalg.norm(hand - self._last_hand) if self._last_hand is not None else 1.0
        self._last_hand = hand.copy()
        self._blocked = self._blocked + 1 if moved < 5e-4 else 0
        if self._blocked >= self.blocked_steps and len(self._waypoints) > 1 and not self.holding_still:
            # blocked by contact (fingers on the object, a handle at its end stop): take the next waypoint
            self._waypoints.pop(0)
            self._blocked = 0
        while self._waypoints:
            target, effort = self._waypoints[0]
            if effort is None:  # closing the gripper in place
                if self._closing < self.grasp_steps:
                    self._closing += 1
                    return self._action(hand, target, 1.0)
                self._grasped = True
                self._waypoints.pop(0)
                # the object hangs where the hand closed on it, not where the plan put the contact point
                # (fingers stop on the table or the object): carry with the hand at that offset
                offset = hand - target
                self._waypoints = [(t + offset, e) for t, e in self._waypoints]
                continue
            if np.linalg.norm(target - hand) < self.reach_tolerance and len(self._waypoints) > 1:
                self._waypoints.pop(0)
                continue
            return self._action(hand, target, effort)
        return np.zeros(4, dtype=np.float32)

    def _action(self, hand: np.ndarray, target: np.ndarray, effort: float) -> np.ndarray:
        delta = np.clip(self.gain * (target - hand), -1.0, 1.0)
        return np.append(delta, effort).astype(np.float32)
