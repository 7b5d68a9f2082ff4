"""Tests of models by name (:mod:`sam2long.models`): registry, cache, resumable verified downloads, CLI.

Every download goes to a loopback ``http.server`` on 127.0.0.1 (port 0) whose answer to each request
is chosen by the test (plain, ``Range``-aware, cut after N bytes, corrupted, failing); nothing
reaches the internet. The server thread is stopped by a fixture finalizer.
"""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import sam2
from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES, _load_checkpoint
from sam2long import models
from sam2long.models import (
    OFFICIAL_BASE_URL,
    CheckpointUnavailableError,
    ChecksumMismatchError,
    ModelSpec,
    build_model_by_name,
    cache_dir,
    checkpoint_path,
    download_main,
    fetch_checkpoint,
    resolve_model,
)

REPO = Path(__file__).resolve().parents[1]
TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
NAMES = [
    "sam2.1-tiny",
    "sam2.1-small",
    "sam2.1-base-plus",
    "sam2.1-large",
    "sam2-tiny",
    "sam2-small",
    "sam2-base-plus",
    "sam2-large",
]
CUT = 100_000  # bytes sent before the server drops an interrupted transfer


def _checkpoint_bytes() -> bytes:
    """A small checkpoint in the official format ``{"model": state_dict}`` with random weights."""
    generator = torch.Generator().manual_seed(0)
    state_dict = {
        "weight": torch.randn(64, 1024, generator=generator),
        "bias": torch.randn(64, generator=generator),
    }
    buffer = io.BytesIO()
    torch.save({"model": state_dict}, buffer)
    return buffer.getvalue()


DATA = _checkpoint_bytes()
DIGEST = hashlib.sha256(DATA).hexdigest()


def make_spec(
    data: bytes = DATA, *, sha256="auto", size_bytes="auto", config: str = TINY, name="test-tiny"
) -> ModelSpec:
    """A test model under the official URL layout (redirected to the loopback server by ``base_url``)."""
    return ModelSpec(
        name=name,
        config=config,
        url=f"{OFFICIAL_BASE_URL}/092824/{name}.pt",
        filename=f"{name}.pt",
        sha256=hashlib.sha256(data).hexdigest() if sha256 == "auto" else sha256,
        size_bytes=len(data) if size_bytes == "auto" else size_bytes,
    )


class ServerState:
    """What the loopback server serves, how it answers each request, and what it was asked."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: list = []  # one answer mode per coming request; "plain" when empty
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.base_url = ""
        self.lock = threading.Lock()

    def serve(self, spec: ModelSpec, data: bytes = DATA) -> str:
        """Serve ``data`` at the spec's URL path; returns the URL the client will use."""
        path = "/segment_anything_2/" + spec.url[len(OFFICIAL_BASE_URL) + 1 :]
        self.files[path] = data
        return self.base_url + spec.url[len(OFFICIAL_BASE_URL) :]

    def next_mode(self):
        with self.lock:
            return self.modes.pop(0) if self.modes else "plain"


class Handler(BaseHTTPRequestHandler):
    """GET only. Modes: ``plain`` (200, ignores Range), ``range`` (206 for a Range request),
    ``("cut", n)`` (announces the full length, sends n bytes, closes), ``corrupt`` (one byte
    changed), ``("error", code)``."""

    state: ServerState
    timeout = 10  # a stuck client cannot hold a server thread longer than this

    def log_message(self, format, *args) -> None:  # noqa: A002 - BaseHTTPRequestHandler's signature
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        state = self.state
        mode = state.next_mode()
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        if isinstance(mode, tuple) and mode[0] == "error":
            self.send_error(mode[1])
            return
        if mode == "corrupt":
            middle = len(data) // 2
            data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
        if mode == "range" and range_header:
            start = int(re.fullmatch(r"bytes=(\d+)-", range_header).group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            self.wfile.write(data[start:])
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if isinstance(mode, tuple) and mode[0] == "cut":
            self.wfile.write(data[: mode[1]])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


@pytest.fixture
def server(request: pytest.FixtureRequest) -> ServerState:
    state = ServerState()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("BoundHandler", (Handler,), {"state": state}))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    request.addfinalizer(stop)
    state.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/segment_anything_2"
    return state


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxy for the loopback server, no user settings, and a private default cache."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in (models.ENV_OFFLINE, models.ENV_BASE_URL):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "default-cache"))


