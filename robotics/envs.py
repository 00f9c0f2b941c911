"""MetaWorld v3 tasks with a camera: seeded environments and offscreen RGB / depth / segmentation.

`make_env(env_task, camera, resolution)` returns a :class:`TaskEnv`. Its :meth:`TaskEnv.render` gives a
:class:`CameraFrame` holding the image(s) and the camera matrices in the OpenCV convention
(x right, y down, z forward), so ``K @ (R @ p + t)`` projects a world point ``p`` to pixel ``(u, v)``.

MetaWorld's ``corner*`` cameras are mounted with their up axis pointing down, so raw images are
upside down. Any camera whose up axis points below the horizon is rotated by 180 degrees here, and the
returned extrinsics describe the rotated camera, so images and matrices always agree.
"""
from __future__ import annotations

import robotics  # noqa: F401  (sets MUJOCO_GL before mujoco is imported)

from dataclasses import dataclass, field

import numpy as np

from gencond.errors import UserError

BENCHMARK_TASKS = (
    "door-open", "door-close", "basketball", "shelf-place", "button-press", "button-press-topdown",
    "faucet-close", "faucet-open", "handle-press", "hammer", "assembly",
)
CAMERAS = ("corner", "corner2", "corner3")
MAX_EPISODE_STEPS = 500

# The part whose motion the task is about (the "object" of AVDC's action extraction): a body (with every
# body below it) and optionally only its geoms of given names or MuJoCo geom types (3 = capsule). For
# tasks not listed, the first non-robot body with a joint is used.
TASK_OBJECT = {
    "door-open": ("door_link", {"names": ("handle",)}), "door-close": ("door_link", {}),
    "basketball": ("bsktball", {}), "shelf-place": ("obj", {}), "button-press": ("button", {}),
    "button-press-topdown": ("button", {}), "faucet-close": ("faucet_link2", {"types": (3,)}),
    "faucet-open": ("faucet_link2", {"types": (3,)}), "handle-press": ("handle_link", {}),
    "hammer": ("hammerbody", {"names": ("HammerHandle",)}),
    "assembly": ("RoundNut", {"names": ("WrenchHandle",)}),
}


def all_env_tasks() -> list[str]:
    """Every MetaWorld v3 task name (without the ``-v3`` suffix)."""
    import metaworld

    keys = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
    return sorted(k[: -len("-v3-goal-observable")] for k in keys)


def check_env_task(env_task: str) -> str:
    """Return ``env_task`` (a MetaWorld task name) or raise a one-line error listing the valid names."""
    valid = all_env_tasks()
    if env_task not in valid:
        raise UserError(f"unknown task '{env_task}'; valid tasks: {', '.join(valid)}")
    return env_task


def check_camera(camera: str) -> str:
    """Return ``camera`` or raise a one-line error listing the valid names."""
    if camera not in CAMERAS:
        raise UserError(f"unknown camera '{camera}'; valid cameras: {', '.join(CAMERAS)}")
    return camera


def instruction_of(env_task: str) -> str:
    """The natural-language instruction used as a planner's text condition (AVDC: the name in words)."""
    return env_task.replace("-", " ")


@dataclass
class CameraFrame:
    """One rendered view. ``depth`` is metric depth along the optical axis (m); ``segmentation`` holds
    MuJoCo geom ids (-1 where no geom is visible). ``world_to_camera`` is a 4x4 OpenCV-convention matrix."""

    rgb: np.ndarray
    intrinsics: np.ndarray
    world_to_camera: np.ndarray
    depth: np.ndarray | None = None
    segmentation: np.ndarray | None = None

    def project(self, points: np.ndarray) -> np.ndarray:
        """World points (N, 3) -> pixel coordinates (N, 2) as (u = column, v = row)."""
        return project_points(points, self.intrinsics, self.world_to_camera)

    def mask(self, geom_ids) -> np.ndarray:
        """Boolean mask of pixels showing any of ``geom_ids``."""
        if self.segmentation is None:
            raise ValueError("this frame was rendered without segmentation; pass segmentation=True")
        return np.isin(self.segmentation, np.asarray(list(geom_ids)))


def project_points(points: np.ndarray, intrinsics: np.ndarray, world_to_camera: np.ndarray) -> np.ndarray:
    """Pinhole projection of world points (N, 3) to pixels (N, 2) (u = column, v = row)."""
    cam = points @ world_to_camera[:3, :3].T + world_to_camera[:3, 3]
    uvw = cam @ intrinsics.T
    return uvw[:, :2] / uvw[:, 2:3]


def backproject(pixels: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray,
                world_to_camera: np.ndarray) -> np.ndarray:
    """Pixels (N, 2) as (u, v) with depths (N,) -> world points (N, 3)."""
    uv1 = np.concatenate([pixels, np.ones((len(pixels), 1))], axis=1)
    cam = (uv1 @ np.linalg.inv(intrinsics).T) * depth[:, None]
    rot, trans = world_to_camera[:3, :3], world_to_camera[:3, 3]
    return (cam - trans) @ rot


