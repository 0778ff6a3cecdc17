"""Observation layouts (rl.observations) and the encoders that read them (rl.networks.Encoder), checked
against independent computations: gymnasium's own `flatten` for packing, a numpy transpose for images."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl.networks import Encoder, cnn
from rl.normalize import ObservationNormalizer
from rl.observations import OBS_KEY, ObservationError, ObservationLayout
from rl.policy import CNN_DEFAULTS, Agent, mask_blocks

SMALL_CNN = {"channels": (3,), "kernels": (3,), "strides": (1,), "features": 8}

DICT_SPACE = gym.spaces.Dict({
    "position": gym.spaces.Box(-2.0, 2.0, (3,), np.float32),
    "grid": gym.spaces.Box(0, 255, (6, 5, 2), np.uint8),  # (H, W, C): channels last
    "direction": gym.spaces.Discrete(4, start=1),
    "counts": gym.spaces.MultiDiscrete([3, 2, 5]),
    "switches": gym.spaces.MultiBinary(4),
    "frames": gym.spaces.Box(0, 255, (2, 7, 7), np.uint8),  # (C, H, W)
})


def samples(space, n, seed=0):
    space.seed(seed)
    return [space.sample() for _ in range(n)]


def test_packing_a_dict_equals_gymnasiums_flatten():
    # gymnasium.spaces.flatten lays a Dict out key by key in the space's order, Discrete and MultiDiscrete
    # one-hot (from their start), MultiBinary as bits and Boxes (images too) as raw values: our layout.
    layout = ObservationLayout(DICT_SPACE)
    observations = samples(DICT_SPACE, 20)
    packed = layout.pack(layout.stack(observations))
    expected = np.stack([gym.spaces.flatten(DICT_SPACE, o) for o in observations]).astype(np.float32)
    assert layout.dim == gym.spaces.flatdim(DICT_SPACE) == packed.shape[1]
    assert np.array_equal(packed, expected)
    kinds = {p.key: p.kind for p in layout.pieces}
    assert kinds == {"position": "vector", "grid": "image", "direction": "onehot", "counts": "onehot",
                     "switches": "vector", "frames": "image"}


@pytest.mark.parametrize("space", [gym.spaces.Discrete(5, start=-2), gym.spaces.MultiDiscrete([[2, 3], [4, 2]]),
                                   gym.spaces.MultiBinary([2, 3])], ids=["discrete", "multidiscrete", "multibinary"])
def test_packing_a_single_non_box_space_equals_flatten(space):
    layout = ObservationLayout(space)
    observations = samples(space, 30, seed=1)
    packed = layout.pack(layout.stack(observations))
    assert np.array_equal(packed, np.stack([gym.spaces.flatten(space, o) for o in observations]))


def test_a_flat_box_packs_as_a_reshape_keeping_its_dtype():
    space = gym.spaces.Box(-1.0, 1.0, (2, 3), np.float64)
    layout = ObservationLayout(space)
    obs = np.random.default_rng(0).standard_normal((4, 2, 3))
    packed = layout.pack(obs)
    assert layout.flat and packed.dtype == np.float64 and np.array_equal(packed, obs.reshape(4, 6))
    assert layout.normalized_features() is None


@pytest.mark.parametrize("space, shape, channels_last", [
    (gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), (3, 7, 7), True),  # MiniGrid
    (gym.spaces.Box(0, 255, (4, 84, 84), np.uint8), (4, 84, 84), False),  # stacked Atari frames
    (gym.spaces.Box(0, 255, (84, 84), np.uint8), (1, 84, 84), False),  # one grayscale frame
    (gym.spaces.Box(0, 1, (10, 10, 4), bool), (4, 10, 10), True),  # MinAtar
])
def test_images_are_detected_as_sb3_does(space, shape, channels_last):
    piece = ObservationLayout(space).pieces[0]
    assert (piece.kind, piece.image_shape, piece.channels_last) == ("image", shape, channels_last)
    assert piece.scale == (1 / 255 if space.dtype == np.uint8 else 1.0)


def test_what_is_not_an_image_stays_a_vector_unless_declared():
    not_images = [gym.spaces.Box(0, 255, (5, 5, 3), np.float32),  # not uint8
                  gym.spaces.Box(0, 100, (5, 5, 3), np.uint8),  # not bounded by 255
                  gym.spaces.Box(0, 255, (12,), np.uint8)]  # one dimension
    for space in not_images:
        assert ObservationLayout(space).pieces[0].kind == "vector", space
    declared = ObservationLayout(not_images[0], image_keys=[OBS_KEY]).pieces[0]
    assert declared.kind == "image" and declared.scale == 1.0
    # and a declared-empty list reads even a uint8 image as a vector
    assert ObservationLayout(gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), image_keys=[]).pieces[0].kind == "vector"


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_the_encoder_reads_channels_last_images_as_the_cnn_would_read_them_transposed(memory_format):
    space = gym.spaces.Dict({"grid": gym.spaces.Box(0, 255, (6, 5, 2), np.uint8),
                             "position": gym.spaces.Box(-1.0, 1.0, (3,), np.float32)})
    layout = ObservationLayout(space)
    torch.manual_seed(0)
    encoder = Encoder(layout, SMALL_CNN).double()
    encoder.memory_formats = [memory_format]  # the input layout changes the speed of the convs, not what they compute
    observations = samples(space, 7, seed=2)
    features = encoder(torch.from_numpy(layout.pack(layout.stack(observations))).double())
    # Independently: numpy's transpose to (C, H, W), the division by 255, then the same conv weights.
    grids = np.stack([o["grid"].transpose(2, 0, 1) for o in observations]).astype(np.float64) / 255.0
    image_features = encoder.cnns[0](torch.from_numpy(grids))
    positions = torch.from_numpy(np.stack([o["position"] for o in observations]).astype(np.float64))
    assert torch.allclose(features, torch.cat([image_features, positions], -1), rtol=0, atol=1e-12)
    assert features.shape[1] == encoder.out_dim == SMALL_CNN["features"] + 3


def test_atari_frames_run_their_convs_channels_last_and_small_images_nchw():
    frames = Encoder(ObservationLayout(gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)), CNN_DEFAULTS)
    minatar = Encoder(ObservationLayout(gym.spaces.Box(0, 1, (10, 10, 4), bool)), SMALL_CNN)
    assert frames.memory_formats == [torch.channels_last]
    assert minatar.memory_formats == [torch.contiguous_format]


def test_the_default_cnn_is_nature_cnn():
    net = cnn((4, 84, 84), **CNN_DEFAULTS)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 8, 4), (64, 4, 2), (64, 3, 1)]
    assert net[-2].in_features == 64 * 7 * 7 and net[-2].out_features == 512
    assert net(torch.zeros(2, 4, 84, 84)).shape == (2, 512)


def test_normalization_touches_only_vector_features():
    layout = ObservationLayout(DICT_SPACE)
    features = layout.normalized_features()
    pieces = {p.key: p for p in layout.pieces}  # (gymnasium's Dict sorts its keys)
    assert [int(i) for i in features] == sorted(pieces["position"].offset + i for i in range(3)) + sorted(
        pieces["switches"].offset + i for i in range(4))
    normalizer = ObservationNormalizer((len(features),), features=features)
    batch = layout.pack(layout.stack(samples(DICT_SPACE, 50, seed=3)))
    normalizer.update(batch)
    out = normalizer(torch.from_numpy(batch)).numpy()
    others = np.setdiff1d(np.arange(layout.dim), features)
    assert np.array_equal(out[:, others], batch[:, others])  # pixels and one-hots pass through
    selected = batch[:, features].astype(np.float64)
    expected = (selected - selected.mean(0)) / np.sqrt(selected.var(0) + 1e-8)
    assert np.allclose(out[:, features], np.clip(expected, -10, 10), atol=1e-4)  # count 1e-4 prior
    assert np.array_equal(normalizer.normalize_numpy(batch), out)


def test_a_mask_key_is_read_from_the_observation_and_skipped_by_the_encoder():
    space = gym.spaces.Dict({"action_mask": gym.spaces.MultiBinary(5), "x": gym.spaces.Box(-1, 1, (2,))})
    layout = ObservationLayout(space, mask_blocks=mask_blocks(gym.spaces.Discrete(5)))
    assert layout.mask.offset == 0 and layout.mask.size == 5 and layout.mask_source == "observation"
    assert layout.normalized_features().tolist() == [5, 6]
    encoder = Encoder(layout, SMALL_CNN)
    assert encoder.out_dim == 2
    none = ObservationLayout(space, action_mask="none", mask_blocks=(5,))
    assert none.mask is None and none.pieces[0].kind == "vector"  # an ordinary input


def test_an_info_mask_is_packed_after_the_observation_with_ones_where_absent():
    space = gym.spaces.Box(-1, 1, (2,), np.float32)
    layout = ObservationLayout(space, action_mask="info", mask_blocks=(3, 2))
    obs = np.zeros((3, 2), np.float32)
    info = {"action_mask": np.array([[1, 0, 1, 0, 1], [0, 1, 0, 1, 1], [1, 1, 1, 1, 1]], np.int8),
            "_action_mask": np.array([True, True, False])}
    packed = layout.pack(obs, info)
    assert packed[:, 2:].tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, 1, 1], [1, 1, 1, 1, 1]]
    assert layout.pack(obs, None)[:, 2:].min() == 1.0  # a final observation has no info mask: all allowed


@pytest.mark.parametrize("space, blocks, mask, message", [
    (gym.spaces.Dict({"action_mask": gym.spaces.MultiBinary(4), "x": gym.spaces.Box(-1, 1, (2,))}), (5,),
     None, "a mask must be a MultiBinary or Box of 5 entries"),
    (gym.spaces.Dict({"action_mask": gym.spaces.MultiBinary(4)}), None, None,
     "action masks apply to Discrete and MultiDiscrete actions only"),
    (gym.spaces.Dict({"action_mask": gym.spaces.Box(0, 2, (3,))}), (3,), [[0.0, 2.0, 1.0]],
     "values other than 0 and 1"),
    (gym.spaces.Dict({"action_mask": gym.spaces.MultiBinary(5)}), (3, 2), [[1, 1, 0, 0, 0]],
     "allows no action in action dimension 1"),
])
def test_bad_masks_are_refused_in_one_line(space, blocks, mask, message):
    with pytest.raises(ObservationError, match=message) as refused:
        layout = ObservationLayout(space, mask_blocks=blocks)
        layout.pack({"action_mask": np.asarray(mask)})
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize("space, message", [
    (gym.spaces.Dict({"image": gym.spaces.Box(0, 255, (7, 7, 3), np.uint8), "mission": gym.spaces.Text(10)}),
     "observation key 'mission' is a Text space.*a string.*ImgObsWrapper"),
    (gym.spaces.Tuple([gym.spaces.Discrete(2), gym.spaces.Discrete(3)]), "the observation space is a Tuple space"),
    (gym.spaces.Dict({"a": gym.spaces.Dict({"b": gym.spaces.Discrete(2)})}), "flatten the nested Dict"),
    (gym.spaces.Sequence(gym.spaces.Discrete(2)), "is a Sequence space"),
    (gym.spaces.Graph(gym.spaces.Box(0, 1, (2,)), None), "is a Graph space"),
    (gym.spaces.Box(0, 255, (30, 1, 3), np.uint8), "a 30x1 image is too small"),
])
def test_spaces_policies_cannot_read_are_refused_in_one_line(space, message):
    with pytest.raises(ObservationError, match=message) as refused:
        ObservationLayout(space, image_keys=[OBS_KEY] if isinstance(space, gym.spaces.Box) else None)
    assert "\n" not in str(refused.value)


def test_unknown_image_keys_and_mask_sources_are_refused():
    with pytest.raises(ObservationError, match=r"env.image_keys names \['pixels'\]"):
        ObservationLayout(DICT_SPACE, image_keys=["pixels"])
    with pytest.raises(ObservationError, match="env.action_mask='sometimes'"):
        ObservationLayout(DICT_SPACE, action_mask="sometimes")
    with pytest.raises(ObservationError, match="the observation has no 'action_mask' key"):
        ObservationLayout(DICT_SPACE, action_mask="observation", mask_blocks=(3,))


def test_an_agent_on_a_dict_space_acts_on_packed_observations():
    agent = Agent(DICT_SPACE, gym.spaces.Discrete(3), actor_hidden_sizes=(8,), critic_hidden_sizes=(8,),
                  normalize_observations=True, cnn=SMALL_CNN)
    assert len(agent.actor.net[0].cnns) == 2 and len(agent.critic.net[0].cnns) == 2  # separate networks
    packed = torch.from_numpy(agent.layout.pack(agent.layout.stack(samples(DICT_SPACE, 6, seed=4))))
    actions = agent.act(packed)
    assert actions.shape == (6,) and actions.dtype == torch.int64


def test_a_shared_encoder_is_one_module_stepped_by_one_optimizer_and_run_once_for_the_same_loss():
    from omegaconf import OmegaConf

    from rl.algos import ppo
    from rl.rollout import Batch

    space = gym.spaces.Box(0, 255, (6, 5, 2), np.uint8)
    torch.manual_seed(0)
    agent = Agent(space, gym.spaces.Discrete(3), actor_hidden_sizes=(8,), critic_hidden_sizes=(8,), cnn=SMALL_CNN,
                  share_encoder=True).double()
    assert agent.actor.net[0] is agent.critic.net[0]
    optimizers = ppo.make_optimizers(agent, OmegaConf.create({"learning_rate": 1e-3}))
    stepped = [id(p) for o in optimizers.values() for g in o.param_groups for p in g["params"]]
    assert sorted(stepped) == sorted({id(p) for p in agent.parameters()})  # each exactly once
    obs = torch.from_numpy(np.stack(samples(space, 16, seed=5)).reshape(16, -1).astype(np.float64))
    with torch.no_grad():
        params = agent.actor(obs)
        actions = agent.actor.sample(*params)
        log_probs, values = agent.actor.log_prob(*params, actions), agent.critic(obs)
    mb = Batch(obs, actions, log_probs + 0.1, values, torch.randn(16, dtype=torch.float64), values + 1.0)
    loss, _ = ppo.minibatch_losses(agent.actor, agent.critic, mb, mb.advantages, 0.2, 0.01, 0.5, True)
    grads = torch.autograd.grad(loss, list(agent.parameters()))
    # The same loss with each network run on its own (the encoder twice): the same value and gradients.
    dist = agent.actor(obs)
    pg, _, _ = ppo.policy_loss(agent.actor.log_prob(*dist, actions), mb.log_probs, mb.advantages, 0.2)
    separate = (pg - 0.01 * agent.actor.entropy(*dist).mean()
                + 0.5 * ppo.value_loss(agent.critic(obs), mb.values, mb.returns, 0.2))
    assert torch.allclose(loss, separate, rtol=1e-12)
    for got, want in zip(grads, torch.autograd.grad(separate, list(agent.parameters()))):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)
