"""Checkpoint download (file:// and a local HTTP server), checksums, retries, offline errors."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import huggingface_hub
import pytest

from vitlocal.errors import ConfigError, CorruptFileError, WeightsNotFoundError
from vitlocal.models import weights
from vitlocal.models.registry import MODELS, ModelSpec, resolve
from vitlocal.models.weights import download, ensure_weights, marker_path, weights_path

PAYLOAD = bytes(range(256)) * 64
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


def url_spec(url: str, sha256: str | None = PAYLOAD_SHA) -> ModelSpec:
    return ModelSpec(key="m", arch="vit_tiny_patch16_224", weights="url", url=url, sha256=sha256,
                     checkpoint_format="ibot", filename="ckpt.pth")


@pytest.fixture
def source(tmp_path: Path) -> str:
    src = tmp_path / "src" / "ckpt.pth"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    return src.as_uri()


class _Server:
    """Serves PAYLOAD on 127.0.0.1, failing the first ``failures`` requests with 503."""

    def __init__(self, failures: int, content_type: str = "application/octet-stream") -> None:
        self.failures, self.requests = failures, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                outer.requests += 1
                if outer.requests <= outer.failures:
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(PAYLOAD)))
                self.end_headers()
                self.wfile.write(PAYLOAD)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/ckpt.pth"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server_factory():
    servers: list[_Server] = []

    def make(failures: int, **kwargs) -> _Server:
        servers.append(_Server(failures, **kwargs))
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def test_file_url_download_verifies_and_writes_marker(tmp_path, source):
    spec = url_spec(source)
    path = download(spec, tmp_path / "w")
    assert path == tmp_path / "w" / "m" / "ckpt.pth" == weights_path(spec, tmp_path / "w")
    assert path.read_bytes() == PAYLOAD
    marker = json.loads(marker_path(path).read_text())
    assert (marker["source"], marker["sha256"], marker["size"]) == (source, PAYLOAD_SHA, len(PAYLOAD))
    assert marker["downloaded_at"]
    assert not path.with_name("ckpt.pth.part").exists()
    assert ensure_weights(spec, tmp_path / "w") == path


def test_unknown_sha_is_recorded_not_checked(tmp_path, source):
    path = download(url_spec(source, sha256=None), tmp_path)
    assert json.loads(marker_path(path).read_text())["sha256"] == PAYLOAD_SHA


def test_checksum_mismatch_deletes_and_names_everything(tmp_path, source):
    wrong = "0" * 64
    with pytest.raises(CorruptFileError) as err:
        download(url_spec(source, sha256=wrong), tmp_path)
    message = str(err.value)
    assert "ckpt.pth" in message and wrong in message and PAYLOAD_SHA in message
    assert list((tmp_path / "m").iterdir()) == []


def test_http_retry_after_first_failure(tmp_path, server_factory):
    server = server_factory(failures=1)
    path = download(url_spec(server.url), tmp_path, retries=3, backoff=0)
    assert path.read_bytes() == PAYLOAD and server.requests == 2


def test_http_gives_up_after_retries(tmp_path, server_factory):
    server = server_factory(failures=10)
    with pytest.raises(WeightsNotFoundError, match=r"after 3 attempt\(s\).*503") as err:
        download(url_spec(server.url), tmp_path, retries=3, backoff=0)
    assert server.requests == 3
    assert str(tmp_path / "m" / "ckpt.pth") in str(err.value)
    assert not (tmp_path / "m" / "ckpt.pth").exists()


def test_html_page_is_refused(tmp_path, server_factory):
    server = server_factory(failures=0, content_type="text/html; charset=utf-8")
    with pytest.raises(CorruptFileError, match="HTML page"):
        download(url_spec(server.url), tmp_path, backoff=0)
    assert server.requests == 1 and list((tmp_path / "m").iterdir()) == []


def test_offline_error_says_what_to_place_where(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        ensure_weights(MODELS["ibot"], tmp_path)
    message = str(err.value)
    assert str(tmp_path / "ibot" / "checkpoint_teacher.pth") in message
    assert MODELS["ibot"].url in message
    with pytest.raises(WeightsNotFoundError) as err:
        ensure_weights(MODELS["dino"], tmp_path)
    assert str(tmp_path / "dino" / "model.safetensors") in str(err.value)
    assert "hf://timm/vit_base_patch16_224.dino/model.safetensors" in str(err.value)


def test_ensure_weights_catches_a_replaced_file(tmp_path, source):
    spec = url_spec(source)
    path = download(spec, tmp_path)
    path.write_bytes(PAYLOAD + b"x")  # size no longer matches the marker -> rehash
    with pytest.raises(CorruptFileError, match=PAYLOAD_SHA):
        ensure_weights(spec, tmp_path)
    assert not path.exists()


def test_random_weights_have_no_file(tmp_path):
    with pytest.raises(ConfigError, match="random"):
        weights_path(resolve("dino", {"weights": "random"}), tmp_path)


def test_hub_download_pins_revision_into_the_weights_dir(tmp_path, monkeypatch):
    calls = []

    def fake_hf_hub_download(repo_id, filename, *, revision, local_dir, etag_timeout):
        calls.append((repo_id, filename, revision, Path(local_dir)))
        out = Path(local_dir) / filename
        out.write_bytes(PAYLOAD)
        return str(out)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(weights, "_check_host_resolves", lambda spec, path: None)  # the hub is faked: no DNS
    spec = resolve("dino", {"revision": "0123abc", "sha256": PAYLOAD_SHA})
    path = download(spec, tmp_path)
    assert calls == [("timm/vit_base_patch16_224.dino", "model.safetensors", "0123abc", tmp_path / "dino")]
    assert path == tmp_path / "dino" / "model.safetensors"
    marker = json.loads(marker_path(path).read_text())
    assert marker["source"] == "hf://timm/vit_base_patch16_224.dino@0123abc/model.safetensors"
    assert marker["weights_label"] == "timm:vit_base_patch16_224.dino@0123abc"
