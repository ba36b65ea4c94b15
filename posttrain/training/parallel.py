"""How a trained model is spread over processes (``parallel.strategy``).

- ``ddp`` (default): every process holds the whole model, optimizer state and reference; accelerate wraps the model
  in DistributedDataParallel, which all-reduces (averages) gradients on the last micro-batch of a step.
- ``fsdp2``: torch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP"). Every
  decoder layer is one unit and the root (embeddings, final norm, head) another; each process keeps 1/world of
  every parameter (a DTensor shard), so the optimizer state it builds afterwards is 1/world too. A unit's full
  weights are all-gathered just before its forward (and again for its backward) and freed after; gradients are
  reduce-scattered (averaged), so the loop's loss scaling (``world / W``) is the same as under DDP. The same code
  runs on CPU (gloo) and GPU (NCCL): accelerate does not apply FSDP on CPU, so the API is called directly.

The optimizer must be built *after* sharding: ``fully_shard`` replaces every parameter with a sharded one, and an
optimizer built before would step tensors the model no longer uses (``check_optimizer_covers`` stops that).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from posttrain.config import ConfigError

# torch.distributed.fsdp and .checkpoint are imported in the functions that use them: together 0.7 s, which every
# import of the training code (config validate, the pipeline's checks) would pay for runs that do not shard.


def launcher_strategy(distributed_type, configured: str, world: int) -> str:
    """The strategy a run uses given how it was launched: ``accelerate launch`` with an FSDP config
    (``examples/accelerate/fsdp2.yaml``) selects ``fsdp2`` (posttrain shards through torch's API, the engine
    accelerate's FSDP2 drives); a DeepSpeed config stops with one line; anything else keeps ``configured``."""
    kind = getattr(distributed_type, "value", distributed_type)
    if kind == "DEEPSPEED":
        raise ConfigError("accelerate launch with a DeepSpeed config: posttrain does not drive DeepSpeed (ZeRO) yet; "
                          "launch with examples/accelerate/fsdp2.yaml (parameters, gradients and optimizer state "
                          "sharded, as ZeRO-3) or torchrun with parallel.strategy=fsdp2")
    if kind == "FSDP":
        if world == 1:
            raise ConfigError("accelerate launch with an FSDP config and 1 process: there is nothing to shard over; "
                              "set num_processes to the number of GPUs or launch without the FSDP config")
        return "fsdp2"
    return configured

def check_combination(cfg) -> None:
    """Combinations with ``parallel.strategy=fsdp2`` that have not run stop before anything loads, in one line."""
    if cfg.parallel.strategy != "fsdp2":
        return
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.method == "qlora":
        raise ConfigError("peft.method=qlora with parallel.strategy=fsdp2: 4-bit base weights are not sharded by "
                          "posttrain; use peft.method=lora with fsdp2, or qlora with parallel.strategy=ddp")
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.backend == "vllm":
        raise ConfigError("rollout.backend=vllm with parallel.strategy=fsdp2: syncing sharded weights into the "
                          "colocated vLLM engine has not run on a GPU yet; use parallel.strategy=ddp with vllm, or "
                          "rollout.backend=hf with fsdp2")


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's repeated blocks, the units FSDP shards one at a time: the modules whose class the HF model
    names in ``_no_split_modules`` (``LlamaDecoderLayer``, ...), found under PEFT wrappers too."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"parallel.strategy=fsdp2: {type(model).__name__} names no decoder layer class "
                         "(_no_split_modules), so it cannot be sharded per layer; use parallel.strategy=ddp")
    return layers


def shard(model: nn.Module, device: torch.device | str, world: int) -> nn.Module:
    """``fully_shard`` every decoder layer, then the root, over ``world`` processes; in place (the returned module is
    ``model``, its class now also an ``FSDPModule``)."""
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh(torch.device(device).type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if hasattr(model, "generate"):  # generate enters through the root (its lazy init), not through a layer
        register_fsdp_forward_method(model, "generate")
    return model


def place_reference(frozen: nn.Module | None, cfg, accelerator) -> None:
    """Put a frozen reference copy (full fine-tuning, a pinned reference) on the run's device; under
    ``parallel.strategy=fsdp2`` with several processes shard it as the policy is, so each process holds half of it
    too. Its forwards are then collectives: the trainers run them in lockstep, as the policy's (equal micro-batch
    counts per process, every eval row on every process, a cache skip taken by all or none)."""
    if frozen is None:
        return
    frozen.to(accelerator.device)
    if cfg.parallel.strategy == "fsdp2" and accelerator.num_processes > 1:
        shard(frozen, accelerator.device, accelerator.num_processes)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextmanager
def gathered(model: nn.Module):
    """Every process holds the full weights of a sharded model for the duration, and its forwards make no
    collective calls: for sampling, where each process decodes its own prompts for as many steps as they need
    (a sharded forward all-gathers, so processes decoding unequal numbers of tokens would wait on each other
    forever). Costs one full copy of the weights per process while it lasts (as a colocated inference engine
    does); the shards are restored after. No-op for a model that is not sharded."""
    if not is_sharded(model):
        yield model
        return
    from torch.distributed.fsdp import FSDPModule

    # FSDP takes the first unit to run forward as the root; decoding may enter through a submodule (PPO's policy
    # inside its value-head wrapper), so the root is settled first (a no-op once it is)
    model._get_fsdp_state()._lazy_init()
    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # FSDP2's defaults: layers reshard after forward, the root keeps its (small) weights for the backward
            unit.set_reshard_after_forward(unit is not model, recurse=False)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) tensor, the tensor itself otherwise."""
    return t.to_local() if hasattr(t, "to_local") else t


def local_numel(param: torch.Tensor) -> int:
    """Elements this process holds of ``param`` (its shard for a DTensor)."""
    return local(param).numel()


def gradient_sync(model: nn.Module, enabled: bool) -> None:
    """FSDP2's no_sync: without it every micro-batch would reduce-scatter; the step's sum is the same either way."""
    if is_sharded(model):
        model.set_requires_gradient_sync(enabled)


def total_norm(norm) -> float:
    """A gradient norm as a float; ``clip_grad_norm_`` over DTensor gradients returns a DTensor."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def on_every_process(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one all-reduce; ``flag`` itself without a process group). Under
    FSDP every forward all-gathers, so a choice to skip one (a cached reference) must be the same everywhere."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([int(flag)])
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def max_over_processes(value: int) -> int:
    """The largest ``value`` over the processes (``value`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([int(value)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def check_optimizer_covers(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every trainable parameter the model uses is one the optimizer steps; a RuntimeError otherwise (an optimizer
    built before the model was sharded or wrapped holds the replaced tensors: the loss would never move)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in held]
    if missing:
        raise RuntimeError(f"the optimizer does not hold {len(missing)} of the model's trainable parameters (first: "
                           f"{missing[0]}); it was built before the model was sharded or wrapped")


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict on CPU, gathered on the main process (other processes get an empty dict);
    None when ``model`` is not sharded. A collective: every process must call it."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
