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
    with pytest.raises(ConfigError, match="loss.length_alpha is not a parameter of loss 'ipo'"):
        load_config("dpo", None, ["data.train=x", "loss.type=ipo", "loss.length_alpha=0.02"])
    assert load_config("dpo", None, ["data.train=x", "loss.length_alpha=0.02"]).loss.length_alpha == 0.02


def test_dump_roundtrip(tmp_path):
    cfg = load_config("kto", None, ["data.train=x", "loss.beta=0.2"])
    again = load_config("kto", write(tmp_path, dump_config(cfg)))
    assert again == cfg


# --- issue 15: configs that mean what they say ---

def test_partial_section_keeps_the_commands_own_defaults(tmp_path):
    # DPO's optim.lr default is 5e-5; setting one other optim key (YAML or override) must not reset it to the
    # generic 2e-4. PPO's optim.schedule default is constant; likewise.
    cfg = load_config("dpo", None, ["data.train=x.jsonl", "optim.max_steps=2"])
    assert cfg.optim.lr == 5e-5 and cfg.optim.max_steps == 2
    p = tmp_path / "dpo.yaml"
    p.write_text("data: {train: x.jsonl}\noptim: {max_steps: 2}\n")
    assert load_config("dpo", p).optim.lr == 5e-5
    ppo = load_config("ppo", None, ["data.train=x.jsonl", "optim.lr=3e-6"])
    assert (ppo.optim.schedule, ppo.optim.lr, ppo.optim.batch_size) == ("constant", 3e-6, 8)
    grpo = load_config("grpo", None, ["data.train=x.jsonl", "optim.max_steps=1"])
    assert (grpo.optim.schedule, grpo.optim.lr, grpo.optim.batch_size) == ("constant", 1e-5, 4)
    # an explicit value still wins over the command default
    assert load_config("dpo", None, ["data.train=x.jsonl", "optim.lr=1e-3"]).optim.lr == 1e-3


def test_config_show_of_a_partial_section_shows_the_command_default():
    shown = dump_config(load_config("dpo", None, ["data.train=x.jsonl", "optim.max_steps=2"]))
    assert "lr: 5.0e-05" in shown


@pytest.mark.parametrize("override", ["optim.lr=.inf", "optim.lr=.nan", "loss.beta=.inf", "optim.max_grad_norm=.inf",
                                      "loss.gamma=-.inf"])
def test_non_finite_floats_are_rejected(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config("dpo", None, ["data.train=x.jsonl", override])


def test_yaml_for_another_command_is_an_error(tmp_path):
    p = tmp_path / "kto.yaml"
    p.write_text("command: kto\ndata: {train: x.jsonl}\n")
    with pytest.raises(ConfigError, match=r"kto.yaml: key 'command': this file is a 'kto' config, but it was given "
                                          r"to 'posttrain dpo'"):
        load_config("dpo", p)
    assert load_config("kto", p).loss.beta == 0.1  # the matching command still reads it


@pytest.mark.parametrize("overrides, beta", [([], 0.1), (["loss.type=simpo"], 2.0), (["loss.type=ipo"], 0.1),
                                              (["loss.type=simpo", "loss.beta=3.5"], 3.5)])
def test_the_loss_default_beta_is_resolved_into_the_config(overrides, beta):
    """config.yaml records the beta that was used (it recorded `beta: null` and the loss table picked the value)."""
    for command in ("dpo", "online-dpo"):
        cfg = load_config(command, None, ["data.train=x", *overrides])
        assert cfg.loss.beta == beta
        assert f"  beta: {beta}\n" in dump_config(cfg)
        assert load_config(command, None, ["data.train=x", *overrides, f"loss.beta={beta}"]) == cfg


def test_a_partial_loss_section_takes_its_own_loss_types_beta(tmp_path):
    """The resolved DPO beta is not a command default: a YAML `loss: {type: simpo}` gets SimPO's 2.0, not 0.1."""
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: x}\nloss: {type: simpo, gamma: 1.0}\n")
    assert load_config("dpo", path).loss.beta == 2.0


def test_grpo_clip_range_high_defaults_to_clip_range_in_the_config():
    cfg = load_config("grpo", None, ["data.train=x", "grpo.clip_range=0.3"])
    assert cfg.grpo.clip_range_high == 0.3 and "clip_range_high: 0.3" in dump_config(cfg)
    assert load_config("grpo", None, ["data.train=x", "grpo.clip_range_high=0.28"]).grpo.clip_range_high == 0.28
