import pytest

from upres.config import SHIPPED_CONFIGS, ConfigError, load_config, parse_overrides


def test_shipped_configs_validate():
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    assert {"recipe-x4plus", "smoke-cpu"} <= set(names)
    recipe = load_config("recipe-x4plus")
    assert (recipe.model.num_feat, recipe.model.num_grow_ch, recipe.model.num_block) == (64, 32, 23)
    assert recipe.train.lr == 2e-4 and recipe.train.betas == (0.9, 0.99)
    assert recipe.train.milestones[0] == 200_000 and recipe.train.gamma == 0.5
    assert recipe.train.ema == 0.999 and recipe.train.loss == "mse"
    assert recipe.init.source == "realesrgan-x4plus"
    assert recipe.data.crop == 128 and recipe.train.batch_size == 16


def test_unknown_key_gets_did_you_mean(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n  iteratons: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "train.iteratons: unknown key; did you mean 'train.iterations'?" in msg
    assert "train.learning_rate: unknown key" in msg


def test_type_and_range_errors_name_the_key_path():
    with pytest.raises(ConfigError, match=r"train\.lr: Input should be greater than 0"):
        load_config(None, ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"model\.num_block: Input should be a valid integer"):
        load_config(None, ["model.num_block=many"])
    with pytest.raises(ConfigError, match="data.crop .* multiple of model.scale"):
        load_config(None, ["data.crop=130"])


def test_overrides_apply_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.001, iterations: 10}\n")
    cfg = load_config(path, ["train.lr=1e-4", "model.num_block=2", "train.betas=[0.8, 0.9]"])
    assert cfg.train.lr == 1e-4 and cfg.train.iterations == 10
    assert cfg.model.num_block == 2 and cfg.train.betas == (0.8, 0.9)
    assert parse_overrides(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["train.lr"])


def test_missing_config_file_lists_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="no such config file .*smoke-cpu"):
        load_config(tmp_path / "nope.yaml")
