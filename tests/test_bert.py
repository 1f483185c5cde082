"""BERT-family backbones from local HF directories (`config.json`, weights, `vocab.txt`), and the
`methods` command's counts for every family."""

from __future__ import annotations

import pytest
import torch
import transformers

from protadapt.backbones import BackboneError, bert, load_backbone
from protadapt.cli import main

VOCAB = bert.VOCABULARIES["prot_bert"].split()  # ProtBert's 30 tokens: residues in its own order


def write_bert_directory(directory, task_model: bool = True) -> transformers.PreTrainedModel:
    config = transformers.BertConfig(vocab_size=len(VOCAB), hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=96, max_position_embeddings=40)
    torch.manual_seed(0)
    model = (transformers.BertForMaskedLM(config) if task_model else transformers.BertModel(config)).eval()
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return model


@pytest.mark.parametrize("task_model", [True, False], ids=["BertForMaskedLM", "BertModel"])
def test_local_directory_loads_to_bertmodel_states(task_model, tmp_path):
    model = write_bert_directory(tmp_path, task_model)
    backbone = load_backbone(str(tmp_path)).eval()
    t = backbone.tokenizer
    assert (t.padding_idx, t.cls_idx, t.eos_idx, t.get_idx("L")) == (0, 2, 3, 5)  # ids from vocab.txt
    tokens = torch.tensor([[t.cls_idx, *t.encode("MKTAYIAKQR"), t.eos_idx], [t.cls_idx, *t.encode("GGSW"), t.eos_idx] + [0] * 6])
    encoder = model.bert if task_model else model
    with torch.no_grad():
        expected = encoder(input_ids=tokens, attention_mask=(tokens != 0).long()).last_hidden_state
        assert torch.allclose(backbone(tokens), expected, atol=1e-6, rtol=0)
    assert backbone.max_residues == 38
    reference = transformers.BertTokenizer(str(tmp_path / "vocab.txt"), do_lower_case=False)
    assert reference(" ".join("MKTAYIAKQR"))["input_ids"] == tokens[0].tolist()  # ProtBert's spaced input


def test_vocabulary_must_fit_the_config(tmp_path):
    write_bert_directory(tmp_path)
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB[:-1]) + "\n")
    with pytest.raises(BackboneError) as error:
        load_backbone(str(tmp_path))
    assert "vocab.txt has 29 tokens" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("name, lora, full", [("esmc_600m", 36 * 4 * 8 * 2304, 573_632_640),
                                              ("antiberty", 8 * 4 * 8 * 1024, 25_496_064),
                                              ("prot_bert", 30 * 4 * 8 * 2048, 418_881_536)])
def test_methods_command_counts_every_family(name, lora, full, capsys):
    assert main(["methods", "--backbone", name]) == 0
    rows = dict(line.split()[:2] for line in capsys.readouterr().out.splitlines()[1:])
    assert rows["lora"] == f"{lora:,}" and rows["full"] == f"{full:,}" and set(rows) >= {"dora", "wegeft", "prompt"}


def test_doctor_lists_where_esmc_and_bert_weights_are_found(tmp_path, monkeypatch):
    from protadapt import doctor

    (tmp_path / "esmc_600m").mkdir()
    monkeypatch.setenv("PROTADAPT_MODEL_DIR", str(tmp_path))
    row = dict(doctor.hf_weights())["ESM C / BERT weights"]
    assert f"esmc_600m -> {tmp_path / 'esmc_600m'}" in row
    assert f"antiberty -> {bert.antiberty_directory()}" in row and "esmc_300m" not in row
