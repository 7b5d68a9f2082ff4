"""The wheel is complete: installed outside the repository, presets and model configs still load.

An editable install (how the tests normally run) reads everything from the source tree, so it cannot
notice package data missing from the wheel. This test builds the wheel from a copy of the working
tree, installs it into a fresh virtual environment (system site-packages give torch & co., nothing
is downloaded) and imports it from a folder outside the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Build outputs and caches that must not leak into (or slow down) the wheel build.
_IGNORED = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pt", "*.tmp"
)

_CHECK_INSTALLED = textwrap.dedent(
    """
    import json, sys
    import sam2, sam2long
    from hydra import compose
    from sam2.build_sam import build_sam2
    from sam2long import build_sam2long_video_predictor
    from sam2long.config import SAM2LongConfig, available_presets

    image_model = build_sam2(
        "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu", hydra_overrides_extra=["++model.image_size=256"]
    )
    tracker = build_sam2long_video_predictor(
        "configs/sam2.1/sam2.1_hiera_t.yaml", None, device="cpu",
        hydra_overrides_extra=["++model.image_size=256"], config="paper", num_pathways=2,
    )
    legacy = compose(config_name="sam2_hiera_t.yaml")
    print(json.dumps({
        "prefix": sys.prefix,
        "sam2": sam2.__file__,
        "sam2long": sam2long.__file__,
        "paper_iou": SAM2LongConfig.from_preset("paper").iou_threshold,
        "presets": available_presets(),
        "image_model": type(image_model).__name__,
        "image_size": image_model.image_size,
        "tracker": type(tracker).__name__,
        "tracker_config": [tracker.sam2long.iou_threshold, tracker.sam2long.num_pathways],
        "legacy_target": legacy.model._target_,
    }))
    """
)


def _build_isolation_flags() -> list[str]:
    """Build offline with the installed setuptools when it can make wheels, else let pip isolate."""
    try:
        import setuptools

        major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    except (ImportError, ValueError):
        return []
    if (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None:
        return ["--no-build-isolation", "--no-index"]
    return []


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_wheel_installs_and_works_outside_the_repository(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_IGNORED)
    wheels = tmp_path / "wheels"
    _run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "-q", "-w", str(wheels)]
        + _build_isolation_flags(),
        cwd=source,
        env=env,
    )
    (wheel,) = wheels.glob("sam2long-*.whl")

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert {"sam2long/presets/official.yaml", "sam2long/presets/paper.yaml"} <= names
    assert {"sam2/configs/sam2.1/sam2.1_hiera_t.yaml", "sam2/sam2_hiera_t.yaml"} <= names
    assert not any(name.startswith(("tests/", "configs/")) for name in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp_path, env)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    # pip comes from the system site-packages but installs into the venv (its sys.prefix).
    _run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        tmp_path,
        env,
    )

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    result = _run([str(python), "-c", _CHECK_INSTALLED], outside, env)
    facts = json.loads(result.stdout.strip().splitlines()[-1])

    prefix = Path(facts["prefix"]).resolve()
    assert prefix == venv.resolve()
    for module in ("sam2", "sam2long"):
        location = Path(facts[module]).resolve()
        assert prefix in location.parents, f"{module} imported from {location}, not the venv"
        assert REPO not in location.parents
    assert facts["paper_iou"] == 0.3
    assert {"official", "paper"} <= set(facts["presets"])
    assert (facts["image_model"], facts["image_size"]) == ("SAM2Base", 256)
    assert facts["tracker"] == "SAM2LongVideoPredictor"
    assert facts["tracker_config"] == [0.3, 2]
    assert facts["legacy_target"] == "sam2.modeling.sam2_base.SAM2Base"
