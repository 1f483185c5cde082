"""`protadapt fit --task bbb --backbone antiberty` with no other flag: the method's default lr, real vs random weights.

Exactly the command a user types (LoRA, early stopping under a 20-epoch ceiling), once per weight state:
the accuracy printed after the run is the defaults' own, not a shortened run's."""

from __future__ import annotations

import json

import pytest
import yaml

from protadapt.cli import main
from protadapt.config import METHOD_DEFAULTS


@pytest.mark.slow
def test_default_fit_on_antiberty_uses_the_method_default_and_prints_real_next_to_random(tmp_path, report):
    accuracy = {}
    for state, flags in (("real", []), ("random", ["--random-init"])):
        run = tmp_path / state
        assert main(["fit", "--task", "bbb", "--backbone", "antiberty", *flags, "--out", str(run)]) == 0
        record = json.loads((run / "run.json").read_text())
        lr = METHOD_DEFAULTS["lora"].lr  # lora: the default method
        assert record["method_defaults"] == {"optim.lr": lr} and record["optim_lr"] == lr
        assert record["pretrained"] is (state == "real")
        assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == lr
        accuracy[state] = json.loads((run / "metrics.json").read_text())["test"]["accuracy"]
    report(f"bbb test accuracy, fit --task bbb --backbone antiberty (no other flag): "
           f"real weights {accuracy['real']:.3f}, random init {accuracy['random']:.3f} (38 rows)")
