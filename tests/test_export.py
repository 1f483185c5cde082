"""`protadapt export`: PEFT adapters and merged HF models predict what protadapt predicts (head included)."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import pandas as pd
import pytest
import torch

from protadapt.adapters import AdapterConfig, merge_adapters, unmerge_adapters
from protadapt.backbones import HF_DERIVED, Architecture, build_random, load_backbone
from protadapt.cli import main
from protadapt.export import ExportError, export_run
from protadapt.export.head import HEAD_SNIPPET
from protadapt.export.hf import fair_esm_to_hf_key, hf_config, hf_state_dict
from protadapt.heads import HeadConfig
from protadapt.inference import predict_scores
from protadapt.model import ProteinPredictor, backbone_from_metadata

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

REPO = Path(__file__).resolve().parents[1]
HF_CONFIG_8M = REPO.parent / "shared" / "models" / "esm2_t6_8M_UR50D_hf_config"
LONGER = ["MSTNPKPQRKTKRNTNRRPQDVKFPGGGQIVGGVYLLPRRGPRLGVRATRKTSERSQPRGRRQPIPKARRPEGRTWAQPGYPWPLYGNEGCGW"
          "AGWLLSPRGSRPSWGPTDPRRRSRNLGKVIDTLTCGFADLMGYIPLVGAPLGGAARALAHGVRVLEDGVNYATGNLPGCSFSIFLLALLSCLTVPASA",
          "MKVLAAGIVALLLAAGCSSSKEETKAPAAE"]
SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "GLFDIVKKVVGALGSL", "ACDEFGHIKLMNPQRSTVWYACDEFGHIKLMN", "KWKLFKKIGAVLKVL"]
LABELS = ["no", "yes"]


def make_run(directory: Path, method: str, backbone: str = "tiny", head: HeadConfig | None = None,
             seed: int = 0, **adapter) -> Path:
    """A run directory whose trainable tensors are random (not at init), saved as `fit` saves it."""
    pretrained = Path(backbone).is_dir()  # an HF directory: its weights; a name: that architecture, random
    predictor = ProteinPredictor(load_backbone(backbone, random_init=not pretrained), head or HeadConfig(),
                                 AdapterConfig(method=method, rank=4, alpha=8.0, **adapter))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in predictor.parameters():
            if parameter.requires_grad:
                noise = torch.randn(parameter.shape, generator=generator)
                parameter.add_(noise * 0.2 * (parameter.abs().mean() + 0.05))
    labels = LABELS if predictor.problem_type == "classification" else []
    predictor.save(directory, {"task": "custom", "labels": labels})
    return directory


def protadapt_scores(run_dir: Path, sequences: list[str] = SEQUENCES) -> torch.Tensor:
    predictor, _ = ProteinPredictor.load(run_dir)
    frame = pd.DataFrame({"id": [f"s{i}" for i in range(len(sequences))], "sequence": sequences})
    return torch.from_numpy(predict_scores(predictor, frame, batch_size=len(sequences)))


def protadapt_head(hidden: torch.Tensor, input_ids: torch.Tensor, export_dir: Path) -> torch.Tensor:
    """The documented snippet, executed exactly as README.md and the export's README.md print it."""
    namespace: dict = {}
    exec(HEAD_SNIPPET, namespace)
    return namespace["protadapt_head"](hidden, input_ids, str(export_dir))


def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(HF_CONFIG_8M)


def base_esm_model(run_dir: Path, backbone: str):
    """transformers' EsmModel holding the weights the run started from (the real HF config for 8M)."""
    metadata = json.loads((run_dir / "adapter.json").read_text())
    fair = backbone_from_metadata(metadata["backbone"])
    if backbone == "tiny":
        config = transformers.EsmConfig(**hf_config(fair.architecture))
    else:
        config = transformers.EsmConfig.from_pretrained(HF_CONFIG_8M)
    model = transformers.EsmModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(hf_state_dict(fair.model.state_dict()), strict=False)
    assert not unexpected and not [k for k in missing if not HF_DERIVED.search(k)], (missing, unexpected)
    return model.eval()


