"""scripts/benchmark_sps.py: how an env spec becomes the config overrides every row of a comparison shares."""

from tests import scripts_path


def test_a_family_spec_picks_its_config_and_id_and_a_module_id_stays_an_id():
    sps = scripts_path.script("benchmark_sps")
    assert sps.env_overrides("Hopper-v4") == ["env=Hopper-v4"]
    assert sps.env_overrides("atari:ALE/Pong-v5") == ["env=atari", "env.id=ALE/Pong-v5"]
    assert sps.env_overrides("tests.toy_envs:MatchBits-v0") == ["env=tests.toy_envs:MatchBits-v0"]  # no such family
    cfg = sps.composed_config("ppo", "atari:ALE/Pong-v5", 8, 4096)
    assert (cfg.env.id, cfg.env.preprocessing, cfg.algo.clip_coef, cfg.env.num_envs) == ("ALE/Pong-v5", "atari", 0.1, 8)
