"""ESM backbones: a name, path or directory in, a frozen-ready encoder of per-residue vectors out.

Resolution order for `load_backbone(spec)`:
1. `tiny` — a 2-layer, 32-wide random ESM-2 for tests.
2. An existing path: a fair-esm `.pt` checkpoint, or an HF-format directory
   (`config.json` + `model.safetensors`).
3. A fair-esm model name (`esm2_t6_8M_UR50D` … `esm2_t48_15B_UR50D`, `esm1b_t33_650M_UR50S`):
   with `random_init=True` the exact architecture, randomly initialised; otherwise weights from
   `$PROTADAPT_MODEL_DIR` (`<name>.pt` or an HF directory `<name>/`), then the torch hub cache
   (`<torch hub dir>/checkpoints/<name>.pt`, where fair-esm itself saves), then a download into
   that cache for users who are online.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import esm
import torch
import torch.nn.functional as F
from torch import nn

from protadapt.files import read_safetensors

MODEL_DIR_ENV = "PROTADAPT_MODEL_DIR"
FAIR_ESM_URL = "https://dl.fbaipublicfiles.com/fair-esm/models/{name}.pt"
MAX_RESIDUES = 1022  # ESM-2 and ESM-1b were trained on 1024 tokens: BOS + 1022 residues + EOS


class BackboneError(RuntimeError):
    """A one-line, user-facing problem with finding or reading backbone weights."""


@dataclass(frozen=True)
class Architecture:
    """The shape of an ESM model: enough to build it, count adapter parameters, or check a match."""

    name: str
    family: str  # "esm2" (rotary) or "esm1b" (learned positions)
    num_layers: int
    embed_dim: int
    attention_heads: int
    token_dropout: bool = True

    @property
    def ffn_dim(self) -> int:
        return 4 * self.embed_dim


def _esm2(name: str, layers: int, dim: int, heads: int) -> Architecture:
    return Architecture(name, "esm2", layers, dim, heads)


ARCHITECTURES: dict[str, Architecture] = {
    "tiny": _esm2("tiny", 2, 32, 4),
    "esm2_t6_8M_UR50D": _esm2("esm2_t6_8M_UR50D", 6, 320, 20),
    "esm2_t12_35M_UR50D": _esm2("esm2_t12_35M_UR50D", 12, 480, 20),
    "esm2_t30_150M_UR50D": _esm2("esm2_t30_150M_UR50D", 30, 640, 20),
    "esm2_t33_650M_UR50D": _esm2("esm2_t33_650M_UR50D", 33, 1280, 20),
    "esm2_t36_3B_UR50D": _esm2("esm2_t36_3B_UR50D", 36, 2560, 40),
    "esm2_t48_15B_UR50D": _esm2("esm2_t48_15B_UR50D", 48, 5120, 40),
    "esm1b_t33_650M_UR50S": Architecture("esm1b_t33_650M_UR50S", "esm1b", 33, 1280, 20, True),
}

# sha256 of published files, checked after a download (HF-hub safetensors, from shared/models).
KNOWN_SHA256: dict[str, str] = {
    "esm2_t6_8M_UR50D/model.safetensors": "c78322372c5f2a2db07ff6df20637701d82eb255aa32e2623c2db18553db28d9",
    "esm2_t12_35M_UR50D/model.safetensors": "da93c01fb49062629d1e9040290fda26b7a69bb3daaccf8c2c16adf509f086d8",
}


class Backbone(nn.Module):
    """A fair-esm model that returns final-layer per-residue representations (no LM head).

    `prompt`, when set by prompt tuning, is a module returning `p × E` vectors inserted after the
    BOS embedding; the output drops those positions again so it stays aligned with `tokens`.
    """

    def __init__(self, model: nn.Module, alphabet: esm.data.Alphabet, architecture: Architecture,
                 pretrained: bool, source: str):
        super().__init__()
        self.model = model
        self.alphabet = alphabet
        self.architecture = architecture
        self.pretrained = pretrained
        self.source = source
        self.prompt: nn.Module | None = None

    @property
    def embed_dim(self) -> int:
        return self.architecture.embed_dim

    @property
    def max_residues(self) -> int:
        return MAX_RESIDUES

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.architecture.family == "esm1b":
            if self.prompt is not None:
                raise BackboneError("prompt tuning needs a rotary ESM-2 backbone; ESM-1b has learned positions")
            num_layers = self.architecture.num_layers
            return self.model(tokens, repr_layers=[num_layers])["representations"][num_layers]
        return self._esm2_forward(tokens)

    def _esm2_forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """fair-esm's ESM2.forward up to the final layer norm, with an optional prompt insertion."""
        model = self.model
        padding_mask = tokens.eq(model.padding_idx)
        x = model.embed_scale * model.embed_tokens(tokens)
        if model.token_dropout:
            x = x.masked_fill((tokens == model.mask_idx).unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            src_lengths = (~padding_mask).sum(-1)
            mask_ratio_observed = (tokens == model.mask_idx).sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))

        num_prompts = 0
        if self.prompt is not None:
            prompt = self.prompt().to(x.dtype)
            num_prompts = prompt.shape[0]
            x = torch.cat([x[:, :1], prompt.unsqueeze(0).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
            prompt_pad = padding_mask.new_zeros(padding_mask.shape[0], num_prompts)
            padding_mask = torch.cat([padding_mask[:, :1], prompt_pad, padding_mask[:, 1:]], dim=1)

        x = x.transpose(0, 1)
        attention_padding = padding_mask if padding_mask.any() else None
        for layer in model.layers:
            x = transformer_layer(layer, x, attention_padding)
        x = model.emb_layer_norm_after(x).transpose(0, 1)
        if num_prompts:
            x = torch.cat([x[:, :1], x[:, 1 + num_prompts:]], dim=1)
        return x


def transformer_layer(layer: nn.Module, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """fair-esm's pre-norm ESM-2 TransformerLayer, with attention and GELU as fused kernels.

    `F.gelu` is the same exact-erf GELU as fair-esm's `x·½(1 + erf(x/√2))` (within 1.5e-6), but one
    kernel that keeps one tensor for backward instead of three: ~8× faster and the FFN's largest
    activation saving (benchmarks/results/vs_peft.md).
    """
    residual = x
    x = residual + self_attention(layer.self_attn, layer.self_attn_layer_norm(x), padding_mask)
    residual = x
    x = layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(x))))
    return residual + x


