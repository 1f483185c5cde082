"""ESM C through transformers' `EsmcModel`: the real configs, parameter counts on the meta device,
our forward equal to `EsmcModel` on the same weights, and an HF directory written and read back."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import transformers

from protadapt.adapters import AdapterConfig, expected_trainable
from protadapt.adapters.full import backbone_parameter_count
from protadapt.backbones import ARCHITECTURES, BackboneError, build_random, esmc, load_backbone, resolve_architecture
from protadapt.cli import main
from protadapt.data.tasks import get_task

TINY = esmc.esmc_architecture("esmc_tiny", esmc.esmc_config_dict(3, 64, 4, 192))


def esmc_parameters(layers: int, width: int, ffn: int, vocab: int = 64) -> int:
    """By hand: q/k/v/o (no bias), QK-norm weights, SwiGLU (no bias), two biased LayerNorms per layer;
    token embedding and the bias-free final norm."""
    per_layer = 4 * width * width + 2 * width + 3 * width * ffn + 2 * 2 * width
    return layers * per_layer + vocab * width + width


def tokens_for(tokenizer, sequences: list[str], width: int) -> torch.Tensor:
    batch = torch.full((len(sequences), width), tokenizer.padding_idx)
    for row, sequence in enumerate(sequences):
        batch[row, : len(sequence) + 2] = torch.tensor([tokenizer.cls_idx, *tokenizer.encode(sequence), tokenizer.eos_idx])
    return batch


@pytest.mark.parametrize("name, shape", [("esmc_300m", (30, 960, 15, 2560)), ("esmc_600m", (36, 1152, 18, 3072)),
                                         ("esmc_6b", (80, 2560, 40, 6912))])
def test_real_configs_and_parameter_counts_on_the_meta_device(name, shape):
    arch = ARCHITECTURES[name]
    assert (arch.num_layers, arch.embed_dim, arch.attention_heads, arch.ffn_dim) == shape
    count = backbone_parameter_count(arch)
    assert count == esmc_parameters(shape[0], shape[1], shape[3])
    print(f"{name}: {count:,} parameters")
    assert {"esmc_600m": 573_632_640, "esmc_6b": 6_345_280_000}.get(name, count) == count
    lora = expected_trainable(arch, AdapterConfig(method="lora", rank=8))
    assert lora == shape[0] * 4 * 8 * (shape[1] + shape[1])  # q/k/v/o are all E × E
    ffn = expected_trainable(arch, AdapterConfig(method="lora", rank=8, include_ffn=True)) - lora
    assert ffn == shape[0] * 3 * 8 * (shape[1] + shape[3])


def test_tokenizer_matches_transformers_esmc_tokenizer():
    backbone = build_random(TINY)
    reference = transformers.EsmcTokenizer()
    sequence = "MKTAYIAKQRQISFVKSHFSRQ"
    ours = [backbone.tokenizer.cls_idx, *backbone.tokenizer.encode(sequence), backbone.tokenizer.eos_idx]
    assert ours == reference(sequence)["input_ids"]
    assert (backbone.tokenizer.padding_idx, backbone.tokenizer.mask_idx) == (reference.pad_token_id, reference.mask_token_id)


def test_hidden_states_equal_esmcmodel_on_the_same_weights():
    backbone = build_random(TINY).eval()
    reference = transformers.EsmcModel(transformers.EsmcConfig.from_dict(TINY.hf_config)).eval()
    reference.load_state_dict(backbone.model.state_dict())
    tokens = tokens_for(backbone.tokenizer, ["MKTAYIAKQR", "GGSW", "ACDEFGHIKLMNPQ"], 16)
    with torch.no_grad():
        ours = backbone(tokens)
        theirs = reference(input_ids=tokens, attention_mask=(tokens != backbone.tokenizer.padding_idx).long()).last_hidden_state
    assert ours.shape == (3, 16, 64)
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_random_init_is_seeded():
    a, b, c = build_random(TINY, seed=0), build_random(TINY, seed=0), build_random(TINY, seed=1)
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key]) and not torch.equal(a.state_dict()[key], c.state_dict()[key])


@pytest.mark.parametrize("task_model", [False, True], ids=["EsmcModel", "EsmcForMaskedLM"])
def test_hf_directory_written_by_transformers_loads_back(task_model, tmp_path):
    config = transformers.EsmcConfig.from_dict(TINY.hf_config)
    torch.manual_seed(3)
    model = (transformers.EsmcForMaskedLM if task_model else transformers.EsmcModel)(config).eval()
    model.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    assert backbone.pretrained and backbone.architecture.family == "esmc" and backbone.architecture.num_layers == 3
    encoder = model.esmc if task_model else model
    tokens = tokens_for(backbone.tokenizer, ["MKTAYIAK", "GGSWQ"], 10)
    with torch.no_grad():
        expected = encoder(input_ids=tokens, attention_mask=(tokens != 1).long()).last_hidden_state
        assert torch.allclose(backbone.eval()(tokens), expected, atol=1e-6, rtol=0)
    assert resolve_architecture(str(tmp_path)).embed_dim == 64
    random = load_backbone(str(tmp_path), random_init=True)
    assert not random.pretrained and random.architecture.ffn_dim == 192


def test_damaged_directory_is_a_one_line_error(tmp_path):
    transformers.EsmcModel(transformers.EsmcConfig.from_dict(TINY.hf_config)).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(BackboneError) as error:
        load_backbone(str(tmp_path))
    assert "model.safetensors" in str(error.value) and "\n" not in str(error.value)


def test_missing_named_weights_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTADAPT_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BackboneError) as error:
        load_backbone("esmc_300m")
    message = str(error.value)
    assert "\n" not in message and "biohub/ESMC-300M" in message and str(tmp_path / "esmc_300m") in message


def test_cli_fit_predict_reload_bidora_on_an_esmc_config_directory(tmp_path, capsys):
    """The `esmc_300m --random-init` path at a tiny size: a config-only directory, random init."""
    config_dir = tmp_path / "esmc_tiny"
    transformers.EsmcConfig.from_dict(TINY.hf_config).save_pretrained(config_dir)
    run_dir = tmp_path / "run"
    assert main(["fit", "--task", "bbb", "--backbone", str(config_dir), "--random-init", "--method", "bidora", "--quiet",
                 "optim.max_epochs=1", "data.batch_size=16", "--out", str(run_dir)]) == 0, capsys.readouterr().err
    saved = pd.read_csv(run_dir / "predictions.csv")
    test = get_task("bbb").load().query("split == 'test'").reset_index(drop=True)
    source = tmp_path / "test.fasta"
    source.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in test.itertuples()))
    assert main(["predict", str(run_dir), str(source), "--out", str(tmp_path / "out.csv")]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out.csv"), saved.drop(columns="label"))
