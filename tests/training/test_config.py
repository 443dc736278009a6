import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from upres.cli import main
from upres.errors import ConfigError
from upres.training.config import (
    MAX_ERRORS,
    SHIPPED_CONFIGS,
    Config,
    Plan,
    config_schema,
    load_config,
    load_plan,
    parse_overrides,
)


def test_shipped_configs_validate():
    names = sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))
    assert {"recipe-x4plus", "smoke-cpu"} <= set(names)
    recipe = load_config("recipe-x4plus")
    hparams = recipe.model.hparams()
    assert (hparams["num_feat"], hparams["num_grow_ch"], hparams["num_block"]) == (64, 32, 23)
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
    with pytest.raises(ConfigError, match=r"model\.params\.num_block: expected int, got 'many'"):
        load_config(None, ["model.num_block=many"])
    with pytest.raises(ConfigError, match="data.crop .* multiple of model.scale"):
        load_config(None, ["data.crop=130"])


def test_overrides_apply_over_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 0.001, iterations: 10}\n")
    cfg = load_config(path, ["train.lr=1e-4", "model.num_block=2", "train.betas=[0.8, 0.9]"])
    assert cfg.train.lr == 1e-4 and cfg.train.iterations == 10
    assert cfg.model.params == {"num_block": 2} and cfg.train.betas == (0.8, 0.9)
    assert parse_overrides(["a.b.c=3"]) == {"a": {"b": {"c": 3}}}
    with pytest.raises(ConfigError, match="key.path=value"):
        parse_overrides(["train.lr"])


def test_missing_config_file_lists_shipped_ones(tmp_path):
    with pytest.raises(ConfigError, match="no such config file .*smoke-cpu"):
        load_config(tmp_path / "nope.yaml")


def _all_fields(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            yield from _all_fields(sub, f"{prefix}{name}.")


def test_every_field_is_documented_and_in_the_schema():
    schema = config_schema()
    for schema_model in (Config, Plan):
        for path, field in _all_fields(schema_model):
            assert field.description and len(field.description) > 5, path
    defs = schema["$defs"]
    assert defs["TrainConfig"]["properties"]["lr"]["description"] == "Initial learning rate."
    assert defs["TrainConfig"]["additionalProperties"] is False  # editors flag unknown keys
    assert set(schema["properties"]) == {"model", "init", "data", "train", "val"}


def test_config_commands_list_show_and_write_the_schema(tmp_path, capsys):
    assert main(["config", "list"]) == 0
    listed = capsys.readouterr().out
    for name in ("smoke-cpu", "recipe-x4plus", "finetune-cpu", "seed-ablation-cpu"):
        assert name in listed
    lines = {line.split()[0]: line for line in listed.splitlines()}  # each described in a line
    assert lines["seed-ablation-cpu"].split(None, 2)[2] == ("The recipe's comparison at CPU size: "
                                                           "tiny RRDBNets, small crops, equal "
                                                           "iterations, one seed")
    assert "plan" in lines["levers-cpu"] and "config" in lines["recipe-x4plus"]
    assert main(["config", "show", "smoke-cpu"]) == 0
    assert capsys.readouterr().out == (SHIPPED_CONFIGS / "smoke-cpu.yaml").read_text()
    out = tmp_path / "schema.json"
    assert main(["config", "schema", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert json.loads(out.read_text()) == json.loads(json.dumps(config_schema()))
    assert main(["config", "schema", "--plan"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == "upres experiment plan"
    assert main(["config", "show", "nope"]) == 2
    assert "no such config file" in capsys.readouterr().err


def test_shipped_configs_are_reachable_from_the_repository_root():
    """The README points at configs/ in a clone; it must lead to the shipped files."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").exists():
        return  # installed elsewhere: no clone layout to check
    assert (root / "configs" / "smoke-cpu.yaml").read_text() == \
        (SHIPPED_CONFIGS / "smoke-cpu.yaml").read_text()
    assert (root / "configs" / "experiments" / "seed-ablation-cpu.yaml").is_file()


def test_config_commands_import_no_torch(tmp_path):
    for args in (["--help"], ["config", "schema"], ["config", "show", "smoke-cpu"],
                 ["train", "--help"]):
        result = subprocess.run([sys.executable, "-X", "importtime", "-m", "upres.cli", *args],
                                capture_output=True, text=True, check=True)
        imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "upres.errors" in imported, args  # the CLI really ran
        assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, args


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  iterations: 10\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == f"{path}: key 'lr' is given twice, on line 2 and line 4; keep one"
    path.write_text("train: {lr: 1}\ntrain: {lr: 2}\n")  # a whole section, too
    with pytest.raises(ConfigError, match="key 'train' is given twice, on line 1 and line 2"):
        load_config(path)


def test_an_alias_bomb_is_refused_before_it_expands(tmp_path):
    """Nine lists of nine aliases would expand to 9**9 values (8 GB here, 58 s, 2 GB of error
    text): refused at the first anchor, in a message of one line."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{k}: &a{k} [" + ", ".join([f"*a{k - 1}"] * 9) + "]" for k in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ntrain:\n  lr: *a8\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value) == (f"{path}: line 1: YAML anchor &a0 is not accepted (write each value "
                              "out; anchors and aliases can expand without bound)")
    with pytest.raises(ConfigError, match=r"override 'train.lr=\*a': line 1: YAML alias \*a"):
        load_config(None, ["train.lr=*a"])


def test_an_empty_config_file_is_refused_not_read_as_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty.yaml: the file is empty, so it would set nothing"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"empty.yaml: the file is empty; a plan needs its arms"):
        load_plan(path)


def test_a_bad_override_is_named_as_the_override_not_blamed_on_the_file():
    with pytest.raises(ConfigError) as err:
        load_config("smoke-cpu", ["train.lr=fast"])
    msg = str(err.value)
    assert msg.startswith("invalid override (applied over ") and "smoke-cpu.yaml" in msg
    assert "train.lr: Input should be a valid number, unable to parse string as a number (got " \
           "'fast') (from the override 'train.lr=fast')" in msg


def test_values_in_errors_are_short_excerpts_with_their_size(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("train:\n  lr: " + "9" * 1_000_000 + "x\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 400 and "(1,000,001 characters)" in str(err.value)
    path.write_text("train:\n  betas: [" + ", ".join(["0.5"] * 100_000) + "]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 400 and "(100,000 items)" in str(err.value)
    many = "train:\n" + "".join(f"  k{i}: 1\n" for i in range(500))  # 500 unknown keys
    path.write_text(many)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).count("unknown key") == MAX_ERRORS and "... and 480 more" in str(err.value)
