"""Padding-free ESM-2 layers: a padded batch's tokens packed into one stream, attention block-diagonal.

The embeddings (token dropout's per-sequence rescale, prompt vectors) are computed on the padded
batch as usual; `packed_layers` then keeps only real tokens (`[L, E]`, L = all tokens of all rows),
runs every transformer layer on them with rotary positions restarting at each sequence and each
sequence attending only to itself, and scatters the states back to `[B, T, E]` (zeros at padding).
Linears, layer norms and adapters act per token, so they see the same numbers with less work.

`data.packing` (off | on | auto, or one attention by name) picks the path per device with
`attention_for`; the block-diagonal attention has four implementations (`ATTENTION`: loop, mask,
nested, flex), measured in benchmarks/results/padding.md.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

PACKINGS = ("off", "on", "auto", "loop", "mask", "nested", "flex")  # the last four: that attention, anywhere
# how `data.packing` resolves per device type: None = padded batches (the length buckets alone)
# cpu: the loop, measured 0.86-0.99x the padded time on 8M/35M (benchmarks/results/padding.md);
# cuda: varlen kernels through nested tensors, expected to win but unmeasured until the GPU run (gpu.sh)
AUTO = {"cpu": "loop", "cuda": "nested"}
ON = {"cpu": "loop", "cuda": "nested"}


def attention_for(packing: str, device_type: str) -> str | None:
    """The packed attention `data.packing` means on this device, or None for padded batches."""
    if packing not in PACKINGS:
        raise ValueError(f"data.packing must be one of {', '.join(PACKINGS)}, got {packing!r}")
    if packing == "off":
        return None
    if packing in ATTENTION:
        return packing
    if packing == "auto":
        return AUTO.get(device_type)  # other devices (mps, …): padded, unmeasured
    return ON.get(device_type, "loop")  # the loop needs nothing but plain SDPA


@dataclass
class PackedLayout:
    """Where each sequence lies in the packed stream, and its per-token rotary tables."""

    keep: torch.Tensor  # [B, T] True at real tokens (BOS, residues, EOS, prompt vectors)
    offsets: torch.Tensor  # [N + 1] start of each sequence in the stream, then L
    lengths: list[int]
    cos: torch.Tensor  # [L, 1, d]
    sin: torch.Tensor
    attention: str
    block_mask: object = None  # the boolean [L, L] mask or flex's BlockMask, built once per forward

    @classmethod
    def build(cls, keep: torch.Tensor, rotary: nn.Module, attention: str) -> "PackedLayout":
        counts = keep.sum(1)
        offsets = F.pad(counts.cumsum(0), (1, 0))
        positions = torch.arange(int(keep.shape[1]), device=keep.device).expand_as(keep)[keep]
        # fair-esm's `_update_cos_sin_tables` arithmetic per token position (its cache is left alone:
        # tables made under inference_mode there would break a later backward)
        freqs = positions.type_as(rotary.inv_freq)[:, None] * rotary.inv_freq[None, :]
        angles = torch.cat((freqs, freqs), dim=-1).unsqueeze(1)
        layout = cls(keep, offsets, counts.tolist(), angles.cos(), angles.sin(), attention)
        layout.block_mask = MASKS.get(attention, lambda _: None)(layout)
        return layout


def packed_layers(backbone, x: torch.Tensor, keep: torch.Tensor, layers: list[int], attention: str,
                  layer_fn: Callable) -> dict[int, torch.Tensor]:
    """`hidden_states`' layer loop on the packed tokens of `x` `[B, T, E]`: states `[B, T, E]` per depth."""
    model, last = backbone.model, backbone.architecture.num_layers
    layout = PackedLayout.build(keep, model.layers[0].self_attn.rot_emb, attention)
    stream = x[keep]
    states = {0: stream} if 0 in layers else {}
    for depth, layer in enumerate(model.layers[:max(layers)], start=1):
        stream = backbone.run_layer(layer_fn, layer, stream, layout, attention=packed_attention)
        if depth in layers:
            states[depth] = model.emb_layer_norm_after(stream) if depth == last else stream
    return {depth: unpack(state, keep) for depth, state in states.items()}


