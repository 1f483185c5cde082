"""BERT-family protein encoders through transformers' `BertModel`: AntiBERTy, ProtBert, and any
local HF BERT directory with its `vocab.txt`.

AntiBERTy (Ruffolo et al. 2021, MIT licence; 8 layers × 512, 26 M parameters, 558 M antibody
sequences) is located in the installed `antiberty` package (`pip install 'protadapt[antiberty]'`):
`trained_models/AntiBERTy_md_smooth/{config.json, pytorch_model.bin}` and `trained_models/vocab.txt`.
ProtBert (`Rostlab/prot_bert`) comes from `$PROTADAPT_MODEL_DIR/prot_bert/`, the HF cache, or the hub.
Tokens are looked up per residue (its tokenizer's space-separated input gives the same ids).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from protadapt.backbones.base import Architecture, BackboneError, register_family
from protadapt.backbones.hf import (
    HFBackbone,
    Vocabulary,
    architecture_of,
    load_strict,
    read_config,
    read_weights,
    require_transformers,
    strip_prefix,
)
from protadapt.backbones.weights import model_dir_paths
from protadapt.files import one_line

HUB_IDS = {"prot_bert": "Rostlab/prot_bert"}
ANTIBERTY = "antiberty"
ANTIBERTY_DIR = Path("trained_models") / "AntiBERTy_md_smooth"


def bert_config_dict(layers: int, width: int, heads: int, ffn: int, vocab: int, positions: int) -> dict:
    return {"model_type": "bert", "num_hidden_layers": layers, "hidden_size": width, "num_attention_heads": heads,
            "intermediate_size": ffn, "vocab_size": vocab, "max_position_embeddings": positions,
            "hidden_act": "gelu", "layer_norm_eps": 1e-12, "type_vocab_size": 2, "pad_token_id": 0}


def bert_architecture(name: str, config: dict) -> Architecture:
    return Architecture(name, "bert", config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
                        False, config["intermediate_size"], config)


ARCHITECTURES = {
    ANTIBERTY: bert_architecture(ANTIBERTY, bert_config_dict(8, 512, 8, 2048, 25, 512)),  # its config.json
    "prot_bert": bert_architecture("prot_bert", bert_config_dict(30, 1024, 16, 4096, 30, 40000)),  # Rostlab's
}
# The vocabularies of the named models, for random init without their files (ids as in vocab.txt).
VOCABULARIES = {
    ANTIBERTY: "[PAD] [UNK] [CLS] [SEP] [MASK] A C D E F G H I K L M N P Q R S T V W Y",
    "prot_bert": "[PAD] [UNK] [CLS] [SEP] [MASK] L A G V E S I K R D T P N Q F Y M H C W X U B Z O",
}


class BertBackbone(HFBackbone):
    """`BertModel` without its pooler. Prompt vectors enter after the embedding layer (word + position
    + LayerNorm), after `[CLS]`, with no position of their own: the residues keep their learned positions."""

    ATTENTION_TARGETS = (r"encoder\.layer\.\d+\.attention\.(self\.(query|key|value)|output\.dense)",)
    FFN_TARGETS = (r"encoder\.layer\.\d+\.(intermediate\.dense|output\.dense)",)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.embeddings(input_ids=tokens)

    def encode_layers(self, x: torch.Tensor, mask) -> torch.Tensor:
        return self.model.encoder(x, attention_mask=mask).last_hidden_state

    def prompt_init(self, residues: torch.Tensor) -> torch.Tensor:
        """The embedding layer's output for the residues (no dropout), as the first layer would see them."""
        embeddings = self.model.embeddings
        training = embeddings.training
        try:
            with torch.no_grad():
                return embeddings.eval()(input_ids=residues.to(embeddings.word_embeddings.weight.device).unsqueeze(0))[0]
        finally:
            embeddings.train(training)


register_family("bert", BertBackbone)


def bert_tokenizer(words: list[str]) -> Vocabulary:
    return Vocabulary(words, pad="[PAD]", cls="[CLS]", eos="[SEP]", mask="[MASK]", unk="[UNK]")


def build_bert(architecture: Architecture, vocabulary: Vocabulary | None = None) -> tuple[nn.Module, Vocabulary]:
    """`BertModel` of the recorded config (no pooler), transformers' initialisation, SDPA attention."""
    transformers = require_transformers("BERT backbones")
    config = transformers.BertConfig.from_dict(architecture.hf_config, attn_implementation="sdpa")
    if vocabulary is None:
        words = VOCABULARIES.get(architecture.name, "").split() or [f"[unused{i}]" for i in range(config.vocab_size)]
        vocabulary = bert_tokenizer(words)
    return transformers.BertModel(config, add_pooling_layer=False), vocabulary


def antiberty_directory() -> Path:
    """`$PROTADAPT_MODEL_DIR/antiberty/`, else the checkpoint inside the installed antiberty package."""
    for path in model_dir_paths(ANTIBERTY):
        if (path / "config.json").exists():
            return path
    spec = importlib.util.find_spec("antiberty")
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError("antiberty weights not found: pip install 'protadapt[antiberty]' "
                            "(or put its config.json, pytorch_model.bin and vocab.txt in $PROTADAPT_MODEL_DIR/antiberty/)")
    return Path(list(spec.submodule_search_locations)[0]) / ANTIBERTY_DIR


def read_vocabulary(directory: Path) -> Vocabulary:
    """`vocab.txt` of the directory, or of its parent (where the antiberty package keeps it)."""
    for path in (directory / "vocab.txt", directory.parent / "vocab.txt"):
        if path.exists():
            return bert_tokenizer(path.read_text().split())
    raise BackboneError(f"{directory}: no vocab.txt here or in the parent directory; a BERT backbone needs its vocabulary")


def bert_directory_architecture(directory: Path, name: str | None = None) -> Architecture:
    transformers = require_transformers("BERT backbones")
    try:
        parsed = transformers.BertConfig.from_dict(read_config(directory))
    except (TypeError, ValueError) as error:
        raise BackboneError(f"{directory / 'config.json'}: not a valid BERT config ({one_line(error)})") from None
    return architecture_of(name or directory.name, "bert", parsed)


def load_bert_directory(directory: Path, name: str | None = None) -> BertBackbone:
    """A local HF BERT directory: weights of BertModel or a task model (`bert.` prefix; heads dropped)."""
    vocabulary = read_vocabulary(directory)
    architecture = bert_directory_architecture(directory, name)
    if len(vocabulary) != architecture.hf_config["vocab_size"]:
        raise BackboneError(f"{directory}: vocab.txt has {len(vocabulary)} tokens, config.json says vocab_size "
                            f"{architecture.hf_config['vocab_size']}")
    model, _ = build_bert(architecture, vocabulary)
    state, source = read_weights(directory)
    load_strict(model, strip_prefix(state, ("bert.",)), source, ignore=("cls.", "pooler.", "position_ids"))
    return BertBackbone(model, vocabulary, architecture, pretrained=True, source=str(directory))
