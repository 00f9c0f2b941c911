"""AvdcFollower behaviour around a grasp: carrying at the offset where the hand closed, and knowing
from the current observation whether the object is still held."""
import numpy as np

from robotics.avdc import AvdcFollower
from robotics.envs import TaskEnv


def test_carry_waypoints_follow_where_the_hand_closed():
    follower = AvdcFollower(grasp_steps=2)
    contact = np.array([0.0, 0.6, 0.02])
    follower._waypoints = [(contact, None), (contact + [0, 0.1, 0.2], 1.0), (contact + [0, 0.2, 0.3], 1.0)]
    hand = contact + [0.0, 0.0, 0.025]  # fingers stopped on the table 2.5 cm above the contact point
    state = np.zeros(39)
    state[:3] = hand
    for _ in range(3):  # closing the gripper in place, then the first carry step
        action = follower.act(None, state)
    assert follower._grasped
    targets = [t for t, _ in follower._waypoints]
    np.testing.assert_allclose(targets[0], contact + [0, 0.1, 0.225])
    np.testing.assert_allclose(targets[1], contact + [0, 0.2, 0.325])
    assert action[3] == 1.0  # gripper stays closed while carrying


def test_still_holding_reads_the_gripper_opening_and_the_object_position():
    env = TaskEnv("basketball", "corner", 64)
    env.reset(0)
    view = env.render(depth=True, segmentation=True)
    mask = env.object_mask(view)
    follower = AvdcFollower()
    ball = env.state[4:7]
    env.state = env.state.copy()
    env.state[3] = 0.0  # fingers fully closed: nothing between them
    assert not follower._still_holding(env, view, mask, hand=ball)
    env.state[3] = 0.6  # fingers held apart by an object
    assert follower._still_holding(env, view, mask, hand=ball)
    assert not follower._still_holding(env, view, mask, hand=ball + [0.0, 0.0, 0.3])  # object left behind
    env.close()