def esm_scores(model, export_dir: Path) -> torch.Tensor:
    batch = tokenizer()(SEQUENCES, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    return protadapt_head(hidden, batch["input_ids"], export_dir)


# ---------------------------------------------------------------- --format peft

PEFT_CASES = {
    "tiny-lora-mean": ("lora", "tiny", HeadConfig(), {}),
    "tiny-dora-bos-hidden-ffn": ("dora", "tiny", HeadConfig(pooling="bos", hidden_dim=16), {"include_ffn": True}),
    "tiny-bidora-regression": ("bidora", "tiny", HeadConfig(problem_type="regression", target_mean=1.13, target_scale=0.6), {"dropout": 0.1}),
    "8M-lora": ("lora", "esm2_t6_8M_UR50D", HeadConfig(hidden_dim=32), {"include_ffn": True}),
    "8M-dora": ("dora", "esm2_t6_8M_UR50D", HeadConfig(), {}),
}


@pytest.mark.parametrize("case", PEFT_CASES, ids=list(PEFT_CASES))
def test_peft_adapter_on_transformers_esm_predicts_what_protadapt_predicts(case, tmp_path):
    method, backbone, head, adapter = PEFT_CASES[case]
    run_dir = make_run(tmp_path / "run", method, backbone, head, **adapter)
    out = export_run(run_dir, tmp_path / "peft", "peft")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "head.json", "head.safetensors"]
    base = base_esm_model(run_dir, backbone)
    unadapted = esm_scores(base, out)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(base, out).eval()
    assert not [w for w in caught if "missing" in str(w.message).lower() or "unexpected" in str(w.message).lower()]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_dora"] == (method != "lora") and config["lora_alpha"] / config["r"] == 2.0
    per_layer = 6 if adapter.get("include_ffn") else 4
    wrapped = [n for n, m in model.named_modules() if n.endswith(".lora_A")]
    assert len(wrapped) == per_layer * base.config.num_hidden_layers
    ours, theirs = protadapt_scores(run_dir), esm_scores(model, out)
    assert theirs.shape == ours.shape == ((4, 2) if head.problem_type == "classification" else (4,))
    assert (theirs - ours).abs().max() <= 1e-5
    assert (unadapted - ours).abs().max() > 1e-3  # the adapter matters: equality is not the base model's


def test_peft_dora_norm_is_protadapts_per_output_feature_row_norm(tmp_path):
    """PEFT's merged DoRA weight equals protadapt's m ⊙ V/‖V‖ with one norm per output row."""
    run_dir = make_run(tmp_path / "run", "dora")
    out = export_run(run_dir, tmp_path / "peft", "peft")
    model = peft.PeftModel.from_pretrained(base_esm_model(run_dir, "tiny"), out).merge_and_unload()
    predictor, _ = ProteinPredictor.load(run_dir)
    layer = predictor.backbone.model.layers[1].self_attn.v_proj
    theirs = model.encoder.layer[1].attention.self.value.weight
    assert (layer.effective_weight() - theirs).abs().max() <= 1e-6
    assert torch.allclose(theirs.norm(dim=1), layer.magnitude, atol=1e-6)  # rows carry the magnitudes


def test_peft_adapter_refuses_esm_for_sequence_classification_rather_than_loading_nothing(tmp_path):
    """Its classifier is not protadapt's head; PEFT finds no target there instead of silently skipping."""
    run_dir = make_run(tmp_path / "run", "lora")
    out = export_run(run_dir, tmp_path / "peft", "peft")
    config = transformers.EsmConfig(**hf_config(load_backbone("tiny").architecture), num_labels=2)
    with pytest.raises(ValueError, match="not found in the base model|Target modules"):
        peft.PeftModel.from_pretrained(transformers.EsmForSequenceClassification(config), out)


@pytest.mark.parametrize("method, fmt, reason", [
    ("wegeft", "peft", "no PEFT equivalent"),
    ("full", "peft", "no adapter layers"),
    ("head", "peft", "no adapter layers"),
    ("prompt", "peft", "after BOS"),
    ("prompt", "merged", "after BOS"),
])
def test_formats_that_cannot_carry_a_method_refuse_it_naming_why(method, fmt, reason, tmp_path):
    run_dir = make_run(tmp_path / "run", method)
    with pytest.raises(ExportError, match=f"method {method}.*{reason}"):
        export_run(run_dir, tmp_path / "out", fmt)
    assert not (tmp_path / "out").exists()


def test_a_non_esm2_backbone_is_refused(tmp_path):
    predictor = ProteinPredictor(build_random(Architecture("mini1b", "esm1b", 1, 32, 4)), HeadConfig(),
                                 AdapterConfig(method="lora", rank=2))
    predictor.save(tmp_path / "run", {"labels": LABELS})
    for fmt in ("peft", "merged"):
        with pytest.raises(ExportError, match="mini1b is not ESM-2"):
            export_run(tmp_path / "run", tmp_path / "out", fmt)


