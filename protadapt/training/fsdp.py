"""`trainer.strategy=fsdp`: backbones too large for one device (ESM-2 3B/15B, ESM C 6B) sharded over ranks.

FSDP2 (`torch.distributed.fsdp.fully_shard`, per-parameter sharding, so frozen base weights and
trainable adapters share a block) under Lightning's `ModelParallelStrategy` with every rank
data-parallel: each transformer block is one shard unit, the predictor (embeddings, final norm,
head) the root. Unlike Lightning's FSDP1 `FSDPStrategy` it also runs on CPUs over gloo, so the
tests train under it. Checkpoints gather only the trainable tensors (adapters, magnitudes, head);
after the fit every rank gathers the weights back into plain tensors and the FSDP hooks are
removed, so rank 0 evaluates and saves exactly what a single-device run writes.
"""

from __future__ import annotations

import importlib

import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn

from protadapt.config import ConfigError, RunConfig

PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-true")  # what ModelParallelStrategy accepts


def check_fsdp(config: RunConfig) -> None:
    """One-line refusals of what `trainer.strategy=fsdp` cannot train, before anything runs."""
    from protadapt.adapters import get_method

    method = get_method(config.adapter.method)
    if method.bilevel:
        raise ConfigError(f"trainer.strategy=fsdp trains single-level methods; {method.name}'s bi-level search "
                          "takes hypergradients through unsharded weights: use trainer.strategy=ddp")
    if str(config.trainer.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.strategy=fsdp does not support trainer.precision={config.trainer.precision}; "
                          f"choose one of: {', '.join(PRECISIONS)}")


class AdapterFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all ranks (no tensor parallelism); single-file checkpoints of the trainable tensors only."""

    def __init__(self, precision: str = "32-true"):
        super().__init__(tensor_parallel_size=1, save_distributed_checkpoint=False)
        self.mp_policy = mixed_precision_policy(precision)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # every rank holds one shard
        super().setup_environment()

    def shard(self, predictor: nn.Module) -> None:
        """Called from `configure_model` on every rank."""
        shard_predictor(predictor, self.device_mesh["data_parallel"], self.mp_policy)

    def lightning_module_state_dict(self) -> dict[str, torch.Tensor]:
        """The trainable tensors, gathered whole on every rank (collective); never the frozen backbone."""
        predictor = self.lightning_module.predictor
        return {f"predictor.{key}": value for key, value in trainable_full_state(predictor).items()}

    def teardown(self) -> None:
        """Plain weights back before Lightning moves the module to the CPU (skipped after an error:
        the other ranks may not reach the gather)."""
        module = self.lightning_module
        if module is not None and module._trainer is not None and not module.trainer.interrupted:
            unshard(module.predictor)
        super().teardown()


def make_strategy(config: RunConfig) -> AdapterFSDPStrategy:
    return AdapterFSDPStrategy(str(config.trainer.precision))


def shard_predictor(predictor: nn.Module, mesh, mp_policy=None) -> None:
    """`fully_shard` each transformer block (one group of its parameter holders), then the predictor."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(predictor, FSDPModule):
        return
    mp_policy = mp_policy or MixedPrecisionPolicy()
    for block in transformer_blocks(predictor.backbone):
        fully_shard(parameter_holders(block), mesh=mesh, mp_policy=mp_policy)
    fully_shard(predictor, mesh=mesh, mp_policy=mp_policy)


def mixed_precision_policy(precision: str):
    """bf16-mixed: blocks gathered and computed in bf16, gradients reduced in fp32; else no casting."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if str(precision) == "bf16-mixed":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def transformer_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's transformer layers: the one `nn.ModuleList` of `num_layers` modules of one class."""
    depth = backbone.architecture.num_layers
    lists = [m for m in backbone.model.modules() if isinstance(m, nn.ModuleList) and len(m) == depth
             and len({type(block) for block in m}) == 1]
    if len(lists) != 1:
        raise ConfigError(f"trainer.strategy=fsdp: cannot tell the {depth} transformer blocks of "
                          f"{backbone.architecture.name} ({len(lists)} candidate lists); use trainer.strategy=ddp")
    return list(lists[0])


def parameter_holders(module: nn.Module) -> list[nn.Module]:
    """The outermost submodules holding parameters of their own (norms, linears, adapters with their base
    layer). Sharded as one group, a block is gathered when any of them runs, so families whose fast
    forward calls a block's parts from a function (fair-esm ESM-2 here) are sharded like the others."""
    if next(module.parameters(recurse=False), None) is not None:
        return [module]
    return [holder for child in module.children() for holder in parameter_holders(child)]


def trainable_full_state(predictor: nn.Module) -> dict[str, torch.Tensor]:
    """`predictor.trainable_state()` with sharded tensors gathered whole, on the CPU (collective under FSDP)."""
    return {key: full_tensor(value).detach().cpu() for key, value in predictor.trainable_state().items()}


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (an all-gather every rank must join); a plain tensor as it is."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def unshard(root: nn.Module) -> None:
    """Undo `fully_shard` under `root` in place: every parameter gathered into a plain one (collective,
    in module order on every rank; tied parameters stay tied), then FSDP's hooks, class and state removed.

    FSDP2 has no public inverse; this touches its private state, which tests/test_fsdp.py checks."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in root.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        return
    for module in sharded:
        module.reshard()  # the root stays gathered after its forward, in the compute dtype
    gathered: dict[int, nn.Parameter] = {}
    for module in root.modules():
        for name, param in list(module._parameters.items()):
            if param is not None and id(param) not in gathered:
                gathered[id(param)] = nn.Parameter(full_tensor(param.detach()), requires_grad=param.requires_grad)
            if param is not None:
                module._parameters[name] = gathered[id(param)]
    states = {id(state): state for state in (module._get_fsdp_state() for module in sharded)}
    for state in states.values():
        remove_hooks(state)
    for module in sharded:
        forget_fsdp(module)


def remove_hooks(state) -> None:
    """One `fully_shard` unit's forward hooks and its parameters' state-dict hooks."""
    state._pre_forward_hook_handle.remove()
    state._post_forward_hook_handle.remove()
    for group in state._fsdp_param_groups:
        for handles in (group._module_to_pre_save_state_dict_hook_handle,
                        group._module_to_pre_load_state_dict_hook_handle):
            for handle in handles.values():
                handle.remove()
            handles.clear()
        for param in group.fsdp_params:
            param._post_load_hook_handle.remove()


def forget_fsdp(module: nn.Module) -> None:
    """The module's own class back, its FSDP state and flags gone (so a later phase can shard it again)."""
    from torch.distributed.fsdp import FSDPModule

    contract = importlib.import_module("torch.distributed._composable.contract")
    registry = importlib.import_module("torch.distributed._composable_state")
    module.__class__ = next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))
    for key in (contract.STATE_KEY, contract.REGISTRY_KEY, "_is_fsdp_managed_module", "_fsdp_use_orig_params"):
        module.__dict__.pop(key, None)
    registry._module_state_mapping.pop(module, None)