class CameraRenderer:
    """Offscreen renderer of one named camera at a fixed resolution (shadows, reflections, MSAA off)."""

    def __init__(self, model, camera: str, height: int = 128, width: int = 128):
        import mujoco

        self._mujoco = mujoco
        self.camera = camera
        self.height, self.width = int(height), int(width)
        self.camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if self.camera_id < 0:
            raise ValueError(f"camera '{camera}' not found in the model")
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, self.width)
        model.vis.global_.offheight = max(model.vis.global_.offheight, self.height)
        robotics.load_triton_before_gl()
        self._renderer = mujoco.Renderer(model, self.height, self.width)
        flags = self._renderer.scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
        flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        # the scene is updated with a camera built once (Renderer.update_scene builds one per call) and
        # RGB is read into a buffer reused across frames; the two flips (OpenGL rows bottom-up, then the
        # upside-down camera) collapse into one copy
        self._model = model
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._camera.fixedcamid = self.camera_id
        self._rgb_buffer = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self._fast = all(hasattr(self._renderer, name) for name in
                         ("_scene_option", "_rect", "_mjr_context", "_gl_context", "_scene"))
        fovy = float(model.cam_fovy[self.camera_id])
        focal = 0.5 * self.height / np.tan(np.deg2rad(fovy) / 2)
        self.intrinsics = np.array([[focal, 0, self.width / 2], [0, focal, self.height / 2], [0, 0, 1.0]])

    def world_to_camera(self, data) -> tuple[np.ndarray, bool]:
        """OpenCV extrinsics of the (possibly rotated) camera and whether images must be rotated."""
        axes = data.cam_xmat[self.camera_id].reshape(3, 3)  # columns: camera x, y (up), z (backward)
        rotate = axes[2, 1] < 0  # up axis points below the horizon: image is upside down
        cv_axes = axes @ np.diag([1.0, -1.0, -1.0])
        if rotate:
            cv_axes = cv_axes @ np.diag([-1.0, -1.0, 1.0])
        extrinsics = np.eye(4)
        extrinsics[:3, :3] = cv_axes.T
        extrinsics[:3, 3] = -cv_axes.T @ data.cam_xpos[self.camera_id]
        return extrinsics, rotate

    def render(self, data, depth: bool = False, segmentation: bool = False) -> CameraFrame:
        """Render RGB (always) and optionally depth and segmentation of the current state."""
        renderer = self._renderer
        extrinsics, rotate = self.world_to_camera(data)
        fix = (lambda a: np.ascontiguousarray(a[::-1, ::-1])) if rotate else (lambda a: a)
        if self._fast:
            rgb = self._render_rgb(data, rotate)
        else:
            renderer.update_scene(data, camera=self.camera_id)
            rgb = fix(renderer.render())
        depth_image = seg = None
        if depth:
            renderer.enable_depth_rendering()
            depth_image = fix(renderer.render()).astype(np.float32)
            renderer.disable_depth_rendering()
        if segmentation:
            renderer.enable_segmentation_rendering()
            raw = renderer.render()
            renderer.disable_segmentation_rendering()
            geom = np.where(raw[..., 1] == int(self._mujoco.mjtObj.mjOBJ_GEOM), raw[..., 0], -1)
            seg = fix(geom.astype(np.int32))
        return CameraFrame(rgb, self.intrinsics.copy(), extrinsics, depth_image, seg)

    def _render_rgb(self, data, rotate: bool) -> np.ndarray:
        """RGB of ``data`` (upright), also leaving the scene updated for depth / segmentation passes."""
        mujoco, r = self._mujoco, self._renderer
        mujoco.mjv_updateScene(self._model, data, r._scene_option, None, self._camera,
                               mujoco.mjtCatBit.mjCAT_ALL.value, r._scene)
        if r._gl_context:
            r._gl_context.make_current()
        mujoco.mjr_render(r._rect, r._scene, r._mjr_context)
        mujoco.mjr_readPixels(self._rgb_buffer, None, r._rect, r._mjr_context)
        # OpenGL rows run bottom-up; a camera mounted upside down also needs a 180-degree turn
        return self._rgb_buffer[:, ::-1].copy() if rotate else self._rgb_buffer[::-1].copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


@dataclass
class StepResult:
    """What :meth:`TaskEnv.step` returns: the state vector, reward, success and the raw info dict."""

    state: np.ndarray
    reward: float
    success: bool
    truncated: bool
    info: dict = field(default_factory=dict)