def self_attention(attn: nn.Module, x: torch.Tensor, padding_mask: torch.Tensor | None) -> torch.Tensor:
    """fair-esm's rotary multi-head attention (T × B × E in and out) via scaled_dot_product_attention.

    Same arithmetic as `esm.multihead_attention.MultiheadAttention` (q scaled before the rotary
    embedding, hence `scale=1`), without materialising the T × T weights for backward.
    """
    length, batch, width = x.shape
    heads, head_dim = attn.num_heads, attn.head_dim

    def split(t: torch.Tensor) -> torch.Tensor:  # (T, B, E) -> (B·H, T, d), fair-esm's layout
        return t.reshape(length, batch * heads, head_dim).transpose(0, 1)

    q, k = attn.rot_emb(split(attn.q_proj(x) * attn.scaling), split(attn.k_proj(x)))
    v = split(attn.v_proj(x))
    q, k, v = (t.reshape(batch, heads, length, head_dim) for t in (q, k, v))
    mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(length, batch, width))


def load_backbone(spec: str, *, random_init: bool = False) -> Backbone:
    """Load an ESM backbone by fair-esm name, checkpoint path or HF-format directory."""
    path = Path(spec).expanduser()
    if spec in ARCHITECTURES and (random_init or spec == "tiny"):
        return build_random(ARCHITECTURES[spec])
    if path.exists():
        if random_init:  # the architecture of a local HF config, without its weights
            return build_random(hf_architecture(path))
        return _load_path(path)
    if spec not in ARCHITECTURES:
        known = ", ".join(name for name in ARCHITECTURES if name != "tiny")
        raise BackboneError(f"unknown backbone '{spec}': not a file or directory, and not one of: tiny, {known}")
    return _load_named(spec)


