"""The model behind the service: loaded once, a lock around inference, a card that describes it."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from protadapt.inference import pick_device, predict_scores
from protadapt.model import ProteinPredictor
from protadapt.serve.parsing import RequestError, parse_body
from protadapt.uncertainty import annotated_predictions, scaled_scores


@dataclass(frozen=True)
class ServeSettings:
    """Where to listen, what one request may hold, and how to run the model."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_sequences: int = 1000  # per request; more is a 413
    max_bytes: int = 1_048_576  # request body size; more is a 413
    batch_size: int = 32
    device: str = "auto"
    precision: str = "32"  # autocast dtype of the forward: 32, bf16 or fp16

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is not in 0-65535")
        for name in ("max_sequences", "max_bytes", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")


class ModelService:
    """One predictor shared by every request; `predict_scores` merges adapters in place, hence the lock."""

    def __init__(self, predictor: ProteinPredictor, metadata: dict, run_dir: Path, settings: ServeSettings):
        self.predictor = predictor
        self.metadata = metadata
        self.run_dir = run_dir
        self.settings = settings
        self.card = model_card(run_dir, metadata, settings, predictor.backbone.max_residues)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, run_dir: str | Path, settings: ServeSettings | None = None) -> "ModelService":
        settings = settings or ServeSettings()
        run_dir = Path(run_dir)
        predictor, metadata = ProteinPredictor.load(run_dir)
        predictor.to(pick_device(settings.device))
        return cls(predictor, metadata, run_dir, settings)

    def predict_body(self, body: bytes, content_type: str) -> dict:
        """Request body → validated records → one JSON-ready row per record."""
        frame = parse_body(body, content_type, self.predictor.backbone.max_residues)
        if len(frame) > self.settings.max_sequences:
            raise RequestError(413, f"{len(frame)} sequences in one request; the limit is "
                                    f"{self.settings.max_sequences}, so split the input")
        table = self.predict_frame(frame)
        return {"n": len(table), "columns": list(table.columns),
                "predictions": json.loads(table.to_json(orient="records", double_precision=6))}

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The table `protadapt predict RUN_DIR` writes: scores after the run's temperature, sets/intervals, identity."""
        with self._lock:
            scores = predict_scores(self.predictor, frame, self.settings.batch_size,
                                    precision=self.settings.precision)
        scores = {self.run_dir.name: scaled_scores(self.run_dir, scores)}
        return annotated_predictions(self.predictor, [self.run_dir], self.run_dir, frame, scores)


def model_card(run_dir: Path, metadata: dict, settings: ServeSettings, max_length: int) -> dict:
    """What a user of the service should know about the model: task, backbone, method, metrics, date."""
    backbone = metadata.get("backbone", {})
    adapter = metadata.get("adapter", {})
    return {
        "run": run_dir.resolve().name,
        "task": metadata.get("task"),
        "problem_type": metadata.get("problem_type"),
        "labels": metadata.get("labels"),
        "backbone": backbone.get("name"),
        "pretrained": backbone.get("pretrained"),
        "method": adapter.get("method"),
        "rank": adapter.get("rank") if adapter.get("method") not in ("full", "head", "prompt") else None,
        "trained": training_date(run_dir),
        "metrics": _read_json(run_dir / "metrics.json"),
        "limits": {"max_sequences": settings.max_sequences, "max_bytes": settings.max_bytes,
                   "max_length": max_length},
    }


def training_date(run_dir: Path) -> str:
    """run.json's date when it records one, else when the weights were written (UTC, ISO 8601)."""
    run = _read_json(run_dir / "run.json")
    for key in ("finished", "date", "trained"):
        if run.get(key):
            return str(run[key])
    written = (run_dir / "adapter.safetensors").stat().st_mtime
    return datetime.fromtimestamp(written, timezone.utc).isoformat(timespec="seconds")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
