"""Reward model, GRPO, PPO and rejection-sampling SFT end to end on tiny-random (CPU).

The toy verifiable task: answer in all lowercase (the ``lowercase`` constraint) in 2 tokens. tiny-random's logits
are nearly uniform over 49k tokens, so rollouts sample at temperature 0.05 (the log-probs in the losses use the
same temperature): a few hundred tokens then carry the mass and a policy update moves it visibly. Before training
the greedy answers to the held-out prompts fail; the test asserts that after a bounded number of steps they pass.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from posttrain.config import load_config
from posttrain.training.metrics import read_metrics

from .helpers import TOPICS, pair_rows, tiny_config, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def lowercase_prompts(path, start: int, n: int):
    words = TOPICS + ["frogs", "hills", "lamps", "boats", "pears", "wolves", "drums", "forks"]
    rows = [{"prompt": f"Say something about {words[(start + i) % len(words)]} {start + i}.",
             "constraints": [{"kind": "lowercase", "args": {}}]} for i in range(n)]
    return write_jsonl(path, rows)


TEMPERATURE = 0.1


def letter_prompts(path, n: int, copies: int = 1):
    """The toy verifiable task: answer (one token) with anything that has a letter. tiny-random's most likely
    first token is "\\n" (about 0.3 of the mass at temperature 0.1, no other token above 0.003), so greedy
    decoding fails every prompt while sampling passes about 2 in 3: the policy has to learn to stop answering
    "\\n". The verifier is the regex answer check (``{"answer": "[A-Za-z]", "match": "regex"}``)."""
    rows = [{"prompt": f"Name one thing about {TOPICS[i % len(TOPICS)]}.", "answer": "[A-Za-z]", "match": "regex"}
            for i in range(n) for _ in range(copies)]
    return write_jsonl(path, rows)


def rl_config(command, tmp_path, *overrides, copies: int = 1):
    prompts = letter_prompts(tmp_path / "prompts.jsonl", 8, copies)
    base = [f"data.train={prompts}", f"data.eval={prompts}", "model.name=tiny-random", "data.shuffle=false",
            f"train.output_dir={tmp_path / 'out'}", "train.progress=false", "optim.schedule=constant",
            "rollout.max_new_tokens=1", f"rollout.temperature={TEMPERATURE}", "optim.lr=1e-2",
            f"rollout.eval_temperature={TEMPERATURE}", "rollout.eval_samples=16"]
    return load_config(command, None, base + list(overrides))


def _completed(out):
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert (out / "config.yaml").exists() and (out / "model" / "adapter_model.safetensors").exists()
    return manifest


@pytest.fixture(scope="module")
def reward_model_run(tmp_path_factory):
    """`posttrain reward-model` for 3 steps on tiny-random (CLI), shared by the tests that need a reward model."""
    import torch

    from posttrain.cli import app

    tmp_path = tmp_path_factory.mktemp("rm")
    rows = pair_rows(16)
    for i, r in enumerate(rows):
        r["strength"] = 0.5 if i % 2 else 0.0
    train = write_jsonl(tmp_path / "pairs.jsonl", rows)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", pair_rows(20)[16:])
    out = tmp_path / "rm"
    args = ["reward-model", f"data.train={train}", f"data.eval={heldout}", "model.name=tiny-random",
            f"train.output_dir={out}", "train.progress=false", "optim.batch_size=4", "optim.micro_batch_size=2",
            "optim.max_steps=3", "optim.lr=1e-2", "data.max_length=64", "loss.margin_key=strength",
            "loss.centering=0.01"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out, heldout


def test_reward_model_cli_accuracy_and_judge(reward_model_run):
    from posttrain.judges.reward_model import RewardModelJudge

    out, heldout = reward_model_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    m = manifest["metrics"]
    steps = [r for r in read_metrics(out / "metrics.jsonl") if r.get("split") != "eval"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 0 <= r["rewards/accuracy"] <= 1 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert m["eval/rm/pairs"] == 4 and m["eval/rm/accuracy"] == m["eval/rewards/accuracy"]
    report = json.loads((out / "reward_eval.json").read_text())["eval"]
    for key in ("reward_mean", "reward_std", "reward_p50", "length_corr", "margin_length_corr"):
        assert math.isfinite(report[key]), key
    # these pairs' chosen replies are the shorter ones: a model that learns them has a negative length correlation
    assert report["longer_is_chosen_in_data"] == 0.0
    # the checkpoint is a reward-model judge, and scores exactly as the eval did
    judge = RewardModelJudge(str(out / "model"), device="cpu")
    pair = json.loads(heldout.read_text().splitlines()[0])
    prompt = [{"role": "user", "content": pair["prompt"]}]
    chosen, rejected = judge.rewards([(prompt, pair["chosen"]), (prompt, pair["rejected"])])
    assert min(report["reward_min"], chosen, rejected) == pytest.approx(report["reward_min"], abs=1e-4)
    assert judge.compare(prompt, pair["chosen"], pair["rejected"], {}).winner == ("a" if chosen > rejected else "b")


def test_reward_model_bad_margin_names_the_row(tmp_path):
    from posttrain.data.schema import DataErrors
    from posttrain.trainers.reward_model import train_reward_model

    train = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(4))
    cfg = tiny_config("reward-model", train, tmp_path / "out", "loss.margin_key=strength")
    with pytest.raises(DataErrors, match=r"pairs.jsonl:1: field 'strength'"):
        train_reward_model(cfg)
    assert not (tmp_path / "out").exists()


def test_grpo_learns_toy_task(tmp_path):
    from posttrain.trainers.grpo import train_grpo

    cfg = rl_config("grpo", tmp_path, "optim.batch_size=4", "optim.micro_batch_size=32", "optim.max_steps=8",
                    "grpo.num_generations=8", "grpo.beta=0.04", "grpo.iterations=2")
    summary = train_grpo(cfg)
    _completed(tmp_path / "out")
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(rows) == 8
    for key in ("reward/verifier", "reward/pass_rate", "reward/total", "reward/std_in_group", "groups/no_signal",
                "clip_fraction", "kl", "response_length"):
        assert key in rows[-1], key
    before, after = summary["eval_before/reward/pass_rate"], summary["eval_after/reward/pass_rate"]
    assert after >= 0.9 and after >= before + 0.15, (before, after)


def test_grpo_resume_reproduces_the_next_step(tmp_path):
    from posttrain.trainers.grpo import train_grpo

    args = ("optim.batch_size=2", "optim.micro_batch_size=16", "optim.max_steps=2", "grpo.num_generations=4",
            "grpo.loss_type=dr_grpo", "grpo.scale_rewards=false", "train.save_every=1", "data.eval=null")
    train_grpo(rl_config("grpo", tmp_path, *args))
    first = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert (tmp_path / "out" / "checkpoints" / "step-000001" / "state.json").exists()
    train_grpo(rl_config("grpo", tmp_path, *args, "train.resume=true"))
    again = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert [r["step"] for r in again] == [1, 2]
    for key in ("loss", "reward/total", "grad_norm"):
        assert again[1][key] == pytest.approx(first[1][key], rel=1e-5, abs=1e-7), key


def test_ppo_learns_toy_task_with_adaptive_kl(tmp_path):
    from posttrain.trainers.ppo import train_ppo

    cfg = rl_config("ppo", tmp_path, "optim.batch_size=16", "optim.micro_batch_size=16", "optim.max_steps=6",
                    "ppo.epochs=2", "ppo.kl_coef=0.001", "ppo.kl_target=1.0", "ppo.kl_horizon=100",
                    "ppo.entropy_coef=0.001", copies=2)
    summary = train_ppo(cfg)
    out = tmp_path / "out"
    _completed(out)
    assert (out / "value_head.pt").exists()
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 6
    for key in ("reward/total", "kl", "kl_coef", "entropy", "clip_fraction", "value_loss", "response_length",
                "explained_variance", "score"):
        assert key in rows[-1], key
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert all(math.isfinite(r["value_loss"]) and r["entropy"] > 0 for r in rows)
    # the controller raises beta while the KL is above its target (error clipped at +0.2 per update)
    high = [r for r in rows if r["kl"] > 1.0]
    assert high and all(r["kl_coef_next"] > r["kl_coef"] for r in high)
    before, after = summary["eval_before/reward/pass_rate"], summary["eval_after/reward/pass_rate"]
    assert after >= 0.9 and after >= before + 0.15, (before, after)


def rejection_config(tmp_path, prompts, *overrides):
    """A rejection-sft config on tiny-random writing to tmp_path/out, batches of 4, SFT rows of at most 64 tokens."""
    return load_config("rejection-sft", None, [
        f"data.train={prompts}", "model.name=tiny-random", f"train.output_dir={tmp_path / 'out'}",
        "train.progress=false", "optim.batch_size=4", "optim.micro_batch_size=4", "max_length=64", *overrides])


def test_rejection_sft_trains_on_best_of_n(tmp_path):
    from posttrain.trainers.rejection_sft import train_rejection_sft

    prompts = lowercase_prompts(tmp_path / "prompts.jsonl", 0, 8)
    cfg = rejection_config(tmp_path, prompts, "rollout.max_new_tokens=3", "rejection.n=4", "optim.max_steps=2",
                           "optim.lr=1e-2")
    summary = train_rejection_sft(cfg)
    out = tmp_path / "out"
    _completed(out)
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    winners = [json.loads(line) for line in (out / "winners.jsonl").read_text().splitlines()]
    assert len(candidates) == 32 and summary["rejection/candidates"] == 32
    by_prompt = {}
    for c in candidates:
        by_prompt.setdefault(c["prompt_id"], []).append(c)
    for w in winners:
        best = max(c["score"] for c in by_prompt[w["prompt_id"]])
        assert w["score"] == best
        assert w["messages"][-1]["role"] == "assistant"
    assert summary["rejection/winner_mean_score"] >= summary["rejection/mean_score"]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2]


def test_rejection_sft_repairs_winners_that_break_their_constraint(tmp_path):
    from posttrain.verifiers.constraints import check_constraint
    from posttrain.trainers.rejection_sft import train_rejection_sft

    # one candidate per prompt: tiny-random's 6 tokens obey "all capitals" only by chance, so nearly every winner
    # is the repaired (upper-cased, tidied) copy of the prompt's only candidate
    rows = [{"prompt": f"Say something about {t}.", "constraints": [{"kind": "all_caps", "args": {}}]}
            for t in ["frogs", "hills", "lamps", "boats", "pears", "wolves", "drums", "forks"]]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    cfg = rejection_config(tmp_path, prompts, "rollout.max_new_tokens=6", "rejection.n=1", "rejection.repair=true",
                           "optim.max_steps=1")
    summary = train_rejection_sft(cfg)
    out = tmp_path / "out"
    _completed(out)
    candidates = {c["prompt_id"]: c for c in map(json.loads, (out / "candidates.jsonl").read_text().splitlines())}
    winners = [json.loads(line) for line in (out / "winners.jsonl").read_text().splitlines()]
    repaired = [w for w in winners if w.get("repaired")]
    assert repaired and summary["rejection/repaired_winners"] == len(repaired)
    # the candidates' mean score is over what was sampled; the repairs count only as winners
    assert summary["rejection/mean_score"] == pytest.approx(sum(c["score"] for c in candidates.values()) / 8)
    for w in winners:
        text, cand = w["messages"][-1]["content"], candidates[w["prompt_id"]]
        assert check_constraint(text, "all_caps") and w["score"] == 1.0
        if w.get("repaired"):  # the candidate as sampled failed; its repair is the same reply in capitals
            assert cand["score"] < 1.0 and not check_constraint(cand["response"], "all_caps")
            assert text.split() == tidy_text(cand).upper().split()
        else:
            assert text == cand["response"]


def tidy_text(candidate):
    from posttrain.verifiers.repair import tidy

    return tidy(candidate["response"], truncated=candidate["finish_reason"] == "length")


def test_rl_stages_registered():
    from posttrain.pipeline.registry import STAGES

    assert {"reward_model", "ppo", "grpo", "rejection_sft"} <= set(STAGES)
    assert STAGES["ppo"].inputs({"model": {"name": "m"}, "data": {"train": "p.jsonl"},
                                 "reward": {"reward_model": "rm"}}) == ["m", "p.jsonl", "rm"]


def test_grpo_combines_verifier_and_reward_model(tmp_path, reward_model_run):
    from posttrain.trainers.grpo import train_grpo

    rm = reward_model_run[0] / "model"
    cfg = rl_config("grpo", tmp_path, "optim.batch_size=2", "optim.micro_batch_size=16", "optim.max_steps=1",
                    "grpo.num_generations=4", f"reward.reward_model={rm}", "reward.reward_model_weight=0.5",
                    "data.eval=null", "grpo.loss_type=token")
    train_grpo(cfg)
    (row,) = read_metrics(tmp_path / "out" / "metrics.jsonl")
    # each component is logged, and the total is their weighted sum (means are linear)
    assert row["reward/total"] == pytest.approx(row["reward/verifier"] + 0.5 * row["reward/reward_model"], abs=1e-5)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"]["reward.reward_model"]["hash"].startswith("sha256:")


def test_ppo_full_finetune_separate_critic_reward_model(tmp_path, reward_model_run):
    """Full fine-tuning (frozen-copy reference), a separate critic, the reward model as the only reward."""
    from posttrain.trainers.ppo import train_ppo

    rm = reward_model_run[0] / "model"
    cfg = rl_config("ppo", tmp_path, "optim.batch_size=4", "optim.micro_batch_size=2", "optim.max_steps=2",
                    "optim.lr=1e-4", "peft.method=none", "ppo.value_model=separate", "ppo.mini_batches=2",
                    f"reward.reward_model={rm}", "reward.verifier_weight=0", "reward.clip=0.5", "data.eval=null",
                    "rollout.max_new_tokens=3", "train.save_every=1", "ppo.kl_target=0.5", "ppo.kl_horizon=10")
    train_ppo(cfg)
    out = tmp_path / "out"
    assert json.loads((out / "manifest.json").read_text())["status"] == "completed"
    assert (out / "model" / "model.safetensors").exists()
    rows = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2]
    assert all(abs(r["score"]) <= 0.5 + 1e-6 and "reward/reward_model" in r for r in rows)
    # the adaptive KL coefficient is checkpointed with the trainer state and restored on resume
    state = json.loads((out / "checkpoints" / "step-000001" / "state.json").read_text())
    assert state["rl"]["kl_coef"] == pytest.approx(rows[0]["kl_coef_next"])


def test_reward_verifier_components_pick_what_is_scored():
    """``reward.verifier_components`` limits the verifiers to the named checks: a reply in the right format with a
    wrong answer scores 1 on the constraint alone and 0.5 on both (their mean)."""
    from posttrain.config import RLRewardSection
    from posttrain.data.schema import PromptExample
    from posttrain.judges.reward import RewardFunction

    row = PromptExample([{"role": "user", "content": "What is 2 plus 2? Answer in all lowercase."}],
                        metadata={"constraints": [{"kind": "lowercase", "args": {}}], "answer": "4"})
    both = RewardFunction(RLRewardSection(), max_new_tokens=8)
    only = RewardFunction(RLRewardSection(verifier_components=["constraints"]), max_new_tokens=8)
    assert both([row], ["it is five."], [3])[0].tolist() == [0.5]
    assert only([row], ["it is five."], [3])[0].tolist() == [1.0]
    with pytest.raises(ValueError):
        RLRewardSection(verifier_components=["style"])
    styled = RewardFunction(RLRewardSection(verifier_style_penalty=0.25), max_new_tokens=8)
    assert styled([row, row], ["it is five.", '"it is 4."'], [3, 4])[0].tolist() == [0.5, 0.75]


@pytest.mark.parametrize("command", ["grpo", "ppo"])
def test_rl_prefix_sharing_takes_the_padded_step(tmp_path, monkeypatch, command):
    """The default (data.prefix_sharing: auto) runs the log-prob passes over prefix-tree rows, where the samples of
    one prompt share its forward pass (a row budget of 44 nodes also splits micro-batches into several rows):
    the first step (rollout, reference and old log-probs, loss, gradient, value loss) equals the padded batch's.
    One step only: after an Adam update, rounding-level gradient differences on near-zero entries become
    lr-sized steps, so later steps are not comparable to 1e-4."""
    import posttrain.ops.logprobs as logprobs

    calls = []
    real = logprobs.tree_target_hidden

    def counting(model, tree, **kwargs):
        calls.append(tree["input_ids"].shape)
        return real(model, tree, **kwargs)

    monkeypatch.setattr(logprobs, "tree_target_hidden", counting)
    if command == "grpo":
        from posttrain.trainers.grpo import train_grpo as train
        extra = ["grpo.num_generations=4", "grpo.beta=0.04"]
    else:
        from posttrain.trainers.ppo import train_ppo as train
        extra = ["ppo.epochs=1", "ppo.value_model=separate"]
    args = ["optim.batch_size=4", "optim.micro_batch_size=8", "optim.max_steps=1", "data.eval=null",
            *extra]  # rl_config: 1 new token, which passes about 2 times in 3: rewards vary, gradients are not 0
    rows = {}
    for layout, flags in (("padded", ["data.prefix_sharing=false"]), ("tree", ["data.tree_row_tokens=44"])):
        (tmp_path / layout).mkdir()
        train(rl_config(command, tmp_path / layout, *args, *flags, copies=2))
        rows[layout] = read_metrics(tmp_path / layout / "out" / "metrics.jsonl")[0]
        if layout == "padded":
            assert not calls
    assert calls and any(shape[0] > 1 for shape in calls)
    tree, padded = rows["tree"], rows["padded"]
    assert tree["reward/total"] == padded["reward/total"] and padded["grad_norm"] > 0
    for key in ["loss", "grad_norm", "kl"] + (["value_loss", "entropy"] if command == "ppo" else []):
        assert tree[key] == pytest.approx(padded[key], rel=1e-4, abs=1e-6), key


def test_reward_model_ensembles_combine_exactly():
    """reward.reward_model as a list: mean, min or mean - k * std (population) of the models' rewards."""
    import torch

    from posttrain.judges.reward import ensemble_rewards

    each = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5], [2.0, 1.0, 0.5]])  # 3 models x 3 completions
    assert ensemble_rewards(each, "mean").tolist() == pytest.approx([2.0, -1 / 3, 0.5])
    assert ensemble_rewards(each, "min").tolist() == [1.0, -2.0, 0.5]
    std = [(2 / 3) ** 0.5, (14 / 9) ** 0.5, 0.0]
    assert ensemble_rewards(each, "mean_minus_std", 2.0).tolist() == pytest.approx(
        [2.0 - 2 * std[0], -1 / 3 - 2 * std[1], 0.5])
    assert ensemble_rewards(each[:1], "min").tolist() == [1.0, -2.0, 0.5]  # one model: itself
    with pytest.raises(ValueError, match="reward_model_reduce"):
        ensemble_rewards(each, "median")