def build_random(architecture: Architecture, seed: int = 0) -> Backbone:
    """The exact architecture with random weights, the same for the same seed (so a run reloads)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, alphabet = build_model(architecture)
    return Backbone(model, alphabet, architecture, pretrained=False, source=f"random-init:seed={seed}")


def weight_search_paths(name: str) -> list[Path]:
    """Where pretrained weights for `name` are looked for, in order."""
    paths = []
    model_dir = os.environ.get(MODEL_DIR_ENV)
    if model_dir:
        paths += [Path(model_dir) / f"{name}.pt", Path(model_dir) / name]
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / f"{name}.pt")
    return paths


def _load_named(name: str) -> Backbone:
    candidates = weight_search_paths(name)
    for candidate in candidates:
        if candidate.exists():
            return _load_path(candidate, name=name)
    destination = candidates[-1]
    try:
        download(FAIR_ESM_URL.format(name=name), destination, KNOWN_SHA256.get(name))
    except OSError as error:
        looked = ", ".join(str(p) for p in candidates)
        raise BackboneError(
            f"no weights for {name}: looked for {looked}; download failed ({_one_line(error)}). "
            f"Put the fair-esm file {name}.pt (or an HF directory {name}/) in ${MODEL_DIR_ENV}, "
            f"or use --random-init for offline work"
        ) from None
    return _load_path(destination, name=name)


def download(url: str, destination: Path, sha256: str | None = None) -> Path:
    """Fetch `url` to `destination` atomically, checking its sha256 when one is known."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=destination.parent, suffix=".part")
    digest = hashlib.sha256()
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise OSError(f"checksum mismatch for {url}: got {digest.hexdigest()}, expected {sha256}")
        os.replace(tmp, destination)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return destination


def _load_path(path: Path, name: str | None = None) -> Backbone:
    if path.is_dir():
        if (path / "config.json").exists():
            return load_hf_directory(path)
        raise BackboneError(f"{path}: a directory without config.json; expected an HF-format ESM model directory")
    return load_fair_esm_checkpoint(path, name=name)


# ---------------------------------------------------------------- fair-esm `.pt` checkpoints


def load_fair_esm_checkpoint(path: Path, name: str | None = None) -> Backbone:
    """Read a fair-esm checkpoint safely (weights_only, only argparse.Namespace allowed)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise BackboneError(f"{path}: not a readable fair-esm checkpoint ({_one_line(error)})") from None
    if not isinstance(data, dict) or "model" not in data or not ({"cfg", "args"} & set(data)):
        raise BackboneError(f"{path}: not a fair-esm checkpoint (expected a dict with 'model' and 'cfg' or 'args')")
    architecture = _architecture_from_fair_esm(data, name or path.stem, path)
    state = {_strip_fairseq_prefix(key): value for key, value in data["model"].items()}
    regression = path.with_name(path.stem + "-contact-regression.pt")
    if regression.exists():
        try:
            with torch.serialization.safe_globals([argparse.Namespace]):
                state.update(torch.load(regression, map_location="cpu", weights_only=True)["model"])
        except Exception as error:
            raise BackboneError(f"{regression}: not a readable contact-regression file ({_one_line(error)})") from None
    model, alphabet = build_model(architecture)
    if architecture.family == "esm1b" and "embed_tokens.weight" in state:
        state["embed_tokens.weight"][alphabet.mask_idx].zero_()  # as fair-esm does, for token drop
    _load_state_strict(model, state, path)
    return Backbone(model, alphabet, architecture, pretrained=True, source=str(path))


def _architecture_from_fair_esm(data: dict, name: str, path: Path) -> Architecture:
    if "cfg" in data:
        cfg = data["cfg"]["model"]
        return Architecture(name, "esm2", cfg.encoder_layers, cfg.encoder_embed_dim,
                            cfg.encoder_attention_heads, bool(cfg.token_dropout))
    args = data["args"]
    if getattr(args, "arch", None) != "roberta_large":
        raise BackboneError(f"{path}: architecture '{getattr(args, 'arch', '?')}' is not supported (ESM-2 and ESM-1b are)")

    def arg(key: str):  # fairseq saves `encoder_layers`; fair-esm strips the `encoder_` prefix
        value = getattr(args, f"encoder_{key}", getattr(args, key, None))
        if value is None:
            raise BackboneError(f"{path}: ESM-1b args lack '{key}' (or 'encoder_{key}')")
        return value

    return Architecture(name, "esm1b", arg("layers"), arg("embed_dim"), arg("attention_heads"),
                        bool(getattr(args, "token_dropout", False)))


def _strip_fairseq_prefix(key: str) -> str:
    return re.sub(r"^(encoder\.sentence_encoder\.|encoder\.)", "", key)


# ---------------------------------------------------------------- HF-format directories

HF_TO_FAIR_ESM: list[tuple[str, str]] = [
    (r"esm\.embeddings\.word_embeddings\.", "embed_tokens."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.query\.", r"layers.\1.self_attn.q_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.key\.", r"layers.\1.self_attn.k_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.self\.value\.", r"layers.\1.self_attn.v_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.self_attn.out_proj."),
    (r"esm\.encoder\.layer\.(\d+)\.attention\.LayerNorm\.", r"layers.\1.self_attn_layer_norm."),
    (r"esm\.encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"esm\.encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"esm\.encoder\.layer\.(\d+)\.LayerNorm\.", r"layers.\1.final_layer_norm."),
    (r"esm\.encoder\.emb_layer_norm_after\.", "emb_layer_norm_after."),
    (r"esm\.contact_head\.regression\.", "contact_head.regression."),
    (r"lm_head\.dense\.", "lm_head.dense."),
    (r"lm_head\.layer_norm\.", "lm_head.layer_norm."),
    (r"lm_head\.bias$", "lm_head.bias"),
]
# Tensors HF stores that fair-esm derives: rotary frequencies, position ids, the tied LM decoder.
HF_DERIVED = re.compile(r"(rotary_embeddings\.inv_freq|position_ids|lm_head\.decoder\.weight|position_embeddings)")


def load_hf_directory(directory: Path) -> Backbone:
    """Read an HF-hub ESM-2 directory (`config.json` + `model.safetensors`) into fair-esm's ESM2."""
    architecture = hf_architecture(directory)
    weights = directory / "model.safetensors"
    if not weights.exists():
        raise BackboneError(f"{weights}: missing; an HF-format ESM directory needs config.json and model.safetensors")
    hf_state = read_safetensors(weights, BackboneError)
    state = {}
    for key, value in hf_state.items():
        key = key.removeprefix("model.") if key.startswith("model.esm.") else key
        if not key.startswith(("esm.", "lm_head.")):
            key = "esm." + key  # EsmModel (no LM head) saves without the `esm.` prefix
        if HF_DERIVED.search(key):
            continue
        key = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", key))  # legacy names (transformers 5 writes them)
        state[hf_to_fair_esm_key(key)] = value
    model, alphabet = build_model(architecture)
    # fair-esm stores the rotary frequencies as a buffer; HF derives them, so take the built ones.
    state.update({k: v for k, v in model.state_dict().items() if k.endswith("rot_emb.inv_freq")})
    _load_state_strict(model, state, weights, optional=("lm_head.", "contact_head."))
    return Backbone(model, alphabet, architecture, pretrained=True, source=str(directory))


