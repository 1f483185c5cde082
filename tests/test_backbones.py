"""Backbones: our forward equals fair-esm's, random init is reproducible, every checkpoint format
round-trips to the same numbers, and every way of failing is one line that names the file."""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import esm
import pytest
import torch

import protadapt.backbones as backbones
from protadapt.backbones import (
    ARCHITECTURES,
    Architecture,
    Backbone,
    BackboneError,
    build_random,
    load_backbone,
    weight_search_paths,
)

HF_CONFIG_8M = Path(__file__).resolve().parents[2] / "shared" / "models" / "esm2_t6_8M_UR50D_hf_config"
HF_CONFIG_35M = HF_CONFIG_8M.parent / "esm2_t12_35M_UR50D_hf_config"
ESM1B_TINY = Architecture("t", "esm1b", 2, 32, 4, False)
MASK = 32  # <mask> in the ESM alphabet



@pytest.fixture(scope="module")
def backbone_8m() -> Backbone:
    return load_backbone("esm2_t6_8M_UR50D", random_init=True)


@pytest.fixture
def masked_tokens(tokens) -> torch.Tensor:
    """The fixture batch with one <mask> per sequence, so ESM's token-dropout rescaling is exercised."""
    batch = tokens.clone()
    batch[:, 3] = MASK
    return batch