# ---------------------------------------------------------------- --format merged


@pytest.mark.parametrize("method", ["lora", "dora", "wegeft", "full", "head"])
def test_merged_model_loads_in_transformers_and_back_in_protadapt_with_the_same_predictions(method, tmp_path):
    run_dir = make_run(tmp_path / "run", method, head=HeadConfig(hidden_dim=8), include_ffn=True)
    out = export_run(run_dir, tmp_path / "merged", "merged")
    model, info = transformers.EsmModel.from_pretrained(out, add_pooling_layer=False, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    predictor, _ = ProteinPredictor.load(run_dir)
    batch = transformers.AutoTokenizer.from_pretrained(out)(SEQUENCES, return_tensors="pt", padding=True)
    tokens = batch["input_ids"]
    with torch.no_grad():
        merge_adapters(predictor)
        ours = predictor.backbone(tokens)
        unmerge_adapters(predictor)
        theirs = model.eval()(**batch).last_hidden_state
        reloaded = load_backbone(str(out))  # protadapt's --backbone DIR
        assert (theirs - ours).abs().max() <= 1e-5
        assert torch.equal(reloaded(tokens), ours)
        expected = protadapt_scores(run_dir)
        assert (protadapt_head(theirs, tokens, out) - expected).abs().max() <= 1e-5
        assert (protadapt_head(reloaded(tokens), tokens, out) - expected).abs().max() <= 1e-5


def test_merged_8m_config_is_the_hub_config_of_that_architecture(tmp_path):
    run_dir = make_run(tmp_path / "run", "lora", "esm2_t6_8M_UR50D")
    out = export_run(run_dir, tmp_path / "merged", "merged")
    ours, hub = json.loads((out / "config.json").read_text()), json.loads((HF_CONFIG_8M / "config.json").read_text())
    skip = {"architectures", "_name_or_path", "transformers_version", "use_cache"}
    assert {k: v for k, v in hub.items() if k not in skip} == {k: v for k, v in ours.items() if k not in skip}
    assert (out / "vocab.txt").read_text() == (HF_CONFIG_8M / "vocab.txt").read_text()


def test_base_model_is_the_hub_copy_of_a_published_checkpoint_and_none_for_random_weights(tmp_path):
    from types import SimpleNamespace as Backbone

    from protadapt.backbones import ARCHITECTURES
    from protadapt.export.hf import base_model_name

    published, own = ARCHITECTURES["esm2_t6_8M_UR50D"], Architecture("my_esm2", "esm2", 2, 32, 4)
    checkpoint = str(tmp_path / "esm2_t6_8M_UR50D.pt")
    assert base_model_name(Backbone(pretrained=True, source=checkpoint, architecture=published)) == \
        "facebook/esm2_t6_8M_UR50D"
    assert base_model_name(Backbone(pretrained=True, source="my_esm2.pt", architecture=own)) is None
    assert base_model_name(Backbone(pretrained=False, source="random-init:seed=0", architecture=published)) is None


def test_inverse_names_round_trip_through_the_loaders_mapping():
    from protadapt.backbones import hf_to_fair_esm_key

    for key in build_random(Architecture("t", "esm2", 2, 32, 4)).model.state_dict():
        if not key.endswith("inv_freq") and not key.startswith("lm_head."):
            assert hf_to_fair_esm_key("esm." + fair_esm_to_hf_key(key)) == key


# ---------------------------------------------------------------- --format onnx

ONNX_CASES = {
    "tiny-dora-hidden": ("dora", "tiny", HeadConfig(hidden_dim=16), {"include_ffn": True}),
    "tiny-prompt-regression": ("prompt", "tiny", HeadConfig(problem_type="regression", target_mean=1.13, target_scale=0.6), {"num_prompts": 3}),
    "tiny-full-bos": ("full", "tiny", HeadConfig(pooling="bos"), {}),
    "8M-lora": ("lora", "esm2_t6_8M_UR50D", HeadConfig(), {}),
}


@pytest.mark.parametrize("case", ONNX_CASES, ids=list(ONNX_CASES))
def test_onnx_graph_predicts_what_protadapt_predicts_at_other_batch_sizes_and_lengths(case, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    method, backbone, head, adapter = ONNX_CASES[case]
    run_dir = make_run(tmp_path / "run", method, backbone, head, **adapter)
    out = export_run(run_dir, tmp_path / "onnx", "onnx")
    assert json.loads((out / "onnx.json").read_text())["onnxruntime_check"]["max_abs_difference"] <= 1e-5
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    for sequences in (SEQUENCES, LONGER, SEQUENCES[1:2]):  # batch 4 padded, 2 long padded, 1 unpadded
        batch = tokenizer(sequences, return_tensors="np", padding=True)
        (theirs,) = session.run(["scores"], {"tokens": batch["input_ids"]})
        ours = protadapt_scores(run_dir, sequences).numpy()
        assert theirs.shape == ours.shape and abs(theirs - ours).max() <= 1e-5


def test_onnx_export_is_refused_when_onnxruntime_disagrees(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import protadapt.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)  # any difference, even 0, is now too large
    with pytest.raises(ExportError, match="onnxruntime differs from protadapt"):
        export_run(make_run(tmp_path / "run", "lora"), tmp_path / "onnx", "onnx")
    assert not (tmp_path / "onnx").exists()


def test_onnx_without_its_packages_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ExportError, match=r"needs onnxruntime: pip install 'protadapt\[export\]'"):
        export_run(make_run(tmp_path / "run", "lora"), tmp_path / "onnx", "onnx")


# ---------------------------------------------------------------- each export's README.md, run as written


def run_readme_code(export_dir: Path) -> torch.Tensor:
    """Execute the python block of `export_dir/README.md`; return what its last line prints."""
    text = (export_dir / "README.md").read_text()
    code = text.split("```python\n", 1)[1].split("```", 1)[0]
    printed = []
    exec(code, {"print": printed.append})
    return torch.as_tensor(printed[-1])


def test_every_exports_readme_code_predicts_what_protadapt_predicts(tmp_path):
    """The user path: a pretrained HF-directory backbone, then the README code of each export verbatim."""
    base_run = make_run(tmp_path / "base-run", "head")
    base_dir = export_run(base_run, tmp_path / "esm2-base", "merged")  # a head run: the backbone unchanged
    run_dir = make_run(tmp_path / "run", "dora", str(base_dir), HeadConfig(hidden_dim=8))
    expected = protadapt_scores(run_dir, ["MKTAYIAKQR", "GLFDIVKKVV"])
    peft_dir = export_run(run_dir, tmp_path / "peft", "peft")
    config = json.loads((peft_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(base_dir.resolve())
    formats = ["peft", "merged"] + (["onnx"] if importlib.util.find_spec("onnxruntime") else [])
    for fmt in formats:
        out = peft_dir if fmt == "peft" else export_run(run_dir, tmp_path / fmt, fmt)
        assert (run_readme_code(out) - expected).abs().max() <= 1e-5, fmt


# ---------------------------------------------------------------- output directory and CLI


def test_existing_output_is_refused_unless_overwrite_and_nothing_half_written_is_left(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run", "lora")
    out = tmp_path / "out"
    out.mkdir()
    assert (export_run(run_dir, out, "peft") / "adapter_model.safetensors").exists()  # an empty directory is fine
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match="not empty.*--overwrite"):
        export_run(run_dir, out, "peft")
    export_run(run_dir, out, "peft", overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "adapter_model.safetensors").exists()

    import protadapt.export.peft as peft_export

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr(peft_export, "write_head", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run_dir, tmp_path / "new", "peft")
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run_dir, out, "peft", overwrite=True)
    assert not (tmp_path / "new").exists() and (out / "adapter_model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no temporary directories


def test_cli_export_writes_and_refuses_in_one_line(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", "dora")
    assert main(["export", str(run_dir), "--format", "peft", "-o", str(tmp_path / "out")]) == 0
    assert "wrote peft export" in capsys.readouterr().out
    readme = (tmp_path / "out" / "README.md").read_text()
    assert HEAD_SNIPPET in readme and str((tmp_path / "out").resolve()) in readme
    assert "randomly initialised backbone" in readme and 'from_pretrained("BASE_ESM2_MODEL"' in readme
    wegeft = make_run(tmp_path / "wegeft", "wegeft")
    assert main(["export", str(wegeft), "--format", "peft", "-o", str(tmp_path / "w")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("protadapt: error: ") and "wegeft" in error and error.count("\n") == 1


def test_cli_offers_exactly_the_formats_export_has():
    from protadapt.cli import build_parser
    from protadapt.export import writers

    (export,) = [a for a in build_parser()._subparsers._group_actions[0].choices.items() if a[0] == "export"]
    (fmt,) = [a for a in export[1]._actions if a.dest == "format"]
    assert list(fmt.choices) == list(writers())


def test_readme_documents_the_snippet_the_tests_run():
    assert HEAD_SNIPPET in (REPO / "README.md").read_text()