def unpack(stream: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`[L, E]` back to `[B, T, E]`, zeros at padding."""
    out = stream.new_zeros(*keep.shape, stream.shape[-1])
    return out.index_put((keep,), stream)


def packed_attention(attn: nn.Module, x: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    """fair-esm's rotary attention on a packed `[L, E]` stream, each sequence attending to itself."""
    length, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # [L, E] -> [1, H, L, d]: SDPA's fused CPU kernel wants 4-D
        return t.reshape(1, length, heads, head_dim).transpose(1, 2)

    q = split(rotate(attn.q_proj(x) * attn.scaling, layout, heads, head_dim))
    k = split(rotate(attn.k_proj(x), layout, heads, head_dim))
    v = split(attn.v_proj(x))
    out = ATTENTION[layout.attention](q, k, v, layout)  # [1, H, L, d]
    return attn.out_proj(out[0].transpose(0, 1).reshape(length, width))


def rotate(t: torch.Tensor, layout: PackedLayout, heads: int, head_dim: int) -> torch.Tensor:
    """fair-esm's `apply_rotary_pos_emb` with each token's own position (restarting per sequence)."""
    t = t.reshape(-1, heads, head_dim)
    half = head_dim // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    return (t * layout.cos + rotated * layout.sin).reshape(-1, heads * head_dim)


# ---------------------------------------------------------------- block-diagonal attention, four ways


def loop_attention(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """One unmasked SDPA per sequence: exact, no mask, a Python loop of N calls per layer."""
    # `split`, not slicing: its backward is one cat, where each slice's would fill a zero [L] gradient
    parts = zip(*(t.split(layout.lengths, dim=2) for t in (q, k, v)))
    return torch.cat([F.scaled_dot_product_attention(*qkv, scale=1.0) for qkv in parts], dim=2)


def mask_attention(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """One SDPA over the whole stream with a boolean block-diagonal `[L, L]` mask (L² work)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=layout.block_mask, scale=1.0)


def nested_attention(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """SDPA on jagged nested tensors (varlen flash/efficient kernels on CUDA)."""
    def jagged(t):  # [1, H, L, d] -> nested [N, H, j, d]
        return torch.nested.nested_tensor_from_jagged(t[0].transpose(0, 1), layout.offsets).transpose(1, 2)

    with warnings.catch_warnings():  # torch's CPU fallback warns that the strided layout it uses is a prototype
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        out = F.scaled_dot_product_attention(jagged(q), jagged(k), jagged(v), scale=1.0)
    return out.transpose(1, 2).values().transpose(0, 1)[None]


def flex_attention(q, k, v, layout: PackedLayout) -> torch.Tensor:
    """torch's FlexAttention with a document block mask: fully masked 128-blocks are skipped."""
    from torch.nn.attention.flex_attention import flex_attention as flex

    return _compiled(flex)(q, k, v, block_mask=layout.block_mask, scale=1.0)


ATTENTION = {"loop": loop_attention, "mask": mask_attention, "nested": nested_attention, "flex": flex_attention}


def _boolean_mask(layout: PackedLayout) -> torch.Tensor:
    document = _documents(layout)
    return document[:, None] == document[None, :]


def _flex_mask(layout: PackedLayout):
    from torch.nn.attention.flex_attention import create_block_mask

    document, length = _documents(layout), int(layout.offsets[-1])
    return create_block_mask(lambda b, h, q, kv: document[q] == document[kv], None, None, length, length,
                             device=str(document.device))


def _documents(layout: PackedLayout) -> torch.Tensor:
    counts = torch.tensor(layout.lengths, device=layout.offsets.device)
    return torch.repeat_interleave(torch.arange(len(layout.lengths), device=counts.device), counts)


MASKS = {"mask": _boolean_mask, "flex": _flex_mask}
_COMPILED: dict = {}


def _compiled(fn: Callable) -> Callable:
    """flex_attention is only fast compiled (eager it materialises the L × L scores)."""
    if fn not in _COMPILED:
        _COMPILED[fn] = torch.compile(fn, dynamic=True)
    return _COMPILED[fn]
