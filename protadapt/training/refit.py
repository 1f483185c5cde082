"""Equal terms for every method: after early stopping picks the epoch count on inner_val, refit
from the initial weights on all training rows for that many epochs (`optim.refit`).

BiDoRA's own retraining (`bilevel.retrain`) already trains on all rows, so it needs no refit.
Both paths report the rows the final weights trained on (`train_rows` in metrics.json), which
`compare` shows for every method.
"""

from __future__ import annotations

import pandas as pd
import torch

from protadapt.model import ProteinPredictor


def refits(optim_refit: bool | None, command_default: bool = False) -> bool:
    """`optim.refit`: true / false as set; unset (None) is `fit`'s no and `compare`'s yes."""
    return command_default if optim_refit is None else bool(optim_refit)


def initial_state(predictor: ProteinPredictor) -> dict[str, torch.Tensor]:
    """A CPU copy of everything the method trains (the whole backbone for `full`), before training."""
    return {key: value.detach().to("cpu", copy=True) for key, value in predictor.trainable_state().items()}


@torch.no_grad()
def restore_initial(predictor: ProteinPredictor, state: dict[str, torch.Tensor]) -> None:
    """Put the initial weights back in place (same tensors, same devices), bit for bit."""
    missing = set(state) - set(predictor.state_dict())
    if missing:
        raise RuntimeError(f"cannot restore the initial weights: {sorted(missing)[:3]} not in the model")
    predictor.load_state_dict(state, strict=False)


def standardise_on(predictor: ProteinPredictor, rows: pd.DataFrame) -> None:
    """Regression targets standardised on exactly the rows the next phase trains on."""
    predictor.head.standardise_targets(rows["label"].to_numpy())
