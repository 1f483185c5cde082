"""Backbone weight downloads through a local HTTP server: checked when a digest is known, logged when not."""

import hashlib
import http.server
import logging
import threading

import pytest

from protadapt.backbones.weights import download


@pytest.fixture
def server(tmp_path):
    (tmp_path / "served").mkdir()
    (tmp_path / "served" / "model.pt").write_bytes(b"weights" * 1000)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path / "served"), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/model.pt"
    httpd.shutdown()


def test_a_matching_digest_is_accepted(server, tmp_path):
    digest = hashlib.sha256(b"weights" * 1000).hexdigest()
    path = download(server, tmp_path / "hub" / "model.pt", digest)
    assert path.read_bytes() == b"weights" * 1000


def test_a_wrong_digest_is_refused_and_leaves_no_file(server, tmp_path):
    with pytest.raises(OSError, match="checksum mismatch"):
        download(server, tmp_path / "hub" / "model.pt", "0" * 64)
    assert list((tmp_path / "hub").iterdir()) == []


def test_without_a_digest_the_log_says_not_verified(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        download(server, tmp_path / "hub" / "model.pt")
    assert "model.pt: sha256 not verified" in caplog.text
    assert hashlib.sha256(b"weights" * 1000).hexdigest() in caplog.text
