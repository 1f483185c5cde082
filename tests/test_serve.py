"""`protadapt serve`: HTTP answers for good and bad requests, limits, the card, and concurrent requests.

The runs are real 1-epoch fits of the tiny backbone; the service must predict exactly what
`protadapt predict` writes for the same run and sequences.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch

import protadapt.training.run as run_module
from protadapt.cli import main
from protadapt.data.tasks import get_task

fastapi = pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'protadapt[serve]'")
uvicorn = pytest.importorskip("uvicorn", reason="the serve extra is not installed: pip install 'protadapt[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from protadapt.serve import ModelService, ServeSettings  # noqa: E402
from protadapt.serve.app import create_app  # noqa: E402

QUICK = ["--backbone", "tiny", "--random-init", "--quiet", "optim.max_epochs=1", "data.batch_size=16"]
FASTA = "text/x-fasta"


# ---------------------------------------------------------------- helpers shared with test_browser.py


def fit_run(run_dir: Path, *args: str) -> Path:
    """A real 1-epoch tiny fit (figures off: drawing them costs more than the training)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "plot_predictions", lambda *a, **k: None)
        patch.setattr(run_module, "plot_training_curves", lambda *a, **k: None)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            assert main(["fit", *args, *QUICK, "--out", str(run_dir)]) == 0
        finally:
            torch.set_num_threads(threads)
    return run_dir


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_server(service: ModelService):
    """A real uvicorn on 127.0.0.1 in a background thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def bbb_test_rows(count: int) -> pd.DataFrame:
    frame = get_task("bbb").load()
    return frame[frame["split"] == "test"].head(count).reset_index(drop=True)


def fasta_text(frame: pd.DataFrame) -> str:
    return "".join(f">{row.id}\n{row.sequence}\n" for row in frame.itertuples())


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fit_run(tmp_path_factory.mktemp("serve_run"), "--task", "bbb", "--method", "lora")


@pytest.fixture(scope="module")
def service(run_dir) -> ModelService:
    return ModelService.load(run_dir)


@pytest.fixture(scope="module")
def client(service) -> TestClient:
    return TestClient(create_app(service))


# ---------------------------------------------------------------- good requests


def test_fasta_predictions_equal_protadapt_predict(run_dir, client, tmp_path, capsys):
    rows = bbb_test_rows(12)
    fasta = tmp_path / "query.fasta"
    fasta.write_text(fasta_text(rows))
    assert main(["predict", str(run_dir), str(fasta), "-o", str(tmp_path / "out.csv"), "--quiet"]) == 0
    expected = pd.read_csv(tmp_path / "out.csv")

    response = client.post("/predict", content=fasta.read_text(), headers={"content-type": FASTA})
    assert response.status_code == 200
    body = response.json()
    assert body["n"] == 12 and body["columns"] == list(expected.columns) == [
        "id", "prediction", "prob_0", "prob_1", "nearest_train_identity", "in_domain"]
    served = pd.DataFrame(body["predictions"], columns=body["columns"])
    np.testing.assert_allclose(served["nearest_train_identity"], expected["nearest_train_identity"])
    assert served["in_domain"].tolist() == expected["in_domain"].tolist()
    assert served["id"].tolist() == rows["id"].tolist()
    assert served["prediction"].tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(served[["prob_0", "prob_1"]], expected[["prob_0", "prob_1"]], atol=1e-6)
    np.testing.assert_allclose(served["prob_0"] + served["prob_1"], 1.0, atol=2e-6)


def test_json_shapes_give_the_fasta_answer(client):
    rows = bbb_test_rows(3)
    by_fasta = client.post("/predict", content=fasta_text(rows), headers={"content-type": FASTA}).json()
    records = [{"id": row.id, "sequence": row.sequence} for row in rows.itertuples()]
    by_records = client.post("/predict", json={"sequences": records}).json()
    by_strings = client.post("/predict", json=rows["sequence"].tolist()).json()
    assert by_records == by_fasta
    assert [r["id"] for r in by_strings["predictions"]] == ["seq1", "seq2", "seq3"]
    assert [r["prob_1"] for r in by_strings["predictions"]] == [r["prob_1"] for r in by_fasta["predictions"]]
    numbered = client.post("/predict", json=[{"id": 7, "sequence": "KWKLFKK"}]).json()
    assert numbered["predictions"][0]["id"] == "7"


def test_curl_default_content_type_is_sniffed(client):
    """`curl --data-binary @x.fasta` sends form encoding: a '>' body is FASTA, a '[' body JSON."""
    form = {"content-type": "application/x-www-form-urlencoded"}
    fasta = client.post("/predict", content=">a\nKWKLFKK\n", headers=form)
    as_json = client.post("/predict", content='["KWKLFKK"]', headers=form)
    assert fasta.status_code == as_json.status_code == 200
    assert fasta.json()["predictions"][0]["prob_1"] == as_json.json()["predictions"][0]["prob_1"]
    table = client.post("/predict", content="id,sequence\nq,KWKLFKK\n", headers={"content-type": "text/csv"})
    assert table.json()["predictions"][0] == {**fasta.json()["predictions"][0], "id": "q"}


def test_regression_run_returns_values(tmp_path_factory):
    mic = get_task("mic").load()
    rows = mic[mic["split"] == "train"].sample(80, random_state=0)
    folder = tmp_path_factory.mktemp("mic")
    rows[["id", "sequence", "label"]].to_csv(folder / "train.csv", index=False)
    run = fit_run(folder / "run", "--task", "custom", "--method", "lora", f"data.train_file={folder / 'train.csv'}",
                  "data.calibration_fraction=0.25")
    client = TestClient(create_app(ModelService.load(run)))
    body = client.post("/predict", json=["KWKLFKKIGAVLKVL", "GIGKFLHSAKKFGKAFVGEIMNS"]).json()
    assert body["columns"] == ["id", "prediction", "lower_0.1", "upper_0.1", "nearest_train_identity", "in_domain"]
    values = [row["prediction"] for row in body["predictions"]]
    assert all(isinstance(v, float) and np.isfinite(v) for v in values) and values[0] != values[1]
    assert all(row["lower_0.1"] < row["prediction"] < row["upper_0.1"] for row in body["predictions"])
    assert client.get("/model").json()["problem_type"] == "regression"


def test_health_model_card_and_page(run_dir, client):
    assert client.get("/health").json() == {"status": "ok"}
    card = client.get("/model").json()
    assert (card["task"], card["method"], card["backbone"], card["problem_type"]) == ("bbb", "lora", "tiny",
                                                                                       "classification")
    assert card["labels"] == [0, 1] and card["rank"] == 8 and card["pretrained"] is False
    assert card["metrics"] == json.loads((run_dir / "metrics.json").read_text())
    assert abs(datetime.fromisoformat(card["trained"]).timestamp() - (run_dir / "adapter.safetensors").stat().st_mtime) < 1
    assert card["limits"] == {"max_sequences": 1000, "max_bytes": 1_048_576, "max_length": 1022}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for element in ('id="fasta"', 'id="file"', 'id="results"', 'id="download"', 'id="metrics"'):
        assert element in page.text
    assert "http://" not in page.text and "https://" not in page.text and "src=" not in page.text  # no CDN


# ---------------------------------------------------------------- bad requests


@pytest.mark.parametrize("content, content_type, status, words", [
    (">a\nKWKL\n>b\nKWJL\n", FASTA, 422, "request.fasta line 3 (id 'b'): character 'J' at position 3"),
    ('[{"id": "x", "sequence": "GG"}, {"id": "y", "sequence": "G1G"}]', "application/json", 422,
     "sequences[1] (id 'y'): character '1'"),
    ('{"sequences": [{"id": "x"}]}', "application/json", 422, "sequences[0]: expected a string or"),
    ('[{"id": "x", "sequence": "GG", "label": 1}]', "application/json", 422, "sequences[0]: unknown key(s) 'label'"),
    ('[{"id": "a", "sequence": "GG"}, {"id": "a", "sequence": "KK"}]', "application/json", 422, "id 'a'"),
    (">a\n" + "A" * 1100 + "\n", FASTA, 422, "(id 'a'): sequence has 1100 residues, more than max_length=1022"),
    ('{"sequences": [1', "application/json", 400, "request body is not valid JSON"),
    ('{"seqs": []}', "application/json", 400, "unknown key(s) 'seqs'"),
    ("[]", "application/json", 422, "sequences: no records found"),
    ("  \n", FASTA, 400, "empty request body"),
    ("KWKLFKK\n", FASTA, 422, "request.fasta line 1: text before the first '>' header"),
    (b">a\n\xff\xfeKK\n", FASTA, 422, "not UTF-8"),
])
def test_bad_requests_are_one_line_json_errors(client, content, content_type, status, words):
    response = client.post("/predict", content=content, headers={"content-type": content_type})
    assert response.status_code == status
    body = response.json()
    assert list(body) == ["error"] and words in body["error"]
    assert "\n" not in body["error"] and "Traceback" not in body["error"]


def test_limits_answer_413(service):
    small = ModelService(service.predictor, service.metadata, service.run_dir,
                         ServeSettings(max_sequences=2, max_bytes=64))
    client = TestClient(create_app(small))
    three = client.post("/predict", json=["KK", "GG", "WW"])
    assert three.status_code == 413 and three.json() == {
        "error": "3 sequences in one request; the limit is 2, so split the input"}
    large = client.post("/predict", content=">a\n" + "K" * 70 + "\n", headers={"content-type": FASTA})
    assert large.status_code == 413 and "over 64 bytes" in large.json()["error"]
    chunked = client.post("/predict", content=iter([b">a\n", b"K" * 40, b"K" * 40]), headers={"content-type": FASTA})
    assert "content-length" not in chunked.request.headers  # streamed: refused by the byte count, not the header
    assert chunked.status_code == 413 and "over 64 bytes" in chunked.json()["error"]
    assert client.post("/predict", json=["KK", "GG"]).status_code == 200


def test_unexpected_error_is_500_json_without_traceback(service, monkeypatch):
    client = TestClient(create_app(service), raise_server_exceptions=False)
    monkeypatch.setattr(service, "predict_frame", lambda frame: (_ for _ in ()).throw(RuntimeError("boom\ndetail")))
    response = client.post("/predict", json=["KK"])
    assert response.status_code == 500 and response.json() == {"error": "internal error: boom"}


# ---------------------------------------------------------------- a real server, concurrent requests


def test_concurrent_requests_on_a_real_server_match_sequential(service, client):
    rows = bbb_test_rows(16)
    queries = [fasta_text(rows.iloc[i:i + 4 + i % 3]) for i in range(12)]  # different lengths and batches
    expected = [client.post("/predict", content=q, headers={"content-type": FASTA}).json() for q in queries]
    with live_server(service) as url:
        def ask(query: str) -> dict:
            response = httpx.post(f"{url}/predict", content=query, headers={"content-type": FASTA}, timeout=60)
            assert response.status_code == 200, response.text
            return response.json()

        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(pool.map(ask, queries))
        assert httpx.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
    assert answers == expected


# ---------------------------------------------------------------- the command


def test_cli_serve_loads_the_run_and_listens_where_asked(run_dir, monkeypatch, capsys):
    calls = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.update(app=app, **options))
    assert main(["serve", str(run_dir), "--port", "8765", "--max-sequences", "5"]) == 0
    assert (calls["host"], calls["port"]) == ("127.0.0.1", 8765)
    card = TestClient(calls["app"]).get("/model").json()
    assert card["limits"]["max_sequences"] == 5 and card["task"] == "bbb"


def test_cli_serve_errors_are_one_line(run_dir, tmp_path, monkeypatch, capsys):
    assert main(["serve", str(run_dir), "--max-bytes", "0"]) == 1
    assert capsys.readouterr().err == "protadapt: error: max_bytes must be at least 1, not 0\n"
    assert main(["serve", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if the extra were not installed
    assert main(["serve", str(run_dir)]) == 1
    assert capsys.readouterr().err == ("protadapt: error: protadapt serve needs fastapi; "
                                       "install it with: pip install 'protadapt[serve]'\n")
