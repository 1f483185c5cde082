"""Per-method optimiser defaults: an unset optim.lr is the method's own, an explicit one wins, run.json says which."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
import yaml

import protadapt.training.run as run_module
from protadapt.cli import main
from protadapt.config import METHOD_DEFAULTS, MethodDefaults, load_config, method_defaults, with_method_defaults
from protadapt.data.io import DataError


def test_unset_lr_takes_the_methods_default_and_an_explicit_one_wins():
    full, _ = with_method_defaults(load_config(None, ["adapter.method=full"]))
    lora, defaulted = with_method_defaults(load_config(None, ["adapter.method=lora"]))
    assert full.optim.lr == METHOD_DEFAULTS["full"].lr <= 1e-4 < METHOD_DEFAULTS["lora"].lr == lora.optim.lr
    assert defaulted == {"optim.lr": METHOD_DEFAULTS["lora"].lr}
    explicit, defaulted = with_method_defaults(load_config(None, ["adapter.method=full", "optim.lr=3e-3"]))
    assert explicit.optim.lr == 3e-3 and defaulted == {}
    assert method_defaults("head") == MethodDefaults() and load_config().optim.lr is None


@pytest.mark.parametrize("overrides, lr, defaulted", [((), METHOD_DEFAULTS["full"].lr, True),
                                                       (("optim.lr=0.02",), 0.02, False)])
def test_fit_trains_with_the_default_and_records_it(overrides, lr, defaulted, tmp_path, monkeypatch):
    used = []
    adamw = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, lr, **kw: used.append(lr) or adamw(params, lr=lr, **kw))
    config = load_config(None, ["backbone=tiny", "quiet=true", "adapter.method=full", "optim.max_epochs=1",
                                "trainer.logger=none", *overrides])
    run_module.fit(config, tmp_path / "run")
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert used == [lr] and run["optim_lr"] == lr
    assert run["method_defaults"] == ({"optim.lr": lr} if defaulted else {})
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["optim"]["lr"] == lr


def test_methods_command_shows_each_default_lr(capsys):
    assert main(["methods", "--backbone", "tiny"]) == 0
    rows = {line.split()[0]: line.split()[2:] for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["full"] == [f"{METHOD_DEFAULTS['full'].lr:g}"] and rows["prompt"] == [f"{METHOD_DEFAULTS['prompt'].lr:g}"]
    assert rows["probe"] == ["–", "(own", "fit)"]


def test_sequences_longer_than_the_backbone_are_an_error_or_truncated_and_counted(caplog):
    rows = pd.DataFrame({"id": ["a", "b", "c"], "sequence": ["ACDE", "A" * 12, "C" * 11], "label": [0, 1, 0]})
    with pytest.raises(DataError) as error:
        run_module.limit_lengths(rows, 10, False, "bbb training")
    assert str(error.value) == ("bbb training record 'b' has 12 residues, more than the backbone's 10 (2 such records); "
                                "pass data.truncate=true to keep the first 10")
    cut = run_module.limit_lengths(rows, 10, True, "bbb training")
    assert cut["sequence"].tolist() == ["ACDE", "A" * 10, "C" * 10] and rows["sequence"][1] == "A" * 12
    assert "truncated 2 sequence(s) longer than 10" in caplog.text
