"""MetaWorld's scripted expert policies run through a :class:`~robotics.envs.TaskEnv`, frames recorded."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robotics.envs import MAX_EPISODE_STEPS, TaskEnv, instruction_of


def expert_policy(env_task: str):
    """The scripted expert of ``env_task`` from ``metaworld.policies.ENV_POLICY_MAP``."""
    import warnings

    from metaworld.policies import ENV_POLICY_MAP

    key = f"{env_task}-v3"
    if key not in ENV_POLICY_MAP:
        from gencond.errors import UserError

        raise UserError(f"no scripted expert for task '{env_task}'; experts exist for: "
                         + ", ".join(sorted(k[:-3] for k in ENV_POLICY_MAP)))
    warnings.filterwarnings("ignore", message="Constant\\(s\\) may be too high")
    return ENV_POLICY_MAP[key]()


@dataclass
class Demonstration:
    """One expert episode: ``frames[t]`` is seen before ``actions[t]``; ``states`` has one more row too."""

    env_task: str
    camera: str
    seed: int
    frames: np.ndarray          # (T+1, H, W, 3) uint8
    actions: np.ndarray         # (T, 4) float32
    states: np.ndarray          # (T+1, 39) float32
    success: bool
    success_step: int           # first step index (1-based count of actions) with success, -1 if none
    intrinsics: np.ndarray      # (3, 3)
    world_to_camera: np.ndarray  # (4, 4)
    first_depth: np.ndarray     # (H, W) float32, metric depth of frames[0]
    first_segmentation: np.ndarray  # (H, W) int32 geom ids of frames[0]
    object_geom_ids: np.ndarray  # geom ids of the task object

    @property
    def text(self) -> str:
        return instruction_of(self.env_task)

    def __len__(self) -> int:
        return len(self.actions)


def run_expert(env: TaskEnv, seed: int, max_steps: int = MAX_EPISODE_STEPS,
               steps_after_success: int = 0) -> Demonstration:
    """Roll out the expert from the scene of ``seed`` until success (+ a few steps) or ``max_steps``."""
    policy = expert_policy(env.env_task)
    state = env.reset(seed)
    first = env.render(depth=True, segmentation=True)
    frames, actions, states = [first.rgb], [], [state]
    success_step, remaining = -1, steps_after_success
    for step in range(max_steps):
        action = np.asarray(policy.get_action(state), dtype=np.float32)
        result = env.step(action)
        state = result.state
        actions.append(action)
        states.append(state)
        frames.append(env.render().rgb)
        if result.success and success_step < 0:
            success_step = step + 1
        if success_step >= 0:
            if remaining <= 0:
                break
            remaining -= 1
    return Demonstration(
        env_task=env.env_task, camera=env.camera, seed=int(seed), frames=np.stack(frames),
        actions=np.stack(actions).astype(np.float32), states=np.stack(states).astype(np.float32),
        success=success_step >= 0, success_step=success_step, intrinsics=first.intrinsics,
        world_to_camera=first.world_to_camera, first_depth=first.depth,
        first_segmentation=first.segmentation, object_geom_ids=np.asarray(env.object_geom_ids),
    )
