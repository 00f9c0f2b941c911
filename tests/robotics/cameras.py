"""A synthetic pinhole camera for the geometry tests: intrinsics ``K`` of a 128x128 view and ``look_at``."""
import numpy as np

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
