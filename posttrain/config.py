"""One pydantic model per command, sections as fields.

Precedence: defaults < YAML file < dotted CLI overrides (``optim.lr=1e-5``). Unknown keys and wrong types are
errors that name the key. The resolved config is written to the output folder before step 0.
"""

from __future__ import annotations

import copy
import difflib
import importlib.util
import textwrap
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from posttrain.losses import LOSSES, PAIRED_LOSS_TYPES, get_loss


class ConfigError(ValueError):
    """A config problem a user can fix; ``str()`` names the file and key."""


class Section(BaseModel):
    # allow_inf_nan=False: `optim.lr=.inf` or `loss.beta=nan` is a config error, never a run that trains on it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSection(Section):
    name: str = Field("tiny-random", description="builtin name, local HF folder, or hub id")
    adapter: str | None = Field(None, description="PEFT adapter folder to load on top of the model")
    cache_dir: str | None = Field(None, description="where builtin models are converted and cached")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    gradient_checkpointing: bool = Field(False, description="activation checkpointing: keep fewer activations "
                                         "for the backward and recompute them (less memory, more compute)")
    checkpoint_every: int = Field(1, ge=1, description="with gradient_checkpointing: checkpoint every N-th decoder "
                                  "layer only (1: all; 2: half of them, about half the memory saving for half the "
                                  "recompute): a point between the two ends of the speed/memory trade")
    trust_remote_code: bool = False

    @model_validator(mode="after")
    def _checkpoint_every_needs_checkpointing(self):
        if self.checkpoint_every > 1 and not self.gradient_checkpointing:
            raise ValueError(f"model.checkpoint_every={self.checkpoint_every} only applies with "
                             "model.gradient_checkpointing=true")
        return self


class PeftSection(Section):
    method: Literal["none", "lora", "dora", "qlora"] = "lora"
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class DataSource(Section):
    """One data source of a mixture (``data/sources.py``)."""
    path: str = Field(..., description="file (jsonl/json/parquet/csv), datasets folder, or hub id")
    name: str | None = Field(None, description="the hub dataset's configuration (gsm8k: main)")
    split: str | None = Field(None, description="the split (default: data.split, else train)")
    columns: dict[str, str] = Field(default_factory=dict, description="{schema field: column in this source}, e.g. "
                                    "{prompt: question}")
    weight: float = Field(1.0, gt=0, description="rows taken: floor(weight) copies plus a seeded sample of the "
                          "fraction")


SOURCE_HELP = ("a file (jsonl/json/parquet/csv), datasets folder or hub id; or {path, name, split, columns, weight}; "
               "or a list of those (a weighted mixture)")


class DataSection(Section):
    train: str | DataSource | list[DataSource] = Field(..., description=SOURCE_HELP)
    eval: str | DataSource | list[DataSource] | None = None
    split: str | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description="held out from train when `eval` is unset")
    max_length: int = Field(512, gt=8)
    truncation: Literal["drop", "truncate"] = "drop"
    shuffle: bool = True
    packing: bool = Field(False, description="padding-free: each micro-batch is one row of concatenated sequences "
                                             "(SFT and preference training; see docs/PERFORMANCE.md)")
    prefix_sharing: bool | Literal["auto"] = Field(
        "auto", description="SFT, preference and reward-model training: each micro-batch becomes rows where a "
        "prefix shared by several sequences (a pair's prompt, the system prompt) is stored and computed once, under "
        "a tree attention mask (same losses; see docs/PERFORMANCE.md). auto: on unless data.packing is on or the "
        "model uses flash-attention (which cannot take the tree mask)")
    tree_row_tokens: int | None = Field(None, gt=0, description="with prefix sharing: most trie nodes in one row "
                                        "(a row's attention is quadratic in its length, so a long micro-batch "
                                        "splits into several rows); default from the model's size")
    sort_by_length: bool = Field(False, description="group similar lengths into the same micro-batch (less "
                                                    "padding when packing is off); order stays seeded")
    sort_window: int = Field(32, gt=0, description="with sort_by_length: batches per window of the seeded "
                                                   "permutation that are sorted by length")

    @model_validator(mode="after")
    def _one_layout(self):
        if self.packing and self.prefix_sharing is True:
            raise ValueError("data.packing and data.prefix_sharing are two layouts of a micro-batch: pick one "
                             "(prefix_sharing also removes the padding)")
        return self


