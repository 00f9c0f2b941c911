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

from dataclasses import dataclass

import cv2
import numpy as np

from robotics.envs import CameraFrame, TaskEnv, backproject, project_points

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
class ObjectMotionPlan:
    """What the extractor reads from one video plan."""

    motions: np.ndarray     # (T+1, 4, 4) world-frame rigid motions of the object
    contact: np.ndarray     # (3,) contact / grasp point on the object, world frame
    subgoals: np.ndarray    # (T+1, 3) contact point moved by each motion
    grasp: bool             # grasp-and-carry (object rises) or push
    points: np.ndarray      # (N, 3) object points used


def extract_object_motion(plan: np.ndarray, view: CameraFrame, mask: np.ndarray, num_points: int = 300,
                          grasp_rise: float = 0.08, seed: int = 0, believed_points: np.ndarray | None = None,
                          min_pixels: int = 6, surface_to_centre: float = 0.015,
                          motion_weight_px: float = 20.0, color_correct: bool = True,
                          planar_push: bool = True, body_mask: np.ndarray | None = None,
                          color_window: int | None = 12, support_height: float = 0.0) -> ObjectMotionPlan:
    """Object motion and subgoals from a plan whose first frame is ``view`` (depth + camera needed).

    ``mask`` is the part to touch (a handle); ``body_mask`` (default: ``mask``) the rigid body it belongs
    to, whose larger image gives the motion fit more points to work with.
    When fewer than ``min_pixels`` object pixels are visible (the hand covers the object, typically at a
    replan), ``believed_points`` -- where the previous plan left the object -- are used instead: their
    projections are tracked, which follows whatever covers them (the hand pushing or holding it).
    A plan in which the object does not rise by ``grasp_rise`` is a push. A push is either a press (the
    object sinks more than it moves sideways, and stays above the support at ``support_height``: a
    button pressed from above) or a slide or turn on its support (``planar_push``): the fit is then a
    rotation about the vertical plus a horizontal translation, which removes the motion along the viewing
    ray that one camera cannot see (an unconstrained fit can sink a door handle through the table).
    """
    if view.depth is None:
        raise ValueError("the view must be rendered with depth=True")
    rng = np.random.default_rng(seed)

    def lift(pixels):
        depth = view.depth[(pixels[:, 1] - 0.5).astype(int), (pixels[:, 0] - 0.5).astype(int)]
        return backproject(pixels, depth, view.intrinsics, view.world_to_camera)

    part_pixels = sample_object_pixels(mask, view.depth, num_points, rng)
    part_points = lift(part_pixels) if len(part_pixels) >= min_pixels else None
    body_pixels = np.zeros((0, 2))
    if body_mask is not None and part_points is not None:
        body_pixels = sample_object_pixels(body_mask, view.depth, num_points, rng)
    if len(body_pixels) >= min_pixels:
        pixels, points = body_pixels, lift(body_pixels)
    elif part_points is not None:
        pixels, points = part_pixels, part_points
    elif believed_points is not None and len(believed_points) >= min_pixels:
        points = part_points = believed_points
        pixels = project_points(points, view.intrinsics, view.world_to_camera)
    else:
        raise RuntimeError(f"object not visible: {len(part_pixels)} object pixels in the current view")
    flows = optical_flow(plan)
    if color_correct and mask.any():
        model = object_color_model(view.rgb, mask, color_window)
        tracks = track_points_by_color(pixels, flows, plan, model)
    else:
        tracks = track_points(pixels, flows)
    # the visible points lie on the object's camera-facing surface: aim a little behind them
    camera_centre = -view.world_to_camera[:3, :3].T @ view.world_to_camera[:3, 3]
    centroid = part_points.mean(axis=0)
    ray = (centroid - camera_centre) / np.linalg.norm(centroid - camera_centre)
    contact = centroid + surface_to_centre * ray
    kw = dict(motion_weight_px=motion_weight_px)
    motions = fit_rigid_motions(points, tracks, view.intrinsics, view.world_to_camera, **kw)
    subgoals = motions[:, :3, :3] @ contact + motions[:, :3, 3]
    grasp = bool(subgoals[:, 2].max() - contact[2] > grasp_rise)
    if planar_push and not grasp and not is_press(contact, subgoals, support_height):
        motions = fit_rigid_motions(points, tracks, view.intrinsics, view.world_to_camera, planar=True, **kw)
        subgoals = motions[:, :3, :3] @ contact + motions[:, :3, 3]
    return ObjectMotionPlan(motions, contact, subgoals, grasp, part_points)


class AvdcFollower:
    """Turns an :class:`ObjectMotionPlan` into actions with a proportional position controller."""

    needs_depth = True
    needs_rgb_every_step = False

    def __init__(self, gain: float = 10.0, reach_tolerance: float = 0.02, approach_height: float = 0.1,
                 push_offset: float = 0.05, grasp_steps: int = 10, grasp_rise: float = 0.08,
                 num_points: int = 300, motion_weight_px: float = 20.0, holding_distance: float = 0.03,
                 blocked_steps: int = 5, min_held_aperture: float = 0.05, planar_push: bool = True,
                 whole_body: bool = False, color_correct: bool = True,
                 push_direction_fraction: float = 0.33):
        self.color_correct = color_correct
        self.push_direction_fraction = push_direction_fraction
        self.planar_push = planar_push
        self.whole_body = whole_body
        self.gain = gain
        self.min_held_aperture = min_held_aperture
        self.blocked_steps = blocked_steps
        self.holding_distance = holding_distance
        self.motion_weight_px = motion_weight_px
        self.reach_tolerance = reach_tolerance
        self.approach_height = approach_height
        self.push_offset = push_offset
        self.grasp_steps = grasp_steps
        self.grasp_rise = grasp_rise
        self.num_points = num_points
        self.motion: ObjectMotionPlan | None = None
        self._waypoints: list[tuple[np.ndarray, float]] = []
        self._closing = 0
        self._plans = 0
        self._grasped = False  # the gripper closed on the object and has not let go since
        self._last_hand: np.ndarray | None = None
        self._blocked = 0

    def start(self, env: TaskEnv, view: CameraFrame, plan: np.ndarray) -> None:
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
        self.motion = extract_object_motion(plan, view, mask, self.num_points,
                                            self.grasp_rise, seed=self._plans, believed_points=believed,
                                            motion_weight_px=self.motion_weight_px, body_mask=body,
                                            planar_push=self.planar_push,
                                            color_correct=self.color_correct and not holding)
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