def test_a_reward_model_ensemble_as_the_grpo_reward(tmp_path, reward_model_run):
    """Two reward models (the same tiny classifier saved twice) as reward.reward_model with reduce min: the reward
    function scores with both and logs their disagreement (0 for identical models)."""
    from posttrain.config import RLRewardSection
    from posttrain.data.schema import PromptExample
    from posttrain.judges.reward import RewardFunction
    from posttrain.judges.reward_model import RewardModelJudge

    import shutil

    import torch

    rm = reward_model_run[0] / "model"
    second = tmp_path / "rm2"
    shutil.copytree(rm, second)
    row = PromptExample([{"role": "user", "content": "Say hi."}], metadata={})
    single = RewardFunction(RLRewardSection(verifier_weight=0, reward_model=str(rm)), max_new_tokens=8)
    pair = RewardFunction(RLRewardSection(verifier_weight=0, reward_model=[str(rm), str(second)],
                                          reward_model_reduce="min"), max_new_tokens=8)
    texts = ["hi", "hello there"]
    one, _ = single([row, row], texts, [1, 2])
    both, metrics = pair([row, row], texts, [1, 2])
    assert torch.allclose(one, both) and metrics["reward/reward_model_disagreement"] == 0.0
    expected = RewardModelJudge(str(rm)).rewards([(row.prompt, t) for t in texts])
    assert one.tolist() == pytest.approx(expected, rel=1e-5)