class OptimSection(Section):
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    warmup_steps: int | None = Field(None, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(8, gt=0, description="examples (or pairs) per optimizer step, over all processes")
    micro_batch_size: int = Field(8, gt=0, description="examples per forward pass on one process")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0, description="overrides epochs")


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def missing_tracker(names) -> str | None:
    """The first tracker in ``names`` whose package is not installed, as a one-line message; None when all are
    (``find_spec`` only: nothing is imported)."""
    for name in names:
        if importlib.util.find_spec(TRACKER_PACKAGES[name]) is None:
            return (f"train.report_to: {name} needs the '{TRACKER_PACKAGES[name]}' package: pip install "
                    f"'posttrain[{name}]' (or pip install {TRACKER_PACKAGES[name]})")
    return None


class TrainSection(Section):
    output_dir: str = "runs/out"
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    log_every: int = Field(1, gt=0)
    eval_every: int | None = Field(None, gt=0)
    save_every: int | None = Field(None, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    on_nonfinite: Literal["fail", "skip"] = Field(
        "fail", description="a step whose loss or gradient norm is NaN/inf: fail stops the run (no model saved, "
        "checkpoints kept); skip drops that update and goes on")
    report_to: list[Literal["tensorboard", "wandb", "mlflow", "trackio"]] = Field(
        default_factory=list, description="experiment trackers that also get every metrics.jsonl record and the "
        "resolved config (training/trackers.py); none by default")
    log_samples: int = Field(4, ge=0, description="PPO, GRPO, online DPO: completions sampled at each logged step "
                             "(prompt, completion, reward; online DPO: its pairs); SFT, the DPO family, KTO: greedy "
                             "answers to the first N eval prompts at each evaluation, beside the data's answer "
                             "(needs an eval split; not under fsdp2); kept in samples.jsonl and sent to the "
                             "trackers as a table; 0: none")
    log_samples_max_new_tokens: int = Field(64, gt=0, description="SFT, the DPO family, KTO: the token budget of "
                                            "each sample answer (log_samples)")
    run_name: str | None = Field(None, description="the run's name in the trackers (default: the output folder's "
                                 "name)")

    @model_validator(mode="after")
    def _trackers_installed(self):
        problem = missing_tracker(self.report_to)
        if problem:
            raise ValueError(problem)
        return self


class ParallelSection(Section):
    strategy: Literal["ddp", "fsdp2", "deepspeed"] = Field(
        "ddp", description="ddp: every process holds the whole model; fsdp2: parameters, gradients and optimizer "
        "state sharded over the processes per decoder layer (torch FSDP2, training/parallel.py; every trainer); "
        "deepspeed: DeepSpeed ZeRO at zero_stage (sft, the DPO family, kto, reward-model, rejection-sft)")
    zero_stage: Literal[2, 3] = Field(
        2, description="with strategy=deepspeed: 2 partitions optimizer state and gradients, 3 also the parameters "
        "(and a full fine-tuning reference copy); an accelerate DeepSpeed config's zero_stage replaces it")


class PreferenceLossSection(Section):
    type: Literal[PAIRED_LOSS_TYPES] = "dpo"
    beta: float | None = Field(None, gt=0, description="default depends on the loss (losses.LOSSES: dpo 0.1, simpo "
                                                       "2.0); resolved here, so config.yaml records the value used")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO for dpo, rDPO for robust")
    gamma: float = Field(0.5, description="SimPO margin")
    length_alpha: float = Field(0.0, ge=0, description="R-DPO (dpo only): adds length_alpha * (|chosen| - "
                                "|rejected|) tokens to the DPO logit, so a longer chosen answer is pushed up less; "
                                "0.01-0.05 against length drift")
    rpo_alpha: float = Field(0.0, ge=0, description="weight of an NLL term on chosen (RPO)")
    reference: Literal["auto", "adapter-disabled", "copy"] = "auto"
    reference_model: str | None = Field(None, description="pin the reference to this model (builtin name, model or "
                                        "adapter folder, hub id; same tokenizer as the policy), loaded as a frozen "
                                        "copy: e.g. the SFT model for every round of iterated DPO. Default: the "
                                        "model training starts from")
    reference_cache: bool = Field(True, description="store reference log-probs on disk, keyed by reference "
                                                    "weights and sequence content; later epochs and reruns skip "
                                                    "the reference forward")
    reference_cache_dir: str | None = Field(None, description="default: <train.output_dir>/refcache/ (never "
                                                              "beside the data); share one folder between runs, "
                                                              "e.g. $POSTTRAIN_CACHE/refcache, to reuse values")

    @model_validator(mode="after")
    def _params_belong_to_loss(self):
        spec = get_loss(self.type)
        if self.beta is None:
            # Not through __setattr__: that would mark beta as set, and command_defaults would then carry this
            # loss's beta under a user's partial `loss` section that picks another loss type.
            self.__dict__["beta"] = spec.default_beta
        for name in ("label_smoothing", "gamma", "length_alpha"):
            if getattr(self, name) != type(self).model_fields[name].default and name not in spec.params:
                raise ValueError(f"loss.{name} is not a parameter of loss '{self.type}' (it takes: "
                                 f"beta, rpo_alpha{''.join(', ' + p for p in spec.params)})")
        if self.reference_model is not None and not spec.needs_reference:
            raise ValueError(f"loss.reference_model is set but loss '{self.type}' uses no reference model")
        if self.reference_model is not None and self.reference == "adapter-disabled":
            raise ValueError("loss.reference_model is a separate frozen model; it cannot be combined with "
                             "loss.reference=adapter-disabled (use auto or copy)")
        return self


class KTOLossSection(Section):
    beta: float = Field(LOSSES["kto"].default_beta, gt=0)
    desirable_weight: float = Field(1.0, gt=0)
    undesirable_weight: float = Field(1.0, gt=0)
    reference: Literal["auto", "adapter-disabled", "copy"] = "auto"


def refuse_layouts(data: DataSection, command: str, why: str) -> None:
    """For commands that train on padded batches only: data.packing / data.prefix_sharing are an error, not
    silently ignored."""
    if data.packing or data.prefix_sharing is True:
        raise ValueError(f"{command}: data.packing and data.prefix_sharing are not supported ({why}); set them "
                         f"to false")


class SFTConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: DataSection
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()


class MixSFTSection(Section):
    path: str | DataSource | list[DataSource] | None = Field(
        None, description="SFT rows mixed into preference training (seed: 'mix in SFT data, 10-20% of batches', so "
        "capability stays anchored): " + SOURCE_HELP)
    fraction: float = Field(0.15, gt=0, le=1, description="share of the training pairs that each bring one SFT "
                            "row into their micro-batch (drawn from the pair's content: reruns, resumed runs and "
                            "any process count mix the same rows)")
    weight: float = Field(1.0, ge=0, description="each mixed row's token-mean NLL is added with this weight, in the "
                          "units of one pair's loss; logged as sft/nll, the share of pairs mixing as sft/mixed")


class DPOConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: DataSection
    optim: OptimSection = OptimSection(lr=5e-5)
    loss: PreferenceLossSection = PreferenceLossSection()
    mix_sft: MixSFTSection = MixSFTSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()

    @model_validator(mode="after")
    def _mix_sft_strategy(self):
        p = self.parallel
        if self.mix_sft.path is not None and (p.strategy == "fsdp2" or (p.strategy, p.zero_stage) == ("deepspeed", 3)):
            raise ValueError(f"mix_sft with parallel.strategy={p.strategy} is not supported (the extra SFT forward "
                             "runs on some processes only, and a forward of sharded parameters is collective); use "
                             "ddp or deepspeed with zero_stage 2")
        return self


class KTOConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: DataSection
    optim: OptimSection = OptimSection(lr=5e-5)
    loss: KTOLossSection = KTOLossSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()

    @model_validator(mode="after")
    def _kl_needs_two(self):
        if self.optim.micro_batch_size < 2:
            raise ValueError("optim.micro_batch_size must be >= 2 for KTO (its KL reference point mismatches rows)")
        refuse_layouts(self.data, "kto", "the KL rows pair each row with its neighbour in the micro-batch")
        return self


class MergeConfig(Section):
    model: ModelSection
    output: str


# --- reward model, PPO, GRPO, rejection-sampling SFT (docs/RL.md) ---

class RewardModelLossSection(Section):
    margin_key: str | None = Field(None, description="pair metadata field holding a per-pair margin (Llama 2)")
    centering: float = Field(0.0, ge=0, description="coefficient of (r_c + r_r)^2, keeps rewards centred at 0")


class RewardModelConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: DataSection
    optim: OptimSection = OptimSection(lr=1e-4)
    loss: RewardModelLossSection = RewardModelLossSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()

    @model_validator(mode="after")
    def _padded_only(self):
        if self.data.packing:
            raise ValueError("reward-model: data.packing is not supported (the classifier pools each row's last "
                             "token); prefix sharing is, and is on by default")
        return self


class PromptDataSection(Section):
    train: str | DataSource | list[DataSource] = Field(..., description="prompt rows (metadata such as constraints/"
                                                       "answer/tests is kept): " + SOURCE_HELP)
    eval: str | DataSource | list[DataSource] | None = Field(None, description="held-out prompts: greedy reward "
                                                             "before and after training")
    split: str | None = None
    max_prompt_length: int = Field(256, gt=0, description="longer prompts are dropped (counted in the summary)")
    shuffle: bool = True
    prefix_sharing: bool | Literal["auto"] = Field(
        "auto", description="PPO/GRPO log-prob passes run each micro-batch of rollouts as prefix-tree rows, so the "
        "samples of one prompt share its forward pass (same numbers); rejection-SFT's SFT steps use it as posttrain "
        "sft does. auto: on unless the model uses flash-attention")
    tree_row_tokens: int | None = Field(None, gt=0, description="with prefix sharing: most trie nodes in one row "
                                        "(default from the model's size)")


class RolloutSection(Section):
    max_new_tokens: int = Field(64, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_size: int = Field(32, gt=0, description="sequences per generate call")
    eval_temperature: float = Field(0.0, ge=0, description="held-out prompts (data.eval): 0 is greedy")
    eval_samples: int = Field(1, gt=0, description="samples per held-out prompt (same seeds before and after)")
    backend: Literal["hf", "vllm"] = Field("hf", description="vllm: a colocated vLLM engine (GPU) that receives "
                                           "the policy's weights before every rollout (PPO, GRPO)")
    vllm_gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="GPU memory share vLLM reserves "
                                               "(the rest is training's)")


class RLRewardSection(Section):
    verifier_weight: float = Field(1.0, ge=0, description="weight of the verifiers (constraints, answer, tests)")
    verifier_components: list[Literal["constraints", "answer", "tests"]] | None = Field(
        None, min_length=1, description="which verifiers score a response when its row has several (default: all)")
    verifier_style_penalty: float = Field(0.0, ge=0, le=1, description="subtracted from the verifier score of a "
                                          "response that loops, or quotes or capitalises itself unasked")
    reward_model: str | list[str] | None = Field(None, description="a reward-model folder (posttrain reward-model "
                                                 "output), or a list of them: an ensemble")
    reward_model_reduce: Literal["mean", "min", "mean_minus_std"] = Field(
        "mean", description="how an ensemble's rewards combine per completion: mean, min (the most pessimistic "
        "model: harder to hack), or mean - reward_model_std_k * std (uncertainty-penalised)")
    reward_model_std_k: float = Field(1.0, ge=0, description="k of mean_minus_std")
    reward_model_weight: float = Field(1.0, ge=0)
    reward_model_batch_size: int = Field(8, gt=0)
    rubric: str | None = Field(None, description="a rubric file (docs/RL.md, judges/rubric.py): the weighted mean "
                               "of per-rule grades in [0, 1]; verifier rules need no LLM, the others ask "
                               "rubric_base_url")
    rubric_weight: float = Field(1.0, ge=0)
    rubric_base_url: str | None = Field(None, description="OpenAI-compatible endpoint that grades the rubric's "
                                        "rules without a verifier (with rubric_model)")
    rubric_model: str | None = Field(None, description="the model name sent to rubric_base_url")
    rubric_api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the endpoint's key")
    rubric_only: list[str] | None = Field(None, description="the ids of the rubric rules to grade and combine "
                                          "(one id: reward from that aspect alone); default every rule")
    length_penalty: float = Field(0.0, ge=0, description="subtracted per completion token / max_new_tokens")
    clip: float | None = Field(None, gt=0, description="clip the combined score to [-clip, clip]")
    whiten: bool = Field(False, description="whiten scores over the rollout batch (mean kept)")
    code_sandbox: Literal["auto", "bwrap", "unsafe"] | None = Field(
        None, description="where code-test rewards run candidate code: auto (bubblewrap if it works, else unsafe "
        "with a warning) | bwrap | unsafe; default $POSTTRAIN_CODE_SANDBOX or auto")

    @model_validator(mode="after")
    def _some_reward(self):
        if self.verifier_weight == 0 and (not self.reward_model or self.reward_model_weight == 0) \
                and (not self.rubric or self.rubric_weight == 0):
            raise ValueError("no reward: set reward.verifier_weight > 0, reward.reward_model or reward.rubric")
        if (self.rubric_base_url is None) != (self.rubric_model is None):
            raise ValueError("reward.rubric_base_url and reward.rubric_model go together")
        if self.rubric_base_url is not None and not self.rubric:
            raise ValueError("reward.rubric_base_url is set but reward.rubric (the rubric file) is not")
        if self.rubric_base_url is not None and not self.rubric_base_url.startswith(("http://", "https://")):
            raise ValueError(f"reward.rubric_base_url '{self.rubric_base_url}': must start with http:// or https://")
        return self


class PPOSection(Section):
    epochs: int = Field(4, gt=0, description="PPO epochs over each rollout batch")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per PPO epoch")
    clip_range: float = Field(0.2, gt=0)
    value_clip_range: float | None = Field(0.2, gt=0)
    vf_coef: float = Field(0.1, ge=0)
    entropy_coef: float = Field(0.0, ge=0)
    gamma: float = Field(1.0, ge=0, le=1)
    lam: float = Field(0.95, ge=0, le=1)
    kl_coef: float = Field(0.05, ge=0, description="initial beta of the per-token KL penalty")
    kl_target: float | None = Field(None, gt=0, description="adaptive KL controller target (None: fixed beta)")
    kl_horizon: float = Field(10000.0, gt=0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    whiten_advantages: bool = True
    value_model: Literal["head", "separate"] = Field("head", description="value head on the policy trunk, or a "
                                                                         "separate copy of the base")
    reference: Literal["auto", "adapter-disabled", "copy"] = "auto"


class GRPOSection(Section):
    num_generations: int = Field(4, gt=1, description="G samples per prompt")
    iterations: int = Field(1, gt=0, description="passes over each rollout batch (mu)")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per pass")
    clip_range: float = Field(0.2, gt=0)
    clip_range_high: float | None = Field(None, gt=0, description="DAPO clip-higher (default: clip_range, resolved here so "
                                                                  "config.yaml records it)")
    beta: float = Field(0.0, ge=0, description="k3 KL to the reference; 0 skips the reference pass")
    loss_type: Literal["grpo", "token", "dr_grpo"] = "grpo"
    scale_rewards: bool = Field(True, description="divide by the group std (Dr. GRPO: false)")
    reference: Literal["auto", "adapter-disabled", "copy"] = "auto"

    @model_validator(mode="after")
    def _resolve_clip_high(self):
        if self.clip_range_high is None:  # not through __setattr__: see PreferenceLossSection._params_belong_to_loss
            self.__dict__["clip_range_high"] = self.clip_range
        return self


class PPOConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: PromptDataSection
    rollout: RolloutSection = RolloutSection()
    reward: RLRewardSection = RLRewardSection()
    ppo: PPOSection = PPOSection()
    optim: OptimSection = OptimSection(lr=1e-5, batch_size=8, micro_batch_size=8, schedule="constant")
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()


class GRPOConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: PromptDataSection
    rollout: RolloutSection = RolloutSection()
    reward: RLRewardSection = RLRewardSection()
    grpo: GRPOSection = GRPOSection()
    optim: OptimSection = OptimSection(lr=1e-5, batch_size=4, micro_batch_size=8, schedule="constant")
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()


class RejectionSection(Section):
    n: int = Field(4, gt=0, description="candidates per prompt")
    judges: list[dict[str, Any]] = Field(default_factory=lambda: [{"type": "verifier"}],
                                         description="judge configs as in the judge stage")
    min_score: float | None = Field(None, description="keep a winner only if its score is at least this")
    repair: bool = Field(False, description="when a prompt's best candidate fails its instruction constraints, train "
                         "on a copy of a candidate edited to obey them (verifiers/repair.py) if that scores "
                         "higher: the model's own reply, with the instruction followed")
    backend: Literal["hf", "vllm"] = "hf"
    seed: int = 0


class RejectionSFTConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: PromptDataSection
    rollout: RolloutSection = RolloutSection()
    rejection: RejectionSection = RejectionSection()
    max_length: int = Field(512, gt=8, description="SFT sequence limit (longer winners are dropped)")
    optim: OptimSection = OptimSection()
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()

    @model_validator(mode="after")
    def _one_backend_knob(self):
        if self.rollout.backend != "hf":
            raise ValueError("rejection-sft: the candidates' backend is rejection.backend, not rollout.backend")
        return self


class OnlineSection(Section):
    num_generations: int = Field(2, ge=2, description="samples per prompt and step from the current policy (a pair "
                                 "needs two; OAIF uses 2)")
    judges: list[dict[str, Any]] = Field(default_factory=lambda: [{"type": "verifier"}], min_length=1,
                                         description="judge configs as in the judge stage (verifier, reward_model, "
                                         "llm, local; several are combined, weighted)")
    strategy: Literal["best_vs_worst", "all_above_margin", "round_robin", "all_pairs"] = Field(
        "best_vs_worst", description="as the judge stage's pairs.strategy: best_vs_worst / all_above_margin score "
        "each sample; round_robin / all_pairs compare two samples (an LLM judge: in both orders)")
    min_score_gap: float = Field(0.0, ge=0, description="keep a pair only if chosen - rejected score >= this (judge "
                                 "units; round_robin: win rates); equal scores never make a pair")
    max_length_ratio: float | None = Field(None, ge=1, description="drop pairs whose longer response is more than "
                                           "this many times the shorter (length-bias guard)")


class OnlineDPOConfig(Section):
    model: ModelSection = ModelSection()
    peft: PeftSection = PeftSection()
    data: PromptDataSection
    rollout: RolloutSection = RolloutSection()
    online: OnlineSection = OnlineSection()
    loss: PreferenceLossSection = PreferenceLossSection(reference_cache=False)
    # LoRA (the default peft) as offline DPO: 5e-5; full fine-tuning (peft.method=none) wants 5e-7 to 5e-6
    optim: OptimSection = OptimSection(lr=5e-5, batch_size=8, micro_batch_size=8, schedule="constant")
    train: TrainSection = TrainSection()
    parallel: ParallelSection = ParallelSection()

    @model_validator(mode="after")
    def _fresh_reference(self):
        if self.loss.reference_cache or self.loss.reference_cache_dir:
            raise ValueError("online-dpo: loss.reference_cache does not apply (every step's pairs are new samples, "
                             "their reference log-probs are computed fresh); leave it false and unset its dir")
        if getattr(self.loss, "reference_model", None) is not None:  # a pinned reference: not wired in here yet
            raise ValueError("online-dpo: loss.reference_model is not supported; the reference is the model "
                             "training starts from")
        return self


# command name -> config class: the one place that says it (the command table, posttrain/commands.py, reads it)
COMMANDS: dict[str, type[Section]] = {"sft": SFTConfig, "dpo": DPOConfig, "kto": KTOConfig,
                                      "reward-model": RewardModelConfig, "ppo": PPOConfig, "grpo": GRPOConfig,
                                      "rejection-sft": RejectionSFTConfig, "online-dpo": OnlineDPOConfig}


def read_yaml_file(path: str | Path, what: str, error: type[Exception] = ConfigError) -> Any:
    """The YAML document at ``path``; a missing file or bad YAML raises ``error`` with one line naming the file."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except (FileNotFoundError, IsADirectoryError):
        raise error(f"{path}: no such {what} file") from None
    except yaml.YAMLError as e:
        raise error(yaml_error_line(path, e)) from None


def yaml_error_line(path: str | Path, e: yaml.YAMLError) -> str:
    """One line naming the file, line and column of a YAML syntax error, and what is wrong there."""
    mark = getattr(e, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    return f"{where}: not valid YAML: {problem}" + (f" ({context})" if context else "")


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.strip().split("."), value


def _apply_override(tree: dict, path: list[str], value: Any, text: str) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{text}': '{part}' is not a section")
        node = child
    node[path[-1]] = value


def _section_keys(cls: type[Section], loc: tuple) -> list[str]:
    """The keys allowed beside ``loc``'s last part (the fields of the section that holds it)."""
    node: Any = cls
    for part in loc[:-1]:
        field = node.model_fields.get(str(part)) if isinstance(node, type) and issubclass(node, BaseModel) else None
        if field is None:
            return []
        node = field.annotation
    return list(node.model_fields) if isinstance(node, type) and issubclass(node, BaseModel) else []


def did_you_mean(word: str, choices) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _format_validation_error(err: ValidationError, where: str, cls: type[Section] | None = None) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key" + (did_you_mean(e["loc"][-1], _section_keys(cls, e["loc"])) if cls else "")
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"{where}: key '{key}': {msg}")
    return "\n".join(lines)


def command_defaults(cls: type[Section]) -> dict[str, dict[str, Any]]:
    """The values a command's sections set over the generic section defaults, e.g. DPO's ``optim.lr: 5e-5``
    (from ``optim: OptimSection = OptimSection(lr=5e-5)``): section name -> {key: value}."""
    out: dict[str, dict[str, Any]] = {}
    for name, field in cls.model_fields.items():
        default = field.default
        if isinstance(default, Section) and default.model_fields_set:
            out[name] = default.model_dump(include=default.model_fields_set)
    return out


def _with_command_defaults(cls: type[Section], tree: dict) -> dict:
    """``tree`` with the command's own section defaults filled in under every section the user gave in part.

    Without this, a user who writes ``optim: {max_steps: 2}`` would get a fresh ``OptimSection`` with the generic
    ``lr`` 2e-4 instead of DPO's 5e-5: a partial section must change only the keys it names."""
    for name, defaults in command_defaults(cls).items():
        given = tree.get(name)
        if isinstance(given, dict):
            tree[name] = {**defaults, **given}
    return tree


def load_config(command: str, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()):
    """Build the config for ``command`` from an optional YAML file and dotted overrides."""
    tree: dict = {}
    where = "<overrides>"
    if path is not None:
        where = str(path)
        loaded = read_yaml_file(path, "config")
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        declared = loaded.pop("command", None)
        if declared is not None and declared != command:
            raise ConfigError(f"{path}: key 'command': this file is a '{declared}' config, but it was given to "
                              f"'posttrain {command}' (run `posttrain {declared} {path}`)")
        tree = loaded
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(tree, keys, value, text)
    return build_config(command, tree, where)


def build_config(command: str, tree: dict, where: str = "<config>"):
    """The config of ``command`` from a tree of sections (a pipeline stage's ``config:``), with the command's own
    section defaults under every section given in part; problems raise ``ConfigError`` naming ``where`` and the
    key."""
    cls = COMMANDS[command]
    try:
        return cls.model_validate(_with_command_defaults(cls, copy.deepcopy(tree)))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, where, cls)) from None