def fair_esm_representations(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    layers = backbone.architecture.num_layers
    return backbone.model(tokens, repr_layers=[layers])["representations"][layers]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def one_line_error(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ---------------------------------------------------------------- forward and random init


@pytest.mark.parametrize("which", ["tiny", "8m", "esm1b-tiny"])
def test_forward_equals_fair_esm_representations(which, tokens, masked_tokens, backbone_8m):
    backbone = {"tiny": lambda: load_backbone("tiny"), "8m": lambda: backbone_8m,
                "esm1b-tiny": lambda: build_random(ESM1B_TINY)}[which]()
    with torch.no_grad():
        for batch in (tokens, masked_tokens):
            ours = backbone(batch)
            assert ours.shape == (3, 12, backbone.embed_dim)
            assert max_diff(ours, fair_esm_representations(backbone, batch)) <= 1e-5  # our forward runs attention through SDPA: same maths, other rounding


def test_8m_architecture_matches_the_hf_config(backbone_8m):
    config = json.loads((HF_CONFIG_8M / "config.json").read_text())
    arch = backbone_8m.architecture
    assert (arch.num_layers, arch.embed_dim, arch.attention_heads, arch.ffn_dim) == (
        config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"], config["intermediate_size"])
    # shared/models/README.md: the random EsmForMaskedLM of this config has 7,512,474 parameters
    assert sum(p.numel() for p in backbone_8m.parameters()) == 7_512_474
    assert not backbone_8m.pretrained


@pytest.mark.parametrize("architecture", [ARCHITECTURES["tiny"], ESM1B_TINY], ids=["esm2", "esm1b"])
def test_random_init_is_deterministic_and_leaves_the_global_rng_alone(architecture):
    rng_before = torch.random.get_rng_state()
    first, second = build_random(architecture, seed=0), build_random(architecture, seed=0)
    assert torch.equal(torch.random.get_rng_state(), rng_before)
    other = build_random(architecture, seed=1)
    a, b, c = first.state_dict(), second.state_dict(), other.state_dict()
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"], c["model.layers.0.self_attn.q_proj.weight"])
    assert first.source == "random-init:seed=0" and other.source == "random-init:seed=1"


# ---------------------------------------------------------------- fair-esm `.pt` checkpoints


def write_esm2_checkpoint(backbone: Backbone, path: Path, with_regression: bool = False) -> Path:
    """A file laid out like fair-esm's downloads: fairseq prefixes, `cfg['model']` a Namespace."""
    state = backbone.model.state_dict()
    model = {("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key: value.clone()
             for key, value in state.items() if not key.startswith("contact_head.")}
    arch = backbone.architecture
    cfg = argparse.Namespace(encoder_layers=arch.num_layers, encoder_embed_dim=arch.embed_dim,
                             encoder_attention_heads=arch.attention_heads, token_dropout=True)
    torch.save({"model": model, "cfg": {"model": cfg}}, path)
    if with_regression:
        regression = {k: v.clone() for k, v in state.items() if k.startswith("contact_head.")}
        torch.save({"model": regression}, path.with_name(path.stem + "-contact-regression.pt"))
    return path


def write_esm1b_checkpoint(backbone: Backbone, path: Path, fairseq_names: bool) -> Path:
    """ESM-1b layout: `args` Namespace. fairseq names its fields `encoder_layers` etc.; fair-esm's
    loader strips `encoder_`, so both spellings are written by some tool and both must load."""
    arch = backbone.architecture
    sizes = {"layers": arch.num_layers, "embed_dim": arch.embed_dim, "ffn_embed_dim": arch.ffn_dim,
             "attention_heads": arch.attention_heads}
    if fairseq_names:
        sizes = {f"encoder_{key}": value for key, value in sizes.items()}
    args = argparse.Namespace(arch="roberta_large", max_positions=1024, emb_layer_norm_before=True,
                              token_dropout=True, dropout=0.1, attention_dropout=0.1, **sizes)
    model = {("encoder." if key.startswith("lm_head.") else "encoder.sentence_encoder.") + key: value.clone()
             for key, value in backbone.model.state_dict().items() if not key.startswith("contact_head.")}
    torch.save({"model": model, "args": args}, path)
    return path


def fair_esm_reference(path: Path, name: str) -> torch.nn.Module:
    """fair-esm's own loader on the same file (its torch.load is bypassed: it lacks weights_only)."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, map_location="cpu", weights_only=True)
    with pytest.warns(UserWarning, match="Regression weights not found"):
        model, _ = esm.pretrained.load_model_and_alphabet_core(name, data, None)
    return model.eval()


@pytest.mark.parametrize("which", ["tiny", "8m"])
def test_fair_esm_checkpoint_round_trip(which, tmp_path, masked_tokens, backbone_8m):
    original = build_random(ARCHITECTURES["tiny"], seed=7) if which == "tiny" else backbone_8m
    path = write_esm2_checkpoint(original, tmp_path / "esm2_roundtrip.pt", with_regression=True)
    loaded = load_backbone(str(path))
    assert loaded.pretrained and loaded.source == str(path)
    assert loaded.architecture == Architecture("esm2_roundtrip", "esm2", *[
        getattr(original.architecture, f) for f in ("num_layers", "embed_dim", "attention_heads")])
    loaded_state, original_state = loaded.model.state_dict(), original.model.state_dict()
    assert all(torch.equal(loaded_state[k], original_state[k]) for k in original_state)  # contact head included
    reference = fair_esm_reference(path, "esm2_roundtrip")
    layers = original.architecture.num_layers
    with torch.no_grad():
        ours = loaded(masked_tokens)
        assert torch.equal(ours, original(masked_tokens))
        assert max_diff(ours, reference(masked_tokens, repr_layers=[layers])["representations"][layers]) <= 1e-5


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip-format-mapped", "legacy-format"])
def test_a_checkpoint_is_loaded_into_a_model_built_on_the_meta_device(legacy_format, tmp_path, monkeypatch,
                                                                     masked_tokens):
    """No random initialisation is paid for and thrown away; the contact head, absent from the file, is
    initialised as fair-esm would; a legacy-format file (not memory-mappable) loads too."""
    from protadapt.backbones import esm as esm_module

    original = build_random(ARCHITECTURES["tiny"], seed=5)
    path = write_esm2_checkpoint(original, tmp_path / "esm2_meta.pt")
    if legacy_format:
        data = torch.load(path, weights_only=False)
        torch.save(data, path, _use_new_zipfile_serialization=False)
    devices = []
    real_build = esm_module.build_esm
    monkeypatch.setattr(esm_module, "build_esm", lambda arch: devices.append(torch.empty(0).device.type)
                        or real_build(arch))
    loaded = load_backbone(str(path))
    assert devices == ["meta"]
    tensors = {**dict(loaded.model.named_parameters()), **dict(loaded.model.named_buffers())}
    assert not any(t.is_meta for t in tensors.values())
    assert all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point())
    assert loaded.model.lm_head.weight is loaded.model.embed_tokens.weight  # tied, as fair-esm builds it
    head = loaded.model.contact_head.regression
    assert head.weight.abs().sum() > 0 and not torch.equal(head.weight, original.model.contact_head.regression.weight)
    with torch.no_grad():
        assert torch.equal(loaded(masked_tokens), original(masked_tokens))


@pytest.mark.parametrize("fairseq_names", [True, False], ids=["encoder_-prefixed-args", "plain-args"])
def test_esm1b_checkpoint_round_trip_matches_fair_esm(fairseq_names, tmp_path, masked_tokens):
    original = build_random(Architecture("esm1b_tiny", "esm1b", 2, 32, 4, True), seed=3)
    path = write_esm1b_checkpoint(original, tmp_path / "esm1b_tiny.pt", fairseq_names)
    loaded = load_backbone(str(path))
    assert loaded.architecture == Architecture("esm1b_tiny", "esm1b", 2, 32, 4, True)
    reference = fair_esm_reference(path, "esm1b_tiny")  # zeroes the <mask> embedding, as we do
    with torch.no_grad():
        ours = loaded(masked_tokens)
        theirs = reference(masked_tokens, repr_layers=[2])["representations"][2]
    assert max_diff(ours, theirs) <= 1e-6


# ---------------------------------------------------------------- HF-format directories


def hf_to_fair_esm_state(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {backbones.hf_to_fair_esm_key(k): v for k, v in hf_state.items()}


@pytest.fixture(scope="module")
def hf_checkpoint(tmp_path_factory) -> tuple[Path, torch.nn.Module | None]:
    """An HF directory with the REAL 8M config and seeded random weights; the transformers model too
    when transformers is installed, otherwise a state dict written by inverting our key mapping."""
    from safetensors.torch import save_file

    directory = tmp_path_factory.mktemp("hf_esm2_t6_8M")
    shutil.copy(HF_CONFIG_8M / "config.json", directory / "config.json")
    try:
        from transformers import EsmConfig, EsmForMaskedLM
    except ImportError:
        source = build_random(ARCHITECTURES["esm2_t6_8M_UR50D"], seed=5).model.state_dict()
        inverse = {}
        for key, value in source.items():
            hf_key = _fair_esm_to_hf_key(key)
            if hf_key is not None:
                inverse[hf_key] = value.contiguous()
        save_file(inverse, str(directory / "model.safetensors"))
        return directory, None
    torch.manual_seed(5)
    model = EsmForMaskedLM(EsmConfig.from_pretrained(directory)).eval()
    model.save_pretrained(directory)
    shutil.copy(HF_CONFIG_8M / "config.json", directory / "config.json")  # keep the hub's own file
    return directory, model


def _fair_esm_to_hf_key(key: str) -> str | None:
    import re

    if key.endswith("rot_emb.inv_freq") or key == "lm_head.weight":  # derived / tied to the embeddings
        return None
    for pattern, replacement in backbones.HF_TO_FAIR_ESM:
        # invert "esm\.encoder\.layer\.(\d+)\.attention\.self\.query\." <-> r"layers.\1.self_attn.q_proj."
        fair = "^" + re.escape(replacement).replace(r"\\1", r"(\d+)")
        hf = pattern.replace("\\.", ".").replace(r"(\d+)", r"\1").replace("$", "")
        new, count = re.subn(fair, hf, key)
        if count:
            return new
    raise AssertionError(f"no HF name for {key}")


def test_inverted_key_mapping_gives_the_names_transformers_writes(hf_checkpoint):
    from safetensors.torch import load_file

    directory, hf_model = hf_checkpoint
    if hf_model is None:
        pytest.skip("transformers not installed")
    written = {k.replace(".gamma", ".weight").replace(".beta", ".bias")
               for k in load_file(str(directory / "model.safetensors")) if not backbones.HF_DERIVED.search(k)}
    ours = {_fair_esm_to_hf_key(k) for k in build_random(ARCHITECTURES["esm2_t6_8M_UR50D"]).model.state_dict()}
    assert ours - {None} == written


def test_hf_directory_loads_the_real_8m_config_and_matches_transformers(hf_checkpoint, tokens, masked_tokens):
    directory, hf_model = hf_checkpoint
    backbone = load_backbone(str(directory))
    assert backbone.pretrained
    assert (backbone.architecture.name, backbone.architecture.num_layers, backbone.architecture.embed_dim) == (
        "esm2_t6_8M_UR50D", 6, 320)
    if hf_model is None:
        pytest.skip("transformers not installed: loaded, but no reference implementation to compare with")
    with torch.no_grad():
        for batch in (tokens, masked_tokens):
            ours = backbone(batch)
            theirs = hf_model.esm(input_ids=batch, attention_mask=batch.ne(1)).last_hidden_state
            assert max_diff(ours, theirs) <= 1e-5


def test_hf_and_fair_esm_checkpoints_of_the_same_weights_agree(hf_checkpoint, tmp_path, masked_tokens):
    from safetensors.torch import load_file, save_file

    directory, _ = hf_checkpoint
    from_hf = load_backbone(str(directory))
    from_pt = load_backbone(str(write_esm2_checkpoint(from_hf, tmp_path / "esm2_t6_8M_UR50D.pt")))

    # The hub's files (transformers 4.x) spell LayerNorm parameters weight/bias; transformers 5
    # writes gamma/beta. Both spellings must load to the same model.
    hub_style = tmp_path / "hub_style"
    hub_style.mkdir()
    shutil.copy(directory / "config.json", hub_style / "config.json")
    renamed = {k.replace(".gamma", ".weight").replace(".beta", ".bias"): v
               for k, v in load_file(str(directory / "model.safetensors")).items()}
    assert any("LayerNorm.weight" in k for k in renamed)
    save_file(renamed, str(hub_style / "model.safetensors"))
    from_hub_style = load_backbone(str(hub_style))

    with torch.no_grad():
        reference = from_hf(masked_tokens)
        assert max_diff(from_pt(masked_tokens), reference) <= 1e-5
        assert torch.equal(from_hub_style(masked_tokens), reference)


def test_hf_directory_builds_on_meta_and_leaves_no_tensor_unfilled(hf_checkpoint, tmp_path, masked_tokens):
    """Built on the meta device (no random init to overwrite); what HF does not store is derived as fair-esm
    would: rotary frequencies, the tied LM decoder, and for an EsmModel file (no LM head) the head's init."""
    from safetensors.torch import load_file, save_file

    directory, _ = hf_checkpoint
    full = load_backbone(str(directory)).model
    built = build_random(ARCHITECTURES["esm2_t6_8M_UR50D"]).model.state_dict()
    encoder_only = tmp_path / "esm_model"
    encoder_only.mkdir()
    shutil.copy(directory / "config.json", encoder_only / "config.json")
    save_file({k.removeprefix("esm."): v for k, v in load_file(str(directory / "model.safetensors")).items()
               if k.startswith("esm.")}, str(encoder_only / "model.safetensors"))
    bare = load_backbone(str(encoder_only))
    for model in (full, bare.model):
        state = model.state_dict()
        assert not any(t.is_meta for t in state.values())
        assert model.lm_head.weight is model.embed_tokens.weight
        for key in (k for k in built if k.endswith("rot_emb.inv_freq")):
            assert torch.equal(state[key], built[key])
    written = load_file(str(directory / "model.safetensors"))
    assert torch.equal(full.lm_head.dense.weight, written["lm_head.dense.weight"])  # the file's head where it has one
    assert torch.equal(bare.model.lm_head.bias, torch.zeros(33))
    with torch.no_grad():
        assert torch.equal(bare(masked_tokens), load_backbone(str(directory))(masked_tokens))


@pytest.mark.parametrize("config_dir, shape", [(HF_CONFIG_8M, (6, 320, 20)), (HF_CONFIG_35M, (12, 480, 20))],
                         ids=["8M", "35M"])
def test_random_init_from_an_hf_config_dir_builds_that_architecture(config_dir, shape, tokens):
    backbone = load_backbone(str(config_dir), random_init=True)  # the directory has no weights at all
    arch = backbone.architecture
    assert (arch.family, arch.num_layers, arch.embed_dim, arch.attention_heads) == ("esm2", *shape)
    assert arch.name == config_dir.name.removesuffix("_hf_config")
    assert not backbone.pretrained
    with torch.no_grad():
        assert backbone(tokens).shape == (3, 12, shape[1])


# ---------------------------------------------------------------- failures: one line, naming the file


@pytest.fixture
def offline_dirs(tmp_path, monkeypatch) -> Iterator[tuple[Path, Path, list]]:
    """Empty model dir and torch hub dir, and a download that fails instead of touching the network."""
    model_dir, hub_dir = tmp_path / "models", tmp_path / "torch_home" / "hub"
    model_dir.mkdir()
    monkeypatch.setenv(backbones.MODEL_DIR_ENV, str(model_dir))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    previous_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(hub_dir))
    attempts = []

    def no_network(url, destination, sha256=None):
        attempts.append((url, destination))
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(backbones, "download", no_network)
    yield model_dir, hub_dir, attempts
    torch.hub.set_dir(previous_hub)


def test_missing_weights_name_every_path_looked_at(offline_dirs):
    model_dir, hub_dir, attempts = offline_dirs
    name = "esm2_t6_8M_UR50D"
    with pytest.raises(BackboneError) as error:
        load_backbone(name)
    message = one_line_error(error)
    expected_paths = [model_dir / f"{name}.pt", model_dir / name, hub_dir / "checkpoints" / f"{name}.pt"]
    assert weight_search_paths(name) == expected_paths
    for path in expected_paths:
        assert str(path) in message
    assert "network is unreachable (test)" in message and "--random-init" in message
    assert attempts == [(backbones.FAIR_ESM_URL.format(name=name), hub_dir / "checkpoints" / f"{name}.pt")]


def test_named_weights_are_found_in_model_dir_then_hub_cache(offline_dirs, tokens):
    model_dir, hub_dir, attempts = offline_dirs
    name = "esm2_t6_8M_UR50D"
    tiny = ARCHITECTURES["tiny"]  # the file's cfg decides the shape; tiny keeps the test fast
    (hub_dir / "checkpoints").mkdir(parents=True)
    write_esm2_checkpoint(build_random(tiny, seed=1), hub_dir / "checkpoints" / f"{name}.pt")
    loaded = load_backbone(name)
    assert loaded.source == str(hub_dir / "checkpoints" / f"{name}.pt") and loaded.architecture.name == name
    in_model_dir = build_random(tiny, seed=2)
    write_esm2_checkpoint(in_model_dir, model_dir / f"{name}.pt")
    loaded = load_backbone(name)  # $PROTADAPT_MODEL_DIR comes first
    assert loaded.source == str(model_dir / f"{name}.pt")
    with torch.no_grad():
        assert torch.equal(loaded(tokens), in_model_dir(tokens))
    assert attempts == []


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "not-a-checkpoint", "foreign-pickle"])
def test_corrupt_fair_esm_file_is_a_one_line_error_naming_it(damage, tmp_path):
    path = tmp_path / "broken.pt"
    if damage == "random-bytes":
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
    elif damage == "truncated":
        _truncated(write_esm2_checkpoint(load_backbone("tiny"), path))
    elif damage == "not-a-checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    else:  # a pickle that needs a global other than argparse.Namespace: never unpickled
        torch.save({"model": {}, "cfg": {"model": Path("/etc")}}, path)
    with pytest.raises(BackboneError) as error:
        load_backbone(str(path))
    assert str(path) in one_line_error(error)


def test_corrupt_contact_regression_file_is_a_one_line_error(tmp_path):
    path = write_esm2_checkpoint(load_backbone("tiny"), tmp_path / "esm2_tiny.pt", with_regression=True)
    regression = _truncated(tmp_path / "esm2_tiny-contact-regression.pt")
    with pytest.raises(BackboneError) as error:
        load_backbone(str(path))
    assert str(regression) in one_line_error(error)


def test_checkpoint_of_another_shape_is_a_one_line_error(tmp_path):
    path = write_esm2_checkpoint(load_backbone("tiny"), tmp_path / "esm2_tiny.pt")
    with torch.serialization.safe_globals([argparse.Namespace]):
        data = torch.load(path, weights_only=True)
    data["cfg"]["model"].encoder_embed_dim = 64
    torch.save(data, path)
    with pytest.raises(BackboneError) as error:
        load_backbone(str(path))
    message = one_line_error(error)
    assert str(path) in message and "shape" in message


@pytest.mark.parametrize("damage", ["random-bytes", "truncated", "missing"])
def test_corrupt_hf_weights_are_a_one_line_error_naming_the_file(damage, tmp_path):
    from safetensors.torch import save_file

    shutil.copy(HF_CONFIG_8M / "config.json", tmp_path / "config.json")
    weights = tmp_path / "model.safetensors"
    if damage == "random-bytes":
        weights.write_bytes(bytes(range(256)) * 16)
    elif damage == "truncated":
        save_file({"esm.embeddings.word_embeddings.weight": torch.zeros(33, 320)}, str(weights))
        _truncated(weights)
    with pytest.raises(BackboneError) as error:
        load_backbone(str(tmp_path))
    assert str(weights) in one_line_error(error)


def test_unknown_name_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BackboneError) as error:
        load_backbone("esm3_t99_1T")
    message = one_line_error(error)
    assert "esm3_t99_1T" in message and "esm2_t6_8M_UR50D" in message