def test_rejection_sft_is_the_sft_trainer_on_its_winners(tmp_path):
    """Rejection-SFT selects winners, then hands them to the SFT trainer: `posttrain sft` on its winners.jsonl with
    the same optimisation settings takes the same steps (losses equal), and the run's config.yaml records the
    micro-batch layout the SFT trainer resolved."""
    import yaml

    from posttrain.trainers.rejection_sft import train_rejection_sft
    from posttrain.trainers.sft import train_sft

    prompts = lowercase_prompts(tmp_path / "prompts.jsonl", 0, 8)
    optim = ["optim.max_steps=3", "optim.lr=1e-2", "optim.batch_size=4", "optim.micro_batch_size=2"]
    cfg = rejection_config(tmp_path, prompts, "rollout.max_new_tokens=5", "rejection.n=3", *optim)
    train_rejection_sft(cfg)
    out = tmp_path / "out"
    _completed(out)
    resolved = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert resolved["prefix_sharing"] is True and resolved["tree_row_tokens"] > 0
    sft = load_config("sft", None, [
        f"data.train={out / 'winners.jsonl'}", "data.max_length=64", "model.name=tiny-random",
        f"train.output_dir={tmp_path / 'sft'}", "train.progress=false", *optim])
    train_sft(sft)
    ours, theirs = read_metrics(out / "metrics.jsonl"), read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [1, 2, 3]
    for a, b in zip(ours, theirs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6) and a["grad_norm"] == pytest.approx(b["grad_norm"],
                                                                                                    rel=1e-5)