def dump_config(config: Section) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _yaml_value(value: Any) -> str:
    """A value as it is written after ``key: `` (flow style for lists and mappings)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-3].strip() if text.endswith("...") else text


def _type_text(annotation: Any) -> str:
    """A field's type for a comment: ``auto | float32 | ...`` for a Literal, ``int``, ``str | None``, ..."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is Literal:
        return " | ".join(str(a) for a in args)
    if args and typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return " | ".join(_type_text(a) for a in args)
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) if not args else str(annotation).replace("typing.", "")


def config_doc(command: str, tree: dict[str, Any], notes: dict[str, str] | None = None) -> str:
    """A commented YAML config of ``command`` (``posttrain config show COMMAND --doc``): ``command:`` first, then
    every section and key with its value in ``tree`` (a resolved config's dump) and, above it, the key's
    description and type. ``notes``: extra comment lines by dotted key. ``config validate`` accepts the result."""
    cls = COMMANDS[command]
    notes = notes or {}
    out = [f"# posttrain {command}: every key, its default and what it does (`posttrain config show {command} --doc`).",
           "# Keep what you change; a partial section keeps the command's defaults for the keys it does not name.",
           f"command: {command}"]
    for name, field in cls.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) else type(field.default)
        if not (isinstance(section, type) and issubclass(section, BaseModel)):  # a top-level key, not a section
            comment = f"{field.description or ''} [{_type_text(field.annotation)}]".strip()
            out += [f"# {line}" for line in textwrap.wrap(comment, 114)]
            out.append(f"{name}: {_yaml_value(tree.get(name))}")
            continue
        if field.description:
            out.append(f"# {field.description}")
        out.append(f"{name}:")
        for key, sub in getattr(section, "model_fields", {}).items():
            described = sub.description or ""
            kind = _type_text(sub.annotation)
            comment = f"{described} [{kind}]" if described else f"[{kind}]"
            for line in (notes.get(f"{name}.{key}"), comment):
                for wrapped in textwrap.wrap(line or "", 112):
                    out.append(f"  # {wrapped}")
            out.append(f"  {key}: {_yaml_value(tree.get(name, {}).get(key))}")
    return "\n".join(out) + "\n"
