"""README.md: the CLI reference matches the real parser, examples parse, and the tutorial runs."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from protadapt.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start: end if end != -1 else None]


def code_blocks(info: str = "bash") -> list[str]:
    return re.findall(rf"^```{info}\n(.*?)^```", README, flags=re.S | re.M)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """'fit' -> parser, 'data info' -> parser: every leaf command of the real CLI."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub)
                found.update({f"{name} {k}": v for k, v in nested.items()} if nested else {name: sub})
    return found


def parser_arguments(parser: argparse.ArgumentParser) -> set[str]:
    names = set()
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names |= set(action.option_strings) if action.option_strings else {action.metavar or action.dest}
    return names


def readme_reference() -> dict[str, set[str]]:
    parts = re.split(r"^#### `protadapt ([a-z ]+)`$", section("CLI reference"), flags=re.M)
    reference = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        leads = [line[2:].split(":", 1)[0] for line in body.splitlines() if line.startswith("- ")]
        reference[name] = {token for lead in leads for token in re.findall(r"`([^`]+)`", lead)}
    return reference


def test_cli_reference_names_every_command_and_option_and_no_others():
    real = {name: parser_arguments(sub) for name, sub in subcommands(build_parser()).items()}
    documented = readme_reference()
    assert sorted(documented) == sorted(real)
    for name in real:
        assert documented[name] == real[name], f"protadapt {name}: README {sorted(documented[name])} vs parser {sorted(real[name])}"


def protadapt_commands(block: str) -> list[list[str]]:
    """Every `protadapt ...` invocation in a shell block (after `&&`, `srun ...`, continuation lines)."""
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        for piece in line.split("&&"):
            words = shlex.split(piece, comments=True)
            if "protadapt" in words:
                commands.append(words[words.index("protadapt") + 1:])
    return commands


def test_every_example_command_parses():
    parser = build_parser()
    examples = [command for block in code_blocks(r"bash(?: tutorial)?") for command in protadapt_commands(block)]
    assert len(examples) >= 10
    for words in examples:
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"README example does not parse: protadapt {' '.join(words)}")


def test_set_up_commands_install_the_cpu_torch_first_and_run_the_ci_test_command():
    setup = section("Set up")
    assert "python -m pytest -q" in setup
    for block in re.findall(r"```bash\n(.*?)```", setup, flags=re.S):
        assert block.index("pip install torch==2.13.0") < block.index("pip install -e")
    assert "--index-url https://download.pytorch.org/whl/cpu" in setup


def tutorial_for_tests(words: list[str]) -> list[str]:
    """The tutorial's commands made quick: tiny backbone, one epoch, two folds."""
    text = " ".join(shlex.quote(w) for w in words)
    text = re.sub(r"--backbone \S+", "--backbone tiny", text)
    text = re.sub(r"optim\.max_epochs=\d+", "optim.max_epochs=1", text)
    text = re.sub(r"--folds \d+", "--folds 2", text)
    words = shlex.split(text)
    if words[0] in ("fit", "cv", "predict"):
        words.append("--quiet")
    if words[0] == "fit":  # README, "Logging": TensorBoard beside the CSV log
        words.append("trainer.logger=csv,tensorboard")
    return words


def test_tutorial_commands_run(tmp_path):
    (blocks,) = [code_blocks("bash tutorial")]
    assert len(blocks) == 1, "the README needs exactly one ```bash tutorial block"
    commands = protadapt_commands(blocks[0])
    assert [c[0] for c in commands] == ["data", "fit", "predict", "evaluate", "cv"]
    (tmp_path / "data").symlink_to(REPO / "data")  # the bundled examples, at the paths the README uses
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for words in commands:
        words = tutorial_for_tests(words)
        result = subprocess.run([sys.executable, "-m", "protadapt.cli", *words], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"protadapt {' '.join(words)}\n{result.stderr[-2000:]}"
        if "--quiet" in words:  # no progress bars, no Lightning banners
            for noise in ("GPU available", "Epoch", "━", "it/s", "%|"):
                assert noise not in result.stderr + result.stdout, f"--quiet still prints {noise!r}"
    assert (tmp_path / "runs" / "bbb-lora" / "metrics.json").exists()
    assert (tmp_path / "runs" / "bbb-lora" / "logs" / "fit" / "metrics.csv").exists()
    assert list((tmp_path / "runs" / "bbb-lora" / "logs" / "fit").glob("events.out.tfevents.*"))
    assert len((tmp_path / "peptides.predictions.csv").read_text().splitlines()) == 11
    assert (tmp_path / "runs" / "cv-bbb-bidora" / "summary.md").exists()


@pytest.mark.slow
def test_first_command_runs_on_a_fresh_clone_with_only_a_package_index(tmp_path, report):
    """README's first command exactly as written: a fresh venv, no PROTADAPT_* variables, no data directory."""
    setup = section("Set up")
    first = re.findall(r"```bash\n(.*?)```", setup, flags=re.S)[0].strip()
    assert "--backbone antiberty" in first and "PROTADAPT" not in first
    clone = tmp_path / "clone"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split("\0")):
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((REPO / name).read_bytes())
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PROTADAPT_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p
                                  and ".ci-venv" not in p)
    env["HOME"] = os.environ.get("HOME", str(tmp_path))  # pip's own configuration and cache stay
    env["PROTADAPT_CACHE_DIR"] = str(tmp_path / "embedding-cache")  # not the user's (the command sets none)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", first], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((clone / "runs" / "quickstart" / "metrics.json").read_text())
    report(f"README first command (AntiBERTy, DoRA, 5 epochs): test accuracy {metrics['test']['accuracy']:.3f}, "
           f"AUROC {metrics['test']['auroc']:.3f}")
    assert '"test"' in result.stdout and "accuracy" in result.stdout  # fit prints the test metrics
    predictions = clone / "peptides.predictions.csv"
    assert len(predictions.read_text().splitlines()) == 11  # header + the 10 example peptides
