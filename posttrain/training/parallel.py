"""How a trained model is spread over processes (``parallel.strategy``).

- ``ddp`` (default): every process holds the whole model, optimizer state and reference; accelerate wraps the model
  in DistributedDataParallel, which all-reduces (averages) gradients on the last micro-batch of a step.
- ``fsdp2``: torch's FSDP2 (``torch.distributed.fsdp.fully_shard``; Zhao et al. 2023, "PyTorch FSDP"). Every
  decoder layer is one unit and the root (embeddings, final norm, head) another; each process keeps 1/world of
  every parameter (a DTensor shard), so the optimizer state it builds afterwards is 1/world too. A unit's full
  weights are all-gathered just before its forward (and again for its backward) and freed after; gradients are
  reduce-scattered (averaged), so the loop's loss scaling (``world / W``) is the same as under DDP. The same code
  runs on CPU (gloo) and GPU (NCCL): accelerate does not apply FSDP on CPU, so the API is called directly.

- ``deepspeed``: DeepSpeed ZeRO (Rajbhandari et al. 2020), ``parallel.zero_stage`` 2 (optimizer state and gradients
  partitioned, every process keeps the whole model) or 3 (parameters partitioned too, gathered per module for its
  forward and backward, like FSDP2). ``deepspeed.initialize`` takes the model and the optimizer the loop built
  (DeepSpeed flattens and partitions what the optimizer holds, so the order is the opposite of FSDP2's); the loop
  keeps its own loss scaling, schedule and step decisions and marks the accumulation boundary itself. Runs on GPU
  (NCCL) and on CPU (gloo, DeepSpeed's CPU accelerator), so it is tested here. Needs ``pip install deepspeed``.

The optimizer must be built *after* FSDP2 sharding: ``fully_shard`` replaces every parameter with a sharded one, and
an optimizer built before would step tensors the model no longer uses (``check_optimizer_covers`` stops that).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from posttrain.config import ConfigError

# torch.distributed.fsdp and .checkpoint are imported in the functions that use them: together 0.7 s, which every
# import of the training code (config validate, the pipeline's checks) would pay for runs that do not shard;
# deepspeed (an optional dependency, 4.7 s to import) likewise, only in runs with parallel.strategy=deepspeed.


def launcher_strategy(distributed_type, configured: str, world: int) -> str:
    """The strategy a run uses given how it was launched: ``accelerate launch`` with an FSDP config
    (``examples/accelerate/fsdp2.yaml``) selects ``fsdp2`` (posttrain shards through torch's API, the engine
    accelerate's FSDP2 drives), a DeepSpeed config (``zero2.yaml``, ``zero3.yaml``) ``deepspeed`` (its ZeRO stage
    read by ``launcher_zero_stage``); anything else keeps ``configured``."""
    kind = getattr(distributed_type, "value", distributed_type)
    if kind == "DEEPSPEED":
        return "deepspeed"
    if kind == "FSDP":
        if world == 1:
            raise ConfigError("accelerate launch with an FSDP config and 1 process: there is nothing to shard over; "
                              "set num_processes to the number of GPUs or launch without the FSDP config")
        return "fsdp2"
    return configured

def launcher_zero_stage(configured: int) -> int:
    """The ZeRO stage of an ``accelerate launch`` DeepSpeed config (``zero_stage``), else ``configured``."""
    from accelerate.state import AcceleratorState

    plugin = getattr(AcceleratorState(), "deepspeed_plugin", None) if AcceleratorState._shared_state else None
    stage = getattr(plugin, "zero_stage", None)
    return int(stage) if stage is not None else configured


def check_combination(cfg) -> None:
    """Combinations with ``parallel.strategy`` fsdp2 or deepspeed that have not run stop before anything loads, in
    one line."""
    strategy = cfg.parallel.strategy
    if strategy == "ddp":
        return
    if strategy == "deepspeed":
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise ConfigError("parallel.strategy=deepspeed: DeepSpeed is not installed; pip install "
                              "'posttrain[deepspeed]' (or use parallel.strategy=fsdp2, which shards the same way as "
                              "ZeRO-3)") from None
        if cfg.train.on_nonfinite == "skip":
            raise ConfigError("train.on_nonfinite=skip with parallel.strategy=deepspeed: the DeepSpeed optimizer "
                              "cannot drop a step's gradients once reduced; use train.on_nonfinite=fail (the default)")
    split = "partitioned" if strategy == "deepspeed" else "sharded"
    peft = getattr(cfg, "peft", None)
    if peft is not None and peft.method == "qlora":
        raise ConfigError(f"peft.method=qlora with parallel.strategy={strategy}: 4-bit base weights are not {split} "
                          f"by posttrain; use peft.method=lora with {strategy}, or qlora with parallel.strategy=ddp")
    rollout = getattr(cfg, "rollout", None)
    if rollout is not None and rollout.backend == "vllm":
        raise ConfigError(f"rollout.backend=vllm with parallel.strategy={strategy}: syncing {split} weights into the "
                          f"colocated vLLM engine has not run on a GPU yet; use parallel.strategy=ddp with vllm, or "
                          f"rollout.backend=hf with {strategy}")


def deepspeed_config(zero_stage: int, micro_batch_size: int, world: int, max_grad_norm: float | None,
                     hidden_size: int | None = None) -> dict:
    """The DeepSpeed config posttrain's loop runs under: ZeRO at ``zero_stage``; precision is the loop's own
    (fp32 weights, bf16 autocast where enabled), so DeepSpeed's fp16/bf16 modes stay off; the accumulation boundary
    is marked by the loop (``engine.set_gradient_accumulation_boundary``), so the batch numbers only satisfy
    DeepSpeed's consistency check. Buckets sized from the model's ``hidden_size`` as HF's "auto" values are:
    DeepSpeed's defaults (5e8 elements, 2 GB in fp32) made a ZeRO-3 run of a 135M model hold 1.36x the memory of
    DDP per process (bench/fsdp_memory.py)."""
    zero: dict = {"stage": zero_stage}
    if hidden_size:
        zero["reduce_bucket_size"] = hidden_size * hidden_size
        if zero_stage == 3:
            zero.update(stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
                        stage3_param_persistence_threshold=10 * hidden_size)
    return {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": 1,
            "train_batch_size": micro_batch_size * world, "gradient_clipping": float(max_grad_norm or 0.0),
            "zero_optimization": zero, "steps_per_print": 2 ** 31 - 1, "wall_clock_breakdown": False,
            "zero_allow_untested_optimizer": True}


def deepspeed_engine(model: nn.Module, optimizer: torch.optim.Optimizer, config: dict):
    """``deepspeed.initialize`` on the model and the optimizer built over it: the engine owns the backward (gradient
    partitioning) and the optimizer step; ``model`` itself is what the loop runs forwards through (under ZeRO-3 its
    parameters are partitioned in place, gathered by hooks per module)."""
    import deepspeed

    init_process_group_for_deepspeed()
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    return engine


def init_process_group_for_deepspeed() -> None:
    """DeepSpeed needs a process group even for one process (accelerate makes none then); without one it would
    look for MPI. A one-process group on a free loopback port."""
    if dist.is_available() and dist.is_initialized():
        return
    import socket

    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        os.environ.setdefault(key, value)
    deepspeed.init_distributed(auto_mpi_discovery=False)


def partition_reference(frozen: nn.Module, world: int) -> None:
    """A frozen reference copy under ZeRO-3: its parameters partitioned like the policy's (DeepSpeed's inference
    mode of ZeRO-3, no optimizer), in place."""
    import deepspeed

    config = {"train_micro_batch_size_per_gpu": 1, "train_batch_size": world, "zero_optimization": {"stage": 3},
              "steps_per_print": 2 ** 31 - 1}
    init_process_group_for_deepspeed()
    engine, *_ = deepspeed.initialize(model=frozen, config=config)
    engine.eval()


def is_zero3(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are partitioned by DeepSpeed ZeRO-3 (each carries ``ds_id``)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


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


def shards_with_fsdp2(cfg, accelerator) -> bool:
    """Whether this run shards its model with FSDP2 (``parallel.strategy=fsdp2`` and several processes)."""
    return cfg.parallel.strategy == "fsdp2" and accelerator.num_processes > 1


def loads_on_meta(cfg, accelerator) -> bool:
    """Whether this process builds the model it trains on the meta device (shapes only, no memory) instead of
    reading the weights: under ``parallel.strategy=fsdp2`` every process but the first, whose weights ``shard``
    then sends each of them as its shards. So one process reads the checkpoint and the others never hold a full
    copy (where loading materialises the weights, a checkpoint in another dtype or a .bin file, every process
    would otherwise hold a private one: 8 x 280 GB of host memory for a 70B model loaded in float32)."""
    return shards_with_fsdp2(cfg, accelerator) and accelerator.process_index != 0


def on_meta(model: nn.Module) -> bool:
    """Whether any of ``model``'s parameters or buffers is on the meta device (built from its config, not loaded)."""
    return any(t.is_meta for t in model.parameters()) or any(t.is_meta for t in model.buffers())