def fetch(spec: ModelSpec, server: ServerState, cache: Path, **kwargs) -> Path:
    return fetch_checkpoint(spec, cache=cache, base_url=server.base_url, progress=False, timeout=10, **kwargs)


# --- registry and cache location -------------------------------------------------------------------


def test_registry_lists_the_official_sam2_models() -> None:
    assert list(models.MODELS)[: len(NAMES)] == NAMES
    script = (REPO / "checkpoints" / "download_ckpts.sh").read_text()
    hf_configs = dict((name, config) for config, name in HF_MODEL_ID_TO_FILENAMES.values())
    for name in NAMES:
        spec = resolve_model(name)
        assert spec.name == name
        release = "092824" if name.startswith("sam2.1-") else "072824"
        assert spec.url == f"{OFFICIAL_BASE_URL}/{release}/{spec.filename}"
        assert spec.filename in script
        assert hf_configs[spec.filename] == spec.config
        assert (Path(sam2.__file__).parent / spec.config).is_file()
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256)
        assert spec.size_bytes > 100_000_000
    assert len({resolve_model(name).sha256 for name in NAMES}) == 8
    with pytest.raises(TypeError):
        models.MODELS["x"] = resolve_model("sam2-tiny")
    with pytest.raises(AttributeError):
        resolve_model("sam2-tiny").sha256 = None


def test_registry_lists_the_on_device_models() -> None:
    """EdgeTAM and EfficientTAM by name: official URLs and configs; no public digest, so none is claimed."""
    urls = {
        "edgetam": "https://github.com/facebookresearch/EdgeTAM/raw/main/checkpoints/edgetam.pt",
        **{
            f"efficienttam-{name}": f"https://huggingface.co/yunyangx/efficient-track-anything/resolve/main/{file}"
            for name, file in (
                ("ti", "efficienttam_ti.pt"),
                ("ti-512", "efficienttam_ti_512x512.pt"),
                ("s", "efficienttam_s.pt"),
                ("s-512", "efficienttam_s_512x512.pt"),
            )
        },
    }
    assert list(models.MODELS)[len(NAMES) :] == list(urls)
    for name, url in urls.items():
        spec = resolve_model(name)
        assert spec.url == url and spec.filename == url.rsplit("/", 1)[1] and spec.sha256 is None
        assert (Path(sam2.__file__).parent / spec.config).is_file()
        assert models.cpu_cost_hint(spec.config, "cpu", "sam2long", bf16=False) is None, "the hint is Hiera's"


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown model 'sam3-huge'") as err:
        resolve_model("sam3-huge")
    for name in NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown model 'sam2.1-tiny.pt'"):
        fetch_checkpoint("sam2.1-tiny.pt", offline=True)


def test_model_spec_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="sha256 'abc' is not 64 hex digits"):
        make_spec(sha256="abc")
    with pytest.raises(ValueError, match="plain file name"):
        ModelSpec("x", TINY, "http://h/x.pt", "../x.pt")
    with pytest.raises(ValueError, match="size_bytes 0"):
        make_spec(size_bytes=0)
    assert make_spec(sha256=DIGEST.upper()).sha256 == DIGEST


def test_cache_dir_follows_env_and_defaults_to_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"
    assert checkpoint_path("sam2-large") == tmp_path / "elsewhere" / "checkpoints" / "sam2_hiera_large.pt"
    monkeypatch.delenv(models.ENV_CACHE)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "sam2long"
    assert (
        checkpoint_path("sam2-tiny", cache=tmp_path / "c")
        == tmp_path / "c" / "checkpoints" / "sam2_hiera_tiny.pt"
    )


# --- downloads ------------------------------------------------------------------------------------


