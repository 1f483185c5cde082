"""What the transformers families (ESM C, BERT) share: the optional import, a vocabulary with the
fair-esm `Alphabet` interface the data layer reads, the forward with prompt insertion, strict
weight loading, and shapes of the adaptable linears counted on the meta device."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from torch import nn

from protadapt.backbones.base import Architecture, Backbone, BackboneError, drop_prompt, insert_prompt
from protadapt.backbones.weights import HF_EXTRA
from protadapt.files import one_line, read_json

AMBIGUOUS = "XBZUO"  # residue letters a vocabulary may lack: read as its unknown token


def require_transformers(what: str):
    """`transformers`, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise BackboneError(f"{what} needs transformers, an optional extra: {HF_EXTRA}") from None


class Vocabulary:
    """Token ids by string, with the attributes of fair-esm's `Alphabet` that protadapt reads."""

    prepend_bos = True
    append_eos = True

    def __init__(self, tokens: list[str], pad: str, cls: str, eos: str, mask: str, unk: str):
        self.all_toks = list(tokens)
        self.tok_to_idx = {token: index for index, token in enumerate(tokens)}
        self.padding_idx, self.cls_idx, self.eos_idx = self.get_idx(pad), self.get_idx(cls), self.get_idx(eos)
        self.mask_idx, self.unk_idx = self.get_idx(mask), self.get_idx(unk)
        for letter in AMBIGUOUS:
            self.tok_to_idx.setdefault(letter, self.unk_idx)

    def __len__(self) -> int:
        return len(self.all_toks)

    def get_idx(self, token: str) -> int:
        if token not in self.tok_to_idx:
            raise BackboneError(f"the vocabulary has no token {token!r}")
        return self.tok_to_idx[token]

    def encode(self, sequence: str) -> list[int]:
        """Residue ids of a one-letter sequence (no specials): what the data layer's table computes."""
        return [self.tok_to_idx.get(letter, self.unk_idx) for letter in sequence]


class HFBackbone(Backbone):
    """A transformers encoder: embed → (prompt) → layers under a padding mask → final states."""

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_layers(self, x: torch.Tensor, mask) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        x = self.embed(tokens)
        prompt = self._prompt_vectors(x)
        x, keep = insert_prompt(x, tokens != self.tokenizer.padding_idx, prompt)
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=x, attention_mask=keep.long())
        return drop_prompt(self.encode_layers(x, mask), 0 if prompt is None else prompt.shape[0])

    @property
    def max_residues(self) -> int:
        return self.model.config.max_position_embeddings - 2  # CLS/BOS and SEP/EOS take two positions


def read_config(directory: Path) -> dict:
    """A Hugging Face directory's `config.json`; a missing or damaged one is one line."""
    return read_json(directory / "config.json", BackboneError, "a Hugging Face model directory needs its config.json "
                     "as the hub ships it; download the model again")


def linear_shapes(model: nn.Module) -> list[tuple[str, int, int]]:
    """(path, in, out) of every `nn.Linear` in `model` (built on the meta device: no memory)."""
    return [(name, m.in_features, m.out_features) for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: Path, ignore: tuple[str, ...]) -> None:
    """Copy `state` into `model`; every model tensor must be given with its shape (keys in `ignore` dropped)."""
    state = {k: v for k, v in state.items() if not k.startswith(ignore) and not k.endswith(ignore)}
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        parts = ([f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []) + (
            [f"{len(unexpected)} unexpected (e.g. {unexpected[0]})"] if unexpected else [])
        raise BackboneError(f"{source}: weights do not fit the architecture: {'; '.join(parts)}")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise BackboneError(f"{source}: tensor {key} has shape {tuple(value.shape)}, the architecture needs {tuple(own[key].shape)}")
    model.load_state_dict(state)


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of `model.safetensors` (or its shards) or `pytorch_model.bin` (read with weights_only)."""
    from safetensors.torch import load_file

    shards = sorted(directory.glob("model*.safetensors"))
    binary = directory / "pytorch_model.bin"
    try:
        if shards:
            state = {}
            for shard in shards:
                state.update(load_file(str(shard)))
            return state, shards[0]
        if binary.exists():
            return torch.load(binary, map_location="cpu", weights_only=True), binary
    except Exception as error:  # safetensors and torch raise many types for damaged files
        raise BackboneError(f"{shards[0] if shards else binary}: not a readable weights file ({one_line(error)})") from None
    raise BackboneError(f"{directory}: no model.safetensors or pytorch_model.bin next to config.json")


def strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Keys without the wrapper prefix a task model saves (`bert.`, `esmc.`, `model.`)."""
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        out[key] = value
    return out


def architecture_of(name: str, family: str, config) -> Architecture:
    """The record of a transformers config (its whole dict kept, so a reload rebuilds it exactly)."""
    values = {k: v for k, v in config.to_dict().items() if k not in ("transformers_version", "_name_or_path")}
    return Architecture(name, family, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                        False, config.intermediate_size, values)