def place_model(model: nn.Module, device) -> None:
    """``model.to(device)``, except for a model built on the meta device (``loads_on_meta``): ``shard`` places
    that one, shard by shard, when it fills it from the first process."""
    if not on_meta(model):
        model.to(device)


def shard(model: nn.Module, device: torch.device | str, world: int) -> nn.Module:
    """``fully_shard`` every decoder layer, then the root, over ``world`` processes; in place (the returned module is
    ``model``, its class now also an ``FSDPModule``). The first process's weights are the ones every process keeps
    its shards of: the others may have built ``model`` on the meta device (``loads_on_meta``); they receive theirs
    by broadcast (torch's ``set_model_state_dict`` with ``broadcast_from_rank0``), buffers too. A collective; a
    no-op on a model sharded already."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

    if isinstance(model, FSDPModule):  # sharded already (the online trainers shard before they first sample)
        return model
    rank = dist.get_rank()
    full = model.state_dict() if rank == 0 else {}  # the first process's full tensors, held until sent
    if rank == 0 and on_meta(model):
        raise RuntimeError("parallel.strategy=fsdp2: the first process's model is on the meta device; it must hold "
                           "the weights the others receive")
    mesh = init_device_mesh(torch.device(device).type, (world,))
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    if on_meta(model):
        model.to_empty(device=mesh.device_type)  # this process's shards (and buffers), allocated, not yet filled
    set_model_state_dict(model, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del full
    for buffer in model.buffers():  # non-persistent ones (rotary frequencies) are in no state dict
        dist.broadcast(buffer, src=0)
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
    place_model(frozen, accelerator.device)
    if accelerator.num_processes == 1:
        return
    if cfg.parallel.strategy == "fsdp2":
        shard(frozen, accelerator.device, accelerator.num_processes)
    elif cfg.parallel.strategy == "deepspeed" and cfg.parallel.zero_stage == 3:
        partition_reference(frozen, accelerator.num_processes)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are spread over processes (FSDP2 or ZeRO-3), so that every forward is a
    collective all processes must join."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule) or is_zero3(model)


@contextmanager
def gathered(model: nn.Module):
    """Every process holds the full weights of a sharded model for the duration, and its forwards make no
    collective calls: for sampling, where each process decodes its own prompts for as many steps as they need
    (a sharded forward all-gathers, so processes decoding unequal numbers of tokens would wait on each other
    forever). Costs one full copy of the weights per process while it lasts (as a colocated inference engine
    does); the shards are restored after. No-op for a model that is not sharded."""
    if is_zero3(model):
        yield from _gathered_zero3(model)
        return
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


def _gathered_zero3(model: nn.Module):
    """``gathered`` for ZeRO-3: every parameter gathered, and the per-module fetch/release hooks of the forward
    suspended (they would partition the weights again after each module)."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        hooks = {}
        for m in model.modules():  # the hooks DeepSpeed registered on each module: held out for the duration
            hooks[m] = (dict(m._forward_pre_hooks), dict(m._forward_hooks))
            m._forward_pre_hooks.clear()
            m._forward_hooks.clear()
        try:
            yield model
        finally:
            for m, (pre, post) in hooks.items():
                m._forward_pre_hooks.update(pre)
                m._forward_hooks.update(post)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (a DTensor's local tensor, a ZeRO-3 parameter's partition), the
    tensor itself otherwise."""
    if hasattr(t, "ds_tensor"):
        return t.ds_tensor
    return t.to_local() if hasattr(t, "to_local") else t


def local_numel(param: torch.Tensor) -> int:
    """Elements this process holds of ``param`` (its shard for a DTensor or a ZeRO-3 parameter)."""
    return local(param).numel()


def full_numel(param: torch.Tensor) -> int:
    """Elements of the whole ``param`` (a ZeRO-3 parameter's own tensor is empty between uses)."""
    return int(getattr(param, "ds_numel", param.numel()))


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


def from_first_process(fn):
    """``fn()`` computed on the first process and sent to every other (``fn()`` itself without a process group):
    for values that read weights a process built on the meta device does not have yet (a reference fingerprint)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return fn()
    box = [fn() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    if is_zero3(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            full = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return full if dist.get_rank() == 0 else {}
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
