"""Checkpoint files: where they live, how they are downloaded, and the offline check.

Layout: ``<weights_dir>/<model key>/<filename>`` plus ``<filename>.json``, a
marker recording where the file came from, its sha256, size and date.
Downloads happen in one local rule (``download``); cluster jobs are offline and
only call ``ensure_weights``, which never touches the network and says exactly
which file to put where when it is missing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import socket
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

from vitlocal.errors import ConfigError, CorruptFileError, WeightsNotFoundError
from vitlocal.models.registry import ModelSpec

_CHUNK = 1 << 20


def weights_path(spec: ModelSpec, weights_dir: str | Path) -> Path:
    """Where ``spec``'s checkpoint lives: ``<weights_dir>/<key>/<filename>``."""
    if spec.weights == "random" or not spec.filename:
        raise ConfigError(f"model {spec.key!r} uses {spec.weights_label} weights: there is no checkpoint file")
    return Path(weights_dir) / spec.key / spec.filename


def marker_path(path: Path) -> Path:
    """Provenance marker next to a checkpoint: ``<file>.json``."""
    return path.with_name(path.name + ".json")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (checkpoints are up to ~1.3 GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_of(spec: ModelSpec) -> str:
    """Human-readable origin: the URL or ``hf://<hub id>[@revision]/<filename>``."""
    if spec.weights == "url":
        return str(spec.url)
    revision = f"@{spec.revision}" if spec.revision else ""
    return f"hf://{spec.hf_hub_id}{revision}/{spec.filename}"


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(marker_path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_marker(spec: ModelSpec, path: Path, sha256: str) -> None:
    marker = {
        "key": spec.key,
        "weights_label": spec.weights_label,
        "source": source_of(spec),
        "sha256": sha256,
        "sha256_expected": spec.sha256,
        "size": path.stat().st_size,
        "downloaded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    marker_path(path).write_text(json.dumps(marker, indent=2) + "\n")


def verify_sha256(spec: ModelSpec, path: Path) -> str:
    """Hash ``path``; if ``spec.sha256`` is known and differs, delete the file and raise."""
    got = sha256_file(path)
    if spec.sha256 is not None and got != spec.sha256:
        path.unlink(missing_ok=True)
        raise CorruptFileError(
            f"checksum mismatch for {path} (model {spec.key!r}, from {source_of(spec)}): "
            f"expected sha256 {spec.sha256}, got {got}; the file was deleted"
        )
    return got


def _is_trusted(spec: ModelSpec, path: Path) -> bool:
    """True when no checksum is pinned, or the marker already vouches for this very file."""
    if spec.sha256 is None:
        return True
    marker = _read_marker(path)
    return bool(marker) and marker.get("sha256") == spec.sha256 and marker.get("size") == path.stat().st_size


def ensure_weights(spec: ModelSpec, weights_dir: str | Path) -> Path:
    """Path of ``spec``'s checkpoint on disk; never downloads.

    Missing -> :class:`WeightsNotFoundError` naming the file to place and where
    to get it. A pinned sha256 is checked unless the download marker already
    recorded it for a file of the same size.
    """
    path = weights_path(spec, weights_dir)
    if not path.is_file():
        raise WeightsNotFoundError(
            f"weights for model {spec.key!r} not found: expected file {path}. "
            f"Get it from {source_of(spec)} (run the download rule on a machine with internet, or "
            f"download it by hand and place it at exactly that path"
            + (f"; expected sha256 {spec.sha256}" if spec.sha256 else "")
            + ")."
        )
    if not _is_trusted(spec, path):
        verify_sha256(spec, path)
    return path


def is_name_resolution_error(error: BaseException) -> bool:
    """True when a host name did not resolve anywhere in ``error``'s chain.

    Retrying cannot help there (no DNS, offline machine), unlike a timeout or a
    dropped connection. urllib wraps the resolver's error in ``URLError.reason``;
    requests / huggingface_hub chain it through ``__cause__`` / ``__context__``.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [error]
    while todo:
        err = todo.pop()
        if id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, socket.gaierror) or type(err).__name__ == "NameResolutionError":
            return True
        todo += [e for e in (err.__cause__, err.__context__, getattr(err, "reason", None), *err.args)
                 if isinstance(e, BaseException)]
    return False


def download(
    spec: ModelSpec,
    weights_dir: str | Path,
    *,
    retries: int = 3,
    timeout: float = 60.0,
    backoff: float = 2.0,
) -> Path:
    """Fetch ``spec``'s checkpoint into ``weights_path`` (no-op when already present and valid).

    URLs stream into ``<file>.part`` and are renamed only once complete and
    verified, so an interrupted run never leaves a plausible-looking file.
    Transfer errors are retried ``retries`` times with exponential ``backoff``
    seconds; a checksum mismatch (the server sends the wrong file) and a host
    name that does not resolve (offline) are final at once.
    """
    path = weights_path(spec, weights_dir)
    if path.is_file():
        return ensure_weights(spec, weights_dir)
    if spec.weights == "timm" and importlib.util.find_spec("huggingface_hub") is None:
        raise WeightsNotFoundError(
            f"huggingface_hub is not installed, cannot fetch {source_of(spec)}; "
            f"pip install huggingface_hub, or place the file at {path}"
        )
    _check_host_resolves(spec, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fetch = _fetch_url if spec.weights == "url" else _fetch_hub
    last: OSError | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            sha256 = fetch(spec, path, timeout)
            break
        except OSError as err:  # URLError, timeouts, hub HTTP errors all derive from OSError
            if is_name_resolution_error(err):
                raise _offline_error(spec, path, err) from err
            last = err
    else:
        raise WeightsNotFoundError(
            f"could not download weights for model {spec.key!r} from {source_of(spec)} after {retries} "
            f"attempt(s): {last}. Download it by hand and place it at {path}."
        )
    _write_marker(spec, path, sha256)
    return path


def _offline_error(spec: ModelSpec, path: Path, err: BaseException) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"cannot download weights for model {spec.key!r} from {source_of(spec)}: the host name does not "
        f"resolve ({err}); this machine is offline or has no DNS. Download the file elsewhere and place "
        f"it at {path}."
    )


def _check_host_resolves(spec: ModelSpec, path: Path) -> None:
    """Fail at once when the download host does not resolve: huggingface_hub alone would retry for ~25 s."""
    if spec.weights == "url":
        host = urllib.parse.urlparse(str(spec.url)).hostname
    else:
        from huggingface_hub import constants

        host = urllib.parse.urlparse(constants.ENDPOINT).hostname
    if host:
        try:
            socket.getaddrinfo(host, None)
        except socket.gaierror as err:
            raise _offline_error(spec, path, err) from err


def _fetch_url(spec: ModelSpec, path: Path, timeout: float) -> str:
    """Stream the URL into ``<file>.part``; rename only once complete and verified. Returns the sha256."""
    part = path.with_name(path.name + ".part")
    try:
        _stream(str(spec.url), part, timeout)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    sha256 = verify_sha256(spec, part)
    part.replace(path)
    return sha256


def _stream(url: str, part: Path, timeout: float) -> None:
    """Copy ``url`` to ``part``, refusing HTML pages and short transfers."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        content_type = response.headers.get("Content-Type", "") or ""
        if content_type.startswith("text/html"):
            raise CorruptFileError(
                f"{url} returned an HTML page, not a checkpoint (a login or confirmation page?); "
                f"download it in a browser and place it at {part.with_suffix('')}"
            )
        expected = response.headers.get("Content-Length")
        with open(part, "wb") as fh:
            shutil.copyfileobj(response, fh, _CHUNK)
    if expected is not None and part.stat().st_size != int(expected):
        raise OSError(f"truncated transfer from {url}: got {part.stat().st_size} of {expected} bytes")


def _fetch_hub(spec: ModelSpec, path: Path, timeout: float) -> str:
    """Fetch a timm hub file into ``path.parent`` (huggingface_hub ships with timm). Returns the sha256."""
    from huggingface_hub import hf_hub_download

    got = hf_hub_download(
        repo_id=spec.hf_hub_id,
        filename=spec.filename,
        revision=spec.revision,
        local_dir=path.parent,
        etag_timeout=timeout,
    )
    if Path(got).resolve() != path.resolve():
        Path(got).replace(path)
    return verify_sha256(spec, path)
