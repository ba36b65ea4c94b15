"""Online DPO (OAIF) end to end on tiny-random (CPU), with judges whose labels are predictable.

Scoring judge: the verifier's regex answer check on one-token answers (``rl_common`` test task: any letter passes;
tiny-random answers "\\n" about 1 time in 3 at temperature 0.1), so every kept pair must have a letter in its chosen
answer and none in its rejected. Pairwise judge: a real ``LLMJudge`` against a scripted OpenAI-compatible server
on 127.0.0.1 that prefers the longer response (and says tie on equal lengths): the pairs trained on must be exactly
the ones its answers imply, read back from the requests it received.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from posttrain.config import ConfigError, load_config
from posttrain.training.metrics import read_metrics

from .helpers import TOPICS, write_jsonl
from .helpers import ScriptedServer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[2]


def letter_prompts(path, n: int = 8):
    return write_jsonl(path, [{"prompt": f"Name one thing about {TOPICS[i % len(TOPICS)]}.", "answer": "[A-Za-z]",
                               "match": "regex"} for i in range(n)])


def base_args(tmp_path, prompts, *extra):
    return [f"data.train={prompts}", "model.name=tiny-random", "data.shuffle=false",
            f"train.output_dir={tmp_path / 'out'}", "train.progress=false", "rollout.max_new_tokens=1",
            "rollout.temperature=0.1", "optim.batch_size=8", "optim.micro_batch_size=4", "optim.lr=1e-4", *extra]


def read_pairs(out) -> list[dict]:
    return [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]


def has_letter(text: str) -> bool:
    return any(c.isascii() and c.isalpha() for c in text)


def test_cli_run_with_verifier_pairs_follow_its_labels(tmp_path):
    from safetensors.torch import load_file

    from posttrain.cli import app

    prompts = letter_prompts(tmp_path / "prompts.jsonl")
    args = base_args(tmp_path, prompts, "optim.max_steps=3", "optim.lr=1e-2", f"data.eval={prompts}",
                     "rollout.eval_temperature=0.1", "rollout.eval_samples=4")
    result = CliRunner().invoke(app, ["online-dpo", *args])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and set(manifest["outputs"]) >= {"model", "metrics", "pairs"}
    assert (out / "config.yaml").exists() and "online:" in (out / "config.yaml").read_text()
    rows, pairs = read_metrics(out / "metrics.jsonl"), read_pairs(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:  # G = 2, best vs worst: each prompt gives a pair or a tie (a pass and a fail never tie)
        assert r["pairs/kept"] + r["pairs/ties"] == 8 and r["pairs/dropped"] == 0
        assert r["pairs/kept"] == sum(p["step"] == r["step"] for p in pairs)
        assert r["response_length"] == 1.0 and 0 <= r["score/pass_rate"] <= 1
    assert sum(r["pairs/kept"] for r in rows) >= 4
    for p in pairs:  # the verifier's labels, in every pair trained on
        assert has_letter(p["chosen"]) and not has_letter(p["rejected"]), p
        assert (p["chosen_score"], p["rejected_score"], p["margin"]) == (1.0, 0.0, 1.0)
        assert p["judge"]["judges"] == ["verifier"] and p["chosen_tokens"] == p["rejected_tokens"] == 1
    first = next(r for r in rows if r["pairs/kept"])
    if first["step"] == 1:  # policy == reference on fresh reference log-probs of the same sequences: DPO = log 2
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    for r in rows:
        if r["pairs/kept"]:
            assert math.isfinite(r["loss"]) and r["grad_norm"] > 0 and "rewards/accuracy" in r
            assert r["score/chosen"] == 1.0 and r["score/rejected"] == 0.0 and r["length/chosen"] == 1.0
        else:  # every prompt tied (the policy has learnt to pass): no pair, no update, and the run goes on
            assert r["loss"] is None and r["grad_norm"] is None
    assert any(not r["pairs/kept"] for r in rows)
    m = manifest["metrics"]
    assert m["pairs/trained"] == len(pairs)
    # the summary reports the last step that trained, and counts the steps that had nothing to learn from
    assert m["train/loss"] == [r for r in rows if r["pairs/kept"]][-1]["loss"]
    assert m["train/steps_without_update"] == sum(not r["pairs/kept"] for r in rows) >= 1
    before, after = m["eval_before/score/pass_rate"], m["eval_after/score/pass_rate"]
    assert after >= before + 0.15, (before, after)  # it learns to stop answering "\n"
    lora_b = [v for k, v in load_file(out / "model" / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # LoRA B starts at 0: the adapter trained


def _longer_wins(body):
    """The scripted LLM judge: the longer response wins wherever it is shown; equal lengths are a tie."""
    a, b = _responses(body["messages"][-1]["content"])
    return "Verdict: tie" if len(a) == len(b) else "Because.\nVerdict: " + ("A" if len(a) > len(b) else "B")


def _responses(user: str) -> tuple[str, str]:
    return (user.split("<response_a>\n", 1)[1].rsplit("\n</response_a>", 1)[0],
            user.split("<response_b>\n", 1)[1].rsplit("\n</response_b>", 1)[0])


def test_llm_judge_pairs_are_exactly_its_verdicts(tmp_path):
    from posttrain.trainers.online_dpo import train_online_dpo

    server = ScriptedServer()
    server.answer = _longer_wins
    try:
        prompts = write_jsonl(tmp_path / "prompts.jsonl",
                              [{"prompt": f"Write about {TOPICS[i]}."} for i in range(8)])
        judge = json.dumps([{"type": "llm", "base_url": server.url, "model": "scripted",
                             "cache_path": str(tmp_path / "judge.sqlite"), "backoff_base": 0.01}])
        summary = train_online_dpo(load_config("online-dpo", None, base_args(
            tmp_path, prompts, "optim.max_steps=2", "rollout.temperature=1.0", "rollout.max_new_tokens=3",
            f"online.judges={judge}", "online.strategy=round_robin", "peft.method=dora")))
    finally:
        server.close()
    out = tmp_path / "out"
    rows, pairs = read_metrics(out / "metrics.jsonl"), read_pairs(out)
    asked = set()
    for body in server.requests:
        user = body["messages"][-1]["content"]
        conversation = user.split("<conversation>\n", 1)[1].split("\n</conversation>", 1)[0]
        asked.add((conversation.removeprefix("[user]\n"), *_responses(user)))
    # every comparison was asked in both orders
    assert all((c, b, a) in asked for c, a, b in asked)
    implied = {(c, a, b) for c, a, b in asked if len(a) > len(b)}
    trained = {(p["prompt"][-1]["content"], p["chosen"], p["rejected"]) for p in pairs}
    assert trained == implied and len(pairs) >= 8
    assert all(p["judge"]["judges"] == ["llm:scripted"] and p["chosen_score"] == 1.0 for p in pairs)
    assert sum(r["pairs/kept"] for r in rows) == len(pairs)
    ties = {(c, frozenset((a, b))) for c, a, b in asked if len(a) == len(b) and a != b}
    assert sum(r["pairs/ties"] for r in rows) == len(ties)
    assert summary["judge/llm:scripted/requests"] == len(server.requests)
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-5) and all(math.isfinite(r["loss"]) for r in rows)
    for r in rows:  # the length-bias watch, in tokens, over the step's pairs
        mine = [p for p in pairs if p["step"] == r["step"]]
        longer = sum(p["chosen_tokens"] > p["rejected_tokens"] for p in mine) / len(mine)
        assert r["length/frac_chosen_longer"] == pytest.approx(longer)
        assert r["length/chosen"] == pytest.approx(sum(p["chosen_tokens"] for p in mine) / len(mine))


def test_full_finetune_reference_untouched_ipo(tmp_path, monkeypatch):
    """Full fine-tuning: the reference is a frozen copy that must not move while the policy does."""
    import posttrain.trainers.online_dpo as online
    from posttrain.models.resolve import load_causal_lm

    seen = {}
    real = online.build_reference

    def spy(policy, mode, needs):
        seen["frozen"], kind = real(policy, mode, needs)
        seen["policy"], seen["kind"] = policy, kind
        return seen["frozen"], kind

    monkeypatch.setattr(online, "build_reference", spy)
    prompts = letter_prompts(tmp_path / "prompts.jsonl")
    online.train_online_dpo(load_config("online-dpo", None, base_args(
        tmp_path, prompts, "optim.max_steps=2", "peft.method=none", "loss.type=ipo", "optim.lr=1e-3")))
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert rows[0]["pairs/kept"] > 0 and all(math.isfinite(r["loss"]) for r in rows if r["pairs/kept"])
    assert rows[0]["loss"] == pytest.approx(0.25 / 0.1 ** 2, rel=1e-5)  # IPO at policy == reference: (1/2beta)^2
    base = {k: v.clone() for k, v in load_causal_lm("tiny-random").state_dict().items()}
    assert seen["kind"] == "copy"
    frozen, policy = seen["frozen"].state_dict(), seen["policy"].state_dict()
    assert all(torch.equal(frozen[k], base[k]) for k in base)
    assert any(not torch.equal(policy[k], base[k]) for k in base)
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()


def test_resume_reproduces_the_next_step(tmp_path):
    from posttrain.trainers.online_dpo import train_online_dpo

    prompts = letter_prompts(tmp_path / "prompts.jsonl")
    args = base_args(tmp_path, prompts, "optim.max_steps=2", "train.save_every=1", "optim.lr=1e-3")
    train_online_dpo(load_config("online-dpo", None, args))
    out = tmp_path / "out"
    first, first_pairs = read_metrics(out / "metrics.jsonl"), read_pairs(out)
    assert (out / "checkpoints" / "step-000001" / "state.json").exists()
    assert first[1]["pairs/kept"] > 0  # the resumed step has something to train on
    train_online_dpo(load_config("online-dpo", None, args + ["train.resume=true"]))
    again, again_pairs = read_metrics(out / "metrics.jsonl"), read_pairs(out)
    assert [r["step"] for r in again] == [1, 2]
    assert again_pairs == first_pairs  # same samples, same labels, step 1's pairs not listed twice
    for key in ("loss", "grad_norm", "pairs/kept", "rewards/margins", "logps/chosen"):
        assert again[1][key] == pytest.approx(first[1][key], rel=1e-5, abs=1e-7), key


def test_a_run_that_never_keeps_a_pair_fails(tmp_path):
    """A judge that passes every sample (the regex "^") never separates two samples: nothing can be trained, and
    the run says so instead of saving the starting model as if it were trained."""
    from posttrain.trainers.online_dpo import train_online_dpo

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Say {t}.", "answer": "^", "match": "regex"}
                                                        for t in TOPICS[:8]])
    with pytest.raises(ConfigError, match="no step kept a pair"):
        train_online_dpo(load_config("online-dpo", None, base_args(tmp_path, prompts, "optim.max_steps=2")))
    out = tmp_path / "out"
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    rows = read_metrics(out / "metrics.jsonl")
    assert [(r["pairs/kept"], r["pairs/ties"], r["loss"]) for r in rows] == [(0, 8, None)] * 2
    assert (out / "pairs.jsonl").read_text() == ""


def test_config_errors_name_the_key(tmp_path):
    from posttrain.trainers.online_dpo import train_online_dpo

    prompts = letter_prompts(tmp_path / "prompts.jsonl")
    with pytest.raises(ConfigError, match=r"key 'online.num_generations': .*greater than or equal to 2"):
        load_config("online-dpo", None, base_args(tmp_path, prompts, "online.num_generations=1"))
    with pytest.raises(ConfigError, match="reference_model"):  # a pinned reference is not wired into online DPO
        load_config("online-dpo", None, base_args(tmp_path, prompts, "loss.reference_model=tiny-random"))
    with pytest.raises(ConfigError, match="loss.reference_cache does not apply"):
        load_config("online-dpo", None, base_args(tmp_path, prompts, "loss.reference_cache=true"))
    bad = json.dumps([{"type": "verifier", "colour": "red"}])
    with pytest.raises(ConfigError, match=r"online.judges\[0\] \(verifier\): unknown key 'colour'"):
        train_online_dpo(load_config("online-dpo", None, base_args(tmp_path, prompts, f"online.judges={bad}")))
    assert not (tmp_path / "out").exists()  # nothing written for a config mistake
    # the shipped example is a valid config; its defaults are the command's (LoRA lr, constant schedule)
    cfg = load_config("online-dpo", REPO / "examples" / "online_dpo.yaml")
    assert cfg.online.num_generations >= 2 and cfg.optim.schedule == "constant"
    assert load_config("online-dpo", None, ["data.train=x"]).optim.lr == 5e-5


def test_pipeline_stage_registered_with_judge_inputs(tmp_path):
    from posttrain.pipeline.registry import STAGES, training_config

    spec = STAGES["online_dpo"]
    params = {"model": {"name": "m"}, "data": {"train": "p.jsonl"},
              "online": {"judges": [{"type": "verifier"}, {"type": "reward_model", "model": "runs/rm/model"}],
                         "num_generations": 4}}
    assert spec.inputs(params) == ["m", "p.jsonl", "runs/rm/model"]
    cfg = training_config("online-dpo", params, tmp_path / "stage", False)
    assert cfg.online.judges[1] == {"type": "reward_model", "model": "runs/rm/model"}
    assert cfg.online.num_generations == 4 and cfg.train.output_dir == str(tmp_path / "stage")


TWO_PROCESS_SCRIPT = '''
import json, os, sys
import torch
import posttrain.trainers.online_dpo as trainer
from posttrain.config import load_config
from posttrain.training.parallel import is_sharded

torch.set_num_threads(1)
out, args = sys.argv[1], sys.argv[2:]
seen, real_fit_rl = {}, trainer.fit_rl
def keep(model, *a, **k):
    seen["model"] = model
    return real_fit_rl(model, *a, **k)
trainer.fit_rl = keep
summary = trainer.train_online_dpo(load_config("online-dpo", None, [f"train.output_dir={out}", *args]))
with open(f"{out}.rank{os.environ.get('RANK', '0')}.json", "w") as fh:
    json.dump({**{k: v for k, v in summary.items() if isinstance(v, (int, float))},
               "sharded": is_sharded(seen["model"])}, fh)
'''


@pytest.mark.distributed
# DeepSpeed is slow (make test-backends, run by CI): the same halves as DDP and FSDP2, 18 s on 2 cores
@pytest.mark.parametrize("strategy,port", [("ddp", 29617), ("fsdp2", 29618),
                                           pytest.param("deepspeed", 29619, marks=pytest.mark.slow)])
def test_two_processes_match_one(tmp_path, strategy, port):
    """Under torchrun each process samples, judges and pairs its half of a step's prompts: the pairs, their count
    and the step (loss over all pairs, summed gradients) are one process's. Step 1 gives one process pairs and the
    other none, which must still take part in every reduction (it runs a zero-weight pair). Under fsdp2 and
    DeepSpeed (ZeRO-2, which reduces gradients in every backward) the process with fewer pairs fills up with
    zero-weight pairs so both run the same number of micro-batches."""
    import os
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(TWO_PROCESS_SCRIPT)
    prompts = letter_prompts(tmp_path / "prompts.jsonl")
    args = [a for a in base_args(tmp_path, prompts, "optim.max_steps=2", "optim.lr=1e-2",
                                 "optim.micro_batch_size=2") if not a.startswith("train.output_dir")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    for cmd in (torchrun + [str(script), str(tmp_path / "two"), *args, f"parallel.strategy={strategy}"],
                [sys.executable, str(script), str(tmp_path / "one"), *args]):
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    two, one = read_metrics(tmp_path / "two" / "metrics.jsonl"), read_metrics(tmp_path / "one" / "metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2] and two[0]["pairs/kept"] > 0
    for a, b in zip(two, one):
        for key in ("pairs/kept", "pairs/ties", "score/pass_rate", "length/chosen", "rewards/accuracy"):
            assert a.get(key) == pytest.approx(b.get(key)), (a["step"], key)
        for key in ("loss", "grad_norm", "logps/chosen"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    pairs = read_pairs(tmp_path / "one")
    key = lambda p: (p["step"], p["prompt_id"])  # noqa: E731 (each process writes its shard's pairs, gathered)
    assert sorted(read_pairs(tmp_path / "two"), key=key) == sorted(pairs, key=key)
    # prompt rows 1, 3, ... are process 0's, 2, 4, ... process 1's: some step gave pairs to one process only
    shards = {s: {(int(p["prompt_id"].split(":")[0]) - 1) % 2 for p in pairs if p["step"] == s} for s in (1, 2)}
    assert any(len(owners) == 1 for owners in shards.values()), shards
    ranks = [json.loads((tmp_path / f"two.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["pairs/trained"] == ranks[1]["pairs/trained"] == len(pairs)
    assert [r["sharded"] for r in ranks] == [strategy == "fsdp2"] * 2


def test_unreachable_llm_judge_is_one_error_line(tmp_path):
    """An LLM judge endpoint that refuses every connection ends the command with exit 2 and one line naming it."""
    import socket

    from posttrain.cli import app

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"Write about {TOPICS[i]}."} for i in range(8)])
    judge = json.dumps([{"type": "llm", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m", "max_retries": 0,
                         "cache_path": str(tmp_path / "judge.sqlite")}])
    result = CliRunner().invoke(app, ["online-dpo", *base_args(tmp_path, prompts, "optim.max_steps=1",
                                                               "rollout.temperature=1.0", "rollout.max_new_tokens=3",
                                                               f"online.judges={judge}")])
    assert result.exit_code == 2, result.output
    assert f"127.0.0.1:{port}" in result.output and "Traceback" not in result.output
