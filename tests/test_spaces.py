"""Spaces written as plain values (checkpoints, spaces.json) and read back: the same space, or one line."""

import json

import gymnasium as gym
import numpy as np
import pytest

from rl.spaces import SpaceError, space_from_state, space_to_state

SPACES = {
    "box_shared_bounds": gym.spaces.Box(-1.0, 1.0, (3,), np.float32),
    "box_per_dimension": gym.spaces.Box(np.array([-1.0, 0.0]), np.array([2.0, 5.0]), dtype=np.float64),
    "image": gym.spaces.Box(0, 255, (84, 84, 4), np.uint8),
    "discrete": gym.spaces.Discrete(4),
    "discrete_with_start": gym.spaces.Discrete(3, start=-1),
    "multi_discrete": gym.spaces.MultiDiscrete([3, 2, 5]),
    "multi_discrete_with_start": gym.spaces.MultiDiscrete([3, 4], start=[1, -2]),
    "multi_binary": gym.spaces.MultiBinary(6),
    "multi_binary_2d": gym.spaces.MultiBinary([2, 3]),
    "dict": gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), "direction": gym.spaces.Discrete(4),
                             "goal": gym.spaces.Dict({"xy": gym.spaces.Box(-5.0, 5.0, (2,), np.float64)})}),
}


@pytest.mark.parametrize("name", sorted(SPACES))
def test_a_space_survives_json(name):
    space = SPACES[name]
    state = json.loads(json.dumps(space_to_state(space)))  # plain values only
    again = space_from_state(state)
    assert again == space and type(again) is type(space)
    assert again.dtype == space.dtype  # None == None for a Dict
    if isinstance(space, gym.spaces.Box):
        assert np.array_equal(again.low, space.low) and np.array_equal(again.high, space.high)


def test_spaces_it_cannot_store_or_read_are_one_line():
    for space in (gym.spaces.Tuple((gym.spaces.Discrete(2),)), gym.spaces.Text(5)):
        with pytest.raises(SpaceError, match="cannot be stored"):
            space_to_state(space)
    for state in ({"kind": "Graph"}, {"kind": "MultiDiscrete"}, {"nvec": [2]}, "Box"):
        with pytest.raises(SpaceError) as refused:
            space_from_state(state)
        assert "\n" not in str(refused.value)