class TaskEnv:
    """A MetaWorld v3 goal-observable task seen through one camera.

    ``reset(seed)`` places objects exactly as ``ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[...](seed=seed)``
    does, so the same seed gives the same scene everywhere (experts, oracle planner, evaluation).
    """

    def __init__(self, env_task: str, camera: str = "corner", resolution: int | tuple[int, int] = 128):
        import metaworld

        self.env_task = check_env_task(env_task)
        self.camera = check_camera(camera)
        height, width = (resolution, resolution) if np.isscalar(resolution) else resolution
        env_cls = metaworld.ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[f"{env_task}-v3-goal-observable"]
        self.raw = env_cls(seed=0)
        self.renderer = CameraRenderer(self.raw.model, camera, height, width)
        self.object_geom_ids = self._object_geoms()
        self.object_body_geom_ids = self._object_geoms(whole_body=True)
        self.gripper_geom_ids = self._subtree_geoms(("hand",))
        self.seed: int | None = None
        self.state: np.ndarray | None = None

    @property
    def model(self):
        return self.raw.model

    @property
    def data(self):
        return self.raw.data

    @property
    def resolution(self) -> tuple[int, int]:
        return self.renderer.height, self.renderer.width

    @property
    def steps(self) -> int:
        return int(self.raw.curr_path_length)

    @property
    def hand_position(self) -> np.ndarray:
        return np.array(self.raw.tcp_center, dtype=np.float64)

    def _object_geoms(self, whole_body: bool = False) -> list[int]:
        """Geom ids of the task object (see :data:`TASK_OBJECT`); ``whole_body``: every geom of its body
        subtree, ignoring the part filter (the rigid body a handle belongs to)."""
        import mujoco

        model = self.model
        name, only = TASK_OBJECT.get(self.env_task, (None, {}))
        if name is None:
            candidates = [model.jnt_bodyid[j] for j in range(model.njnt)
                          if not model.joint(j).name.startswith(("right_", "r_close", "l_close"))]
            root = int(candidates[0]) if candidates else -1
        else:
            root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, name)
        if root < 0:
            return []
        bodies = {root}
        for b in range(model.nbody):  # parents precede children in MuJoCo's body order
            if model.body_parentid[b] in bodies:
                bodies.add(b)
        geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]
        if whole_body:
            return geoms
        if "names" in only:
            geoms = [g for g in geoms if model.geom(g).name in only["names"]]
        if "types" in only:
            geoms = [g for g in geoms if int(model.geom_type[g]) in only["types"]]
        return geoms

    def _subtree_geoms(self, body_names) -> list[int]:
        """Geom ids of the named bodies and every body below them."""
        model = self.model
        bodies = {model.body(n).id for n in body_names}
        for b in range(model.nbody):
            if model.body_parentid[b] in bodies:
                bodies.add(b)
        return [g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies]

    def reset(self, seed: int) -> np.ndarray:
        """Reset to the scene of ``seed``; returns the 39-d state vector."""
        raw = self.raw
        saved = np.random.get_state()
        try:
            np.random.seed(seed)
            raw._freeze_rand_vec = False
            raw.reset()
            raw._freeze_rand_vec = True
            raw.seed(seed)
        finally:
            np.random.set_state(saved)
        state, _ = raw.reset()
        self.seed = seed
        self.state = state
        return state

    def step(self, action: np.ndarray) -> StepResult:
        """Apply a 4-d action (xyz delta in [-1, 1], gripper effort)."""
        if self.steps >= MAX_EPISODE_STEPS:
            raise RuntimeError(f"episode already has {MAX_EPISODE_STEPS} steps; call reset()")
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        state, reward, _, truncated, info = self.raw.step(action)
        self.state = state
        return StepResult(state, float(reward), bool(info.get("success", False)), bool(truncated), info)

    def render(self, depth: bool = False, segmentation: bool = False) -> CameraFrame:
        return self.renderer.render(self.data, depth=depth, segmentation=segmentation)

    def object_mask(self, frame: CameraFrame) -> np.ndarray:
        """Pixels of ``frame`` showing the task object."""
        return frame.mask(self.object_geom_ids)

    def object_body_mask(self, frame: CameraFrame) -> np.ndarray:
        """Pixels of ``frame`` showing the body the task object belongs to (e.g. the whole door)."""
        return frame.mask(self.object_body_geom_ids)

    def gripper_mask(self, frame: CameraFrame) -> np.ndarray:
        """Pixels of ``frame`` showing the gripper (hand, claws, pads)."""
        return frame.mask(self.gripper_geom_ids)

    def close(self) -> None:
        self.renderer.close()
        self.raw.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_env(env_task: str, camera: str = "corner", resolution: int | tuple[int, int] = 128,
             seed: int | None = None) -> TaskEnv:
    """A :class:`TaskEnv`; reset to ``seed`` when one is given."""
    env = TaskEnv(env_task, camera, resolution)
    if seed is not None:
        env.reset(seed)
    return env
