import pytest

from posttrain.config import ConfigError, dump_config, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_precedence_defaults_yaml_overrides(tmp_path):
    p = write(tmp_path, "data: {train: a.jsonl}\noptim: {lr: 0.001, batch_size: 4}\n")
    cfg = load_config("dpo", p, ["optim.lr=1e-5", "loss.type=ipo"])
    assert cfg.optim.lr == 1e-5  # override beats YAML
    assert cfg.optim.batch_size == 4  # YAML beats default
    assert cfg.optim.micro_batch_size == 8  # default
    assert cfg.loss.type == "ipo"
    assert cfg.data.train == "a.jsonl"


def test_unknown_key_is_named(tmp_path):
    p = write(tmp_path, "data: {train: a.jsonl}\noptim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config("sft", p)
    assert "key 'optim.learning_rate': unknown key" in str(e.value)
    assert str(p) in str(e.value)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError) as e:
        load_config("sft", None, ["data.train=x.jsonl", "optim.lr=fast"])
    assert "key 'optim.lr'" in str(e.value)


def test_missing_required_section():
    with pytest.raises(ConfigError, match="key 'data': required key is missing"):
        load_config("sft", None, [])


def test_bad_override_and_yaml(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config("sft", None, ["optim.lr"])
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config("sft", write(tmp_path, "data: [unclosed\n"))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("sft", tmp_path / "missing.yaml")


def test_unknown_loss_type_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_config("dpo", None, ["data.train=x", "loss.type=ppo"])
    assert "loss.type" in str(e.value) and "simpo" in str(e.value)


def test_param_not_taken_by_loss_is_an_error():
    with pytest.raises(ConfigError, match="loss.gamma"):
        load_config("dpo", None, ["data.train=x", "loss.type=dpo", "loss.gamma=1.0"])
    cfg = load_config("dpo", None, ["data.train=x", "loss.type=simpo", "loss.gamma=1.0"])
    assert cfg.loss.gamma == 1.0


def test_dump_roundtrip(tmp_path):
    cfg = load_config("kto", None, ["data.train=x", "loss.beta=0.2"])
    again = load_config("kto", write(tmp_path, dump_config(cfg)))
    assert again == cfg
