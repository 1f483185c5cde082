"""Published raw files → a task's canonical table (id, sequence, label, split + extras).

Each converter takes the folder the raw files were downloaded to and returns the frame that is
written as ``<task>.csv``; the result equals the copies under the shared data directory (tested).
Pickles are read by `safe_pickle`, which runs no pickle code.
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

import pandas as pd

from protadapt.data.errors import DataError
from protadapt.data.safe_pickle import load_frame, load_plain

HOTPROTEIN_FOLDS = 10
HOTPROTEIN_TEST_FOLD = 1  # the split HotProtein's own scripts/s2c2_classification.sh uses
MIC_DECIMALS = 6
_ORGANISM = re.compile(r"\sOS=(.+?)(?:\s[A-Z]{2}=|$)")


def convert_bbb(raw_dir: Path) -> pd.DataFrame:
    """BBPpred xlsx pair (sequence, label columns) → ids bbp_<split>_<row>."""
    parts = []
    for split, name in (("train", "BBP_train.xlsx"), ("test", "BBP_test.xlsx")):
        sheet = pd.read_excel(raw_dir / name, engine="openpyxl")
        parts.append(pd.DataFrame({"sequence": sheet["sequence"].astype(str), "label": sheet["label"].astype(int),
                                   "split": split}))
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(0, "id", [f"bbp_{split}_{row:03d}" for row, split in enumerate(frame["split"])])
    return frame


def convert_thermostability(raw_dir: Path) -> pd.DataFrame:
    """HotProtein HP-S2C2: FASTA tarball + 10 CV split pickles + growth temperatures, sorted by id.

    ``fold`` is the CV split whose test set holds the protein; ``split`` is test for fold 1.
    ``organism`` is the UniProt ``OS=`` field of the header (for grouping by species). The files
    are in ``raw_dir/s2c2/``, as in the source repository.
    """
    raw_dir = raw_dir / "s2c2"
    proteins = _read_fasta_tarball(raw_dir / "d1_fasta_clean.tar")
    labels, folds = {}, {}
    for fold in range(HOTPROTEIN_FOLDS):
        name = f"d1_{fold}_classification.pkl"
        split = load_plain((raw_dir / name).read_bytes(), name)
        for protein, label in zip(split["test_names"], split["test_labels"]):
            labels[protein], folds[protein] = int(label), fold
    temperatures = load_plain((raw_dir / "d1_1.pkl").read_bytes(), "d1_1.pkl")
    growth = dict(zip(temperatures["train_names"] + temperatures["test_names"],
                      temperatures["train_labels"] + temperatures["test_labels"]))
    missing = sorted(set(folds) - set(proteins))
    if missing:
        raise DataError(f"d1_fasta_clean.tar: no sequence for {missing[0]} ({len(missing)} in all); download it again")
    ids = sorted(folds)
    return pd.DataFrame({
        "id": ids, "sequence": [proteins[i][1] for i in ids], "label": [labels[i] for i in ids],
        "growth_temp": [float(growth[i]) for i in ids], "fold": [folds[i] for i in ids],
        "split": ["test" if folds[i] == HOTPROTEIN_TEST_FOLD else "train" for i in ids],
        "organism": [proteins[i][0] for i in ids],
    })


def convert_mic(raw_dir: Path) -> pd.DataFrame:
    """GRAMPA E. coli frames → ids grampa_ecoli_<authors' row>, label log10 MIC (µM), c_amidated 0/1.

    The frames average ``has_cterminal_amidation`` over measurements; c_amidated is 1 where every
    measurement was of the amidated peptide (the README's subset: 1122 train / 176 test).
    """
    parts = []
    for split, name in (("train", "ecoli_train_with_c_df.pkl"), ("test", "ecoli_test_df.pkl")):
        frame = load_frame((raw_dir / name).read_bytes(), name)
        parts.append(pd.DataFrame({
            "id": [f"grampa_ecoli_{row}" for row in frame["index"]], "sequence": frame["sequence"].astype(str),
            "label": frame["value"].astype(float).round(MIC_DECIMALS),
            "c_amidated": (frame["has_cterminal_amidation"] == 1).astype(int), "split": split,
        }))
    return pd.concat(parts, ignore_index=True)


def _read_fasta_tarball(path: Path) -> dict[str, tuple[str, str]]:
    """UniProt id → (organism, sequence) for every ``<id>.fasta`` in the (gzip) tar; nothing is extracted."""
    proteins = {}
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for member in archive:
                if not (member.isfile() and member.name.endswith(".fasta")):
                    continue
                text = archive.extractfile(member).read().decode("ascii")
                header, *lines = text.strip().splitlines()
                match = _ORGANISM.search(header)
                proteins[Path(member.name).stem] = (match.group(1).strip() if match else "",
                                                    "".join(line.strip() for line in lines))
    except (tarfile.TarError, EOFError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path.name}: cannot read the FASTA archive ({error}); download it again") from None
    return proteins