def test_first_use_downloads_with_progress_then_uses_the_cache(
    server: ServerState, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = make_spec()
    server.serve(spec)
    path = fetch_checkpoint(spec, cache=tmp_path, base_url=server.base_url, progress=True, timeout=10)
    assert path == tmp_path / "checkpoints" / "test-tiny.pt"
    assert path.read_bytes() == DATA
    assert not path.with_name("test-tiny.pt.part").exists()
    assert len(server.requests) == 1 and server.requests[0][1] is None
    progress = capsys.readouterr().err
    assert "test-tiny.pt" in progress and "100%" in progress
    assert torch.load(path, weights_only=True)["model"].keys() == {"weight", "bias"}

    assert fetch(spec, server, tmp_path) == path
    assert len(server.requests) == 1  # served from the cache


def test_base_url_from_environment(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec()
    server.serve(spec)
    monkeypatch.setenv(models.ENV_BASE_URL, server.base_url + "/")
    assert fetch_checkpoint(spec, cache=tmp_path, progress=False, timeout=10).read_bytes() == DATA
    assert server.requests == [("/segment_anything_2/092824/test-tiny.pt", None)]
    monkeypatch.setenv(models.ENV_BASE_URL, "ftp://mirror.example/sam2")
    with pytest.raises(ValueError, match=r"\$SAM2LONG_BASE_URL 'ftp://mirror.example/sam2' is not"):
        fetch_checkpoint(spec, cache=tmp_path)


def test_interrupted_download_resumes_with_a_range_request(server: ServerState, tmp_path: Path) -> None:
    spec = make_spec()
    url = server.serve(spec)
    server.modes = [("cut", CUT), "range"]
    target = tmp_path / "checkpoints" / "test-tiny.pt"
    part = target.with_name("test-tiny.pt.part")
    with pytest.raises(CheckpointUnavailableError) as err:
        fetch(spec, server, tmp_path)
    message = str(err.value)
    assert url in message and str(target) in message and str(part) in message
    assert f"after {CUT} of {len(DATA)} bytes" in message
    assert not target.exists()
    assert part.read_bytes() == DATA[:CUT]

    assert fetch(spec, server, tmp_path) == target
    assert server.requests[1][1] == f"bytes={CUT}-"
    assert target.read_bytes() == DATA
    assert not part.exists()


def test_resume_starts_over_when_the_server_ignores_range(server: ServerState, tmp_path: Path) -> None:
    spec = make_spec()
    server.serve(spec)
    server.modes = [("cut", CUT), "plain"]
    with pytest.raises(CheckpointUnavailableError):
        fetch(spec, server, tmp_path)
    path = fetch(spec, server, tmp_path)
    assert server.requests[1][1] == f"bytes={CUT}-"  # asked to resume, got the whole file (200)
    assert path.read_bytes() == DATA


def test_complete_partial_file_is_verified_without_a_new_transfer(
    server: ServerState, tmp_path: Path
) -> None:
    spec = make_spec(size_bytes=None)  # size unknown: the server's 416 says the part is complete
    server.serve(spec)
    part = tmp_path / "checkpoints" / "test-tiny.pt.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(DATA)
    server.modes = ["range"]
    assert fetch(spec, server, tmp_path).read_bytes() == DATA
    assert server.requests == [("/segment_anything_2/092824/test-tiny.pt", f"bytes={len(DATA)}-")]


def test_corrupted_download_is_deleted_and_names_file_and_digests(
    server: ServerState, tmp_path: Path
) -> None:
    spec = make_spec()
    server.serve(spec)
    server.modes = ["corrupt"]
    middle = len(DATA) // 2
    corrupted = DATA[:middle] + bytes([DATA[middle] ^ 0xFF]) + DATA[middle + 1 :]
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(spec, server, tmp_path)
    message = str(err.value)
    target = tmp_path / "checkpoints" / "test-tiny.pt"
    assert str(target) in message
    assert f"expected {DIGEST}" in message and hashlib.sha256(corrupted).hexdigest() in message
    assert list(target.parent.iterdir()) == []  # no final file, no .part, no lock file

    assert fetch(spec, server, tmp_path).read_bytes() == DATA  # the next call downloads it again


def test_unknown_sha256_records_the_digest_and_detects_later_corruption(
    server: ServerState, tmp_path: Path
) -> None:
    spec = make_spec(sha256=None)
    server.serve(spec)
    path = fetch(spec, server, tmp_path)
    sidecar = path.with_name("test-tiny.pt.sha256")
    assert sidecar.read_text() == f"{DIGEST}  test-tiny.pt\n"
    assert fetch(spec, server, tmp_path) == path

    damaged = bytearray(DATA)
    damaged[10] ^= 0x01
    path.write_bytes(bytes(damaged))
    with pytest.raises(ChecksumMismatchError) as err:
        fetch(spec, server, tmp_path)
    message = str(err.value)
    assert str(path) in message and f"expected {DIGEST}" in message and str(sidecar) in message
    assert hashlib.sha256(bytes(damaged)).hexdigest() in message
    assert not path.exists() and not sidecar.exists()
    assert len(server.requests) == 1


def test_unknown_sha256_still_checks_a_known_size(server: ServerState, tmp_path: Path) -> None:
    spec = make_spec(sha256=None, size_bytes=len(DATA) + 1)
    server.serve(spec)
    with pytest.raises(ChecksumMismatchError, match=f"has {len(DATA)} bytes, expected {len(DATA) + 1}"):
        fetch(spec, server, tmp_path)
    assert not (tmp_path / "checkpoints" / "test-tiny.pt").exists()
    assert not (tmp_path / "checkpoints" / "test-tiny.pt.part").exists()


def test_waits_for_a_concurrent_download_and_uses_its_file(server: ServerState, tmp_path: Path) -> None:
    import fcntl

    spec = make_spec()
    server.serve(spec)
    target = checkpoint_path(spec, cache=tmp_path)
    target.parent.mkdir(parents=True)
    result: list = []
    with open(target.with_name("test-tiny.pt.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process (here: this test) is downloading the file
        worker = threading.Thread(target=lambda: result.append(fetch(spec, server, tmp_path)), daemon=True)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and server.requests == []  # waiting, not downloading a second copy
        target.write_bytes(DATA)  # the other process finishes
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert not worker.is_alive() and result == [target]
    assert server.requests == []
    assert not target.with_name("test-tiny.pt.lock").exists()  # the last holder deletes it


def test_a_waiter_woken_on_a_deleted_lock_file_waits_for_the_current_one(
    server: ServerState, tmp_path: Path
) -> None:
    import fcntl

    spec = make_spec()
    server.serve(spec)
    target = checkpoint_path(spec, cache=tmp_path)
    target.parent.mkdir(parents=True)
    lock_path = target.with_name("test-tiny.pt.lock")
    result: list = []
    with open(lock_path, "a+b") as first:
        fcntl.flock(first, fcntl.LOCK_EX)
        worker = threading.Thread(target=lambda: result.append(fetch(spec, server, tmp_path)), daemon=True)
        worker.start()
        worker.join(timeout=0.5)
        lock_path.unlink()  # the first holder finishes as fetch_checkpoint does: delete, then release
        with open(lock_path, "a+b") as second:
            fcntl.flock(second, fcntl.LOCK_EX)  # a third process locks the new lock file meanwhile
            fcntl.flock(first, fcntl.LOCK_UN)
            worker.join(timeout=0.5)
            assert worker.is_alive() and server.requests == []  # it waits for the current lock file
            target.write_bytes(DATA)
            fcntl.flock(second, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert not worker.is_alive() and result == [target]
    assert server.requests == [] and not lock_path.exists()


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_offline_without_the_file_names_url_and_path(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    spec = make_spec()
    url = server.serve(spec)
    if how == "environment":
        monkeypatch.setenv(models.ENV_OFFLINE, "1")
    with pytest.raises(CheckpointUnavailableError) as err:
        fetch(spec, server, tmp_path, offline=how == "argument")
    message = str(err.value)
    assert "offline" in message and url in message
    assert f"copy it to {tmp_path / 'checkpoints' / 'test-tiny.pt'}" in message
    assert "--checkpoint FILE on the command line (checkpoint=FILE in Python)" in message
    assert "any other file there fails the sha256 check and is deleted" in message
    assert server.requests == []
    assert not (tmp_path / "checkpoints").exists()


def test_offline_uses_a_file_placed_by_hand_and_rejects_a_wrong_one(
    server: ServerState, tmp_path: Path
) -> None:
    spec = make_spec()
    server.serve(spec)
    target = checkpoint_path(spec, cache=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(DATA)
    assert fetch(spec, server, tmp_path, offline=True) == target

    target.write_bytes(DATA[:-1])
    with pytest.raises(ChecksumMismatchError, match=re.escape(str(target))):
        fetch(spec, server, tmp_path, offline=True)
    assert not target.exists()
    assert server.requests == []


def test_bad_options_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds, got 0"):
        fetch_checkpoint(make_spec(), cache=tmp_path, timeout=0)
    monkeypatch.setenv(models.ENV_OFFLINE, "maybe")
    with pytest.raises(ValueError, match=r"\$SAM2LONG_OFFLINE='maybe' is not a boolean"):
        fetch_checkpoint(make_spec(), cache=tmp_path)


def test_network_failures_name_url_path_and_the_script(server: ServerState, tmp_path: Path) -> None:
    spec = make_spec()
    url = server.serve(spec)
    server.modes = [("error", 503)]
    with pytest.raises(CheckpointUnavailableError) as err:
        fetch(spec, server, tmp_path)
    message = str(err.value)
    target = tmp_path / "checkpoints" / "test-tiny.pt"
    assert "HTTP 503" in message and url in message and str(target) in message
    assert "checkpoints/download_ckpts.sh" in message

    with socket.socket() as probe:  # a port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/segment_anything_2"
    with pytest.raises(CheckpointUnavailableError) as err:
        fetch_checkpoint(spec, cache=tmp_path, base_url=closed, progress=False, timeout=5)
    assert f"{closed}/092824/test-tiny.pt" in str(err.value) and str(target) in str(err.value)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # a failed download leaves no lock file


def test_the_hand_placement_hint_says_what_is_checked(tmp_path: Path) -> None:
    for spec, says in (
        (make_spec(sha256=None), "a file there of another size than"),
        (make_spec(sha256=None, size_bytes=None), None),
    ):
        with pytest.raises(CheckpointUnavailableError) as err:
            fetch_checkpoint(spec, cache=tmp_path, offline=True)
        message = str(err.value)
        assert "--checkpoint FILE" in message and "sha256 check" not in message
        assert (says in message) if says else "deleted" not in message


# --- the checkpoint loader --------------------------------------------------------------------------


def test_loader_names_a_file_that_is_not_a_torch_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    text = tmp_path / "notes.pt"
    text.write_text("hello, not a checkpoint")
    with pytest.raises(
        RuntimeError, match=rf"checkpoint '{re.escape(str(text))}' is not a PyTorch checkpoint: \w+"
    ):
        _load_checkpoint(model, text)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"empty.pt' is not a PyTorch checkpoint: the file is empty"):
        _load_checkpoint(model, empty)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "missing.pt"))):
        _load_checkpoint(model, tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    torch.save({"model": {k: torch.ones_like(v) for k, v in model.state_dict().items()}}, good)
    _load_checkpoint(model, good)
    assert torch.equal(model.weight, torch.ones(2, 2))


# --- `sam2long download` ----------------------------------------------------------------------------


def error_lines(capsys: pytest.CaptureFixture) -> list[str]:
    """The ``error:`` lines written to stderr since the last call."""
    return [line for line in capsys.readouterr().err.splitlines() if "error:" in line]


def test_download_main_exit_codes(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    spec = make_spec(name="sam2.1-tiny")
    url = server.serve(spec)
    monkeypatch.setitem(models._REGISTRY, "sam2.1-tiny", spec)
    monkeypatch.setenv(models.ENV_BASE_URL, server.base_url)
    cache = tmp_path / "cli-cache"
    target = cache / "checkpoints" / "sam2.1-tiny.pt"

    assert download_main(["sam2.1-tiny", "--cache", str(cache), "--offline"]) == 1
    (line,) = error_lines(capsys)
    assert line.startswith("sam2long download: error: sam2.1-tiny: ") and url in line and str(target) in line

    server.modes = ["corrupt"]
    assert download_main(["sam2.1-tiny", "--cache", str(cache)]) == 1
    (line,) = error_lines(capsys)  # the progress bar shares stderr; the error is one line of its own
    assert line.startswith("sam2long download: error: sam2.1-tiny: ") and f"expected {DIGEST}" in line

    assert download_main(["sam2.1-tiny", "--cache", str(cache)]) == 0
    assert capsys.readouterr().out == f"sam2.1-tiny: {target}\n"
    assert target.read_bytes() == DATA
    assert download_main(["sam2.1-tiny", "--cache", str(cache), "--offline"]) == 0

    assert download_main(["sam3-huge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'sam3-huge'" in err and "sam2-large" in err
    assert download_main([]) == 2
    assert download_main(["--all", "sam2-tiny"]) == 2
    assert download_main(["--bogus"]) == 2
    assert len(server.requests) == 2


# --- building a predictor by name -------------------------------------------------------------------


def test_build_model_by_name_downloads_and_loads_the_weights(
    server: ServerState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_checkpoint
) -> None:
    from sam2.sam2_video_predictor import SAM2VideoPredictor
    from sam2long.predictor import SAM2LongVideoPredictor

    ckpt = make_checkpoint(TINY, seed=7)
    data = ckpt.read_bytes()
    spec = make_spec(data, name="tiny-random")
    server.serve(spec, data)
    monkeypatch.setenv(models.ENV_BASE_URL, server.base_url)
    monkeypatch.setenv(models.ENV_CACHE, str(tmp_path))
    expected = torch.load(ckpt, weights_only=True)["model"]
    small = {"device": "cpu", "hydra_overrides_extra": ["++model.image_size=256"]}

    predictor = build_model_by_name(spec, tracker="sam2", **small)
    assert type(predictor) is SAM2VideoPredictor
    assert (tmp_path / "checkpoints" / "tiny-random.pt").read_bytes() == data
    loaded = predictor.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())

    predictor = build_model_by_name(spec, checkpoint=ckpt, num_pathways=2, **small)
    assert isinstance(predictor, SAM2LongVideoPredictor) and predictor.tracker.config.num_pathways == 2
    loaded = predictor.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    assert len(server.requests) == 1

    with pytest.raises(ValueError, match="unknown tracker 'sam3'"):
        build_model_by_name(spec, tracker="sam3")


def test_cpu_cost_hint_for_large_models_only() -> None:
    from sam2long.models import cpu_cost_hint

    hint = cpu_cost_hint("configs/sam2.1/sam2.1_hiera_l.yaml", "cpu", "sam2long", bf16=True)
    assert hint is not None and hint.startswith("note: sam2.1_hiera_l on a CPU costs about 14 s per frame")
    assert "--model sam2.1-tiny" in hint and "--tracker sam2" in hint and "--max_frames" in hint
    slower = cpu_cost_hint("configs/sam2/sam2_hiera_b+.yaml", "cpu", "sam2", bf16=False)
    assert slower is not None and "about 10 s per frame with sam2 (2 objects, float32" in slower
    assert cpu_cost_hint("configs/sam2.1/sam2.1_hiera_t.yaml", "cpu", "sam2long", bf16=True) is None
    assert cpu_cost_hint("configs/sam2.1/sam2.1_hiera_l.yaml", "cuda:0", "sam2long", bf16=True) is None
    assert cpu_cost_hint("my_model.yaml", "cpu", "sam2long", bf16=True) is None


def test_segment_prints_the_cost_hint_on_cpu(capsys) -> None:
    import argparse

    from sam2long.cli import _print_cost_hint

    args = argparse.Namespace(dtype="float32", tracker="sam2long")
    _print_cost_hint("configs/sam2.1/sam2.1_hiera_s.yaml", "cpu", args)
    assert capsys.readouterr().err.startswith("note: sam2.1_hiera_s on a CPU costs about 12 s per frame")