def hf_architecture(directory: Path) -> Architecture:
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BackboneError(f"{config_path}: not a readable JSON config ({_one_line(error)})") from None
    if config.get("model_type") != "esm" or config.get("position_embedding_type") != "rotary":
        raise BackboneError(f"{config_path}: not an ESM-2 config (model_type 'esm' with rotary positions expected)")
    if config.get("intermediate_size") != 4 * config["hidden_size"] or config.get("vocab_size") != 33:
        raise BackboneError(f"{config_path}: unsupported shape (ESM-2 has intermediate_size = 4 × hidden_size and 33 tokens)")
    name = config.get("_name_or_path", directory.name).split("/")[-1] or directory.name
    return Architecture(name, "esm2", config["num_hidden_layers"], config["hidden_size"],
                        config["num_attention_heads"], bool(config.get("token_dropout", True)))


def hf_to_fair_esm_key(key: str) -> str:
    for pattern, replacement in HF_TO_FAIR_ESM:
        new, count = re.subn("^" + pattern, replacement, key)
        if count:
            return new
    return key  # left as is: the strict load names it as unexpected


# ---------------------------------------------------------------- shared helpers


def build_model(architecture: Architecture) -> tuple[nn.Module, esm.data.Alphabet]:
    """fair-esm's model of `architecture` with fresh weights (on the current default device)."""
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    if architecture.family == "esm2":
        model = esm.model.esm2.ESM2(architecture.num_layers, architecture.embed_dim,
                                    architecture.attention_heads, alphabet, architecture.token_dropout)
    else:
        args = argparse.Namespace(
            arch="roberta_large", layers=architecture.num_layers, embed_dim=architecture.embed_dim,
            ffn_embed_dim=architecture.ffn_dim, attention_heads=architecture.attention_heads,
            max_positions=1024, emb_layer_norm_before=True, token_dropout=architecture.token_dropout,
            dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        )
        model = esm.model.esm1.ProteinBertModel(args, alphabet)
    return model, alphabet


def _load_state_strict(model: nn.Module, state: dict, source: Path, optional: tuple[str, ...] = ("contact_head.",)) -> None:
    expected = set(model.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.startswith(optional))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise BackboneError(f"{source}: weights do not fit the architecture: {'; '.join(parts)}")
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.shape != shapes[key]:
            raise BackboneError(f"{source}: tensor {key} has shape {tuple(value.shape)}, the architecture needs {tuple(shapes[key])}")
    model.load_state_dict(state, strict=False)


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
