"""The wheel is complete: installed outside the repository, presets and model configs still load.

An editable install (how the tests normally run) reads everything from the source tree, so it cannot
notice package data missing from the wheel. This test builds the wheel from a copy of the working
tree, installs it into a fresh virtual environment and imports it from a folder outside the
repository. Nothing is downloaded: the new environment sees torch & co. through a ``.pth`` file that
lists the package folders of the interpreter running the tests. That is where the README's install
put them, whether a virtualenv, conda or the system Python; ``venv --system-site-packages`` would
give the *base* Python's site-packages instead, which miss everything installed into a virtualenv.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Build outputs and caches that must not leak into (or slow down) the wheel build.
_IGNORED_NAMES = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".ruff_cache", "*.pt", "*.tmp"
)


def _ignored(folder: str, names: list[str]) -> set[str]:
    """:data:`_IGNORED_NAMES` and virtual environments (``python -m venv venv`` inside the clone)."""
    venvs = {name for name in names if os.path.isfile(os.path.join(folder, name, "pyvenv.cfg"))}
    return set(_IGNORED_NAMES(folder, names)) | venvs


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
        "path": sys.path,
        "sam2": sam2.__file__,
        "sam2long": sam2long.__file__,
        "paper_iou": SAM2LongConfig.from_preset("paper").iou_threshold,
        "presets": available_presets(),
        "image_model": type(image_model).__name__,
        "image_size": image_model.image_size,
        "tracker": type(tracker).__name__,
        "tracker_config": [tracker.tracker.config.iou_threshold, tracker.tracker.config.num_pathways],
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


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point a child Python at other packages."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")
    }
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def package_dirs() -> list[str]:
    """The running interpreter's package folders: its ``sys.path`` without the standard library,
    source trees of this project (the repository, ``PYTHONPATH`` checkouts; a virtualenv inside the
    clone stays) and folders inside another entry (e.g. ``setuptools/_vendor``, added on its import)."""
    stdlib = {Path(sysconfig.get_paths()[key]).resolve() for key in ("stdlib", "platstdlib")}
    stdlib |= {path / "lib-dynload" for path in stdlib}
    dirs = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if not entry or not path.is_dir() or str(path) in dirs:
            continue
        in_repo = path == REPO or REPO in path.parents
        if path in stdlib or (in_repo and not {"site-packages", "dist-packages"} & set(path.parts)):
            continue
        if (path / "sam2long" / "__init__.py").is_file() or (path / "sam2" / "__init__.py").is_file():
            continue
        dirs.append(str(path))
    return [d for d in dirs if not any(str(parent) in dirs for parent in Path(d).parents)]


def make_venv(path: Path, env: dict[str, str]) -> Path:
    """A virtual environment at ``path`` (no pip of its own) that also sees :func:`package_dirs`
    through a ``.pth`` file, after its own site-packages; returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], path.parent, env)
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], path, env)
    pth = Path(purelib.stdout.strip()) / "_running_environment.pth"
    pth.write_text("".join(f"{entry}\n" for entry in package_dirs()))
    return python


def test_wheel_installs_and_works_outside_the_repository(tmp_path: Path) -> None:
    env = _clean_env()
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=_ignored)
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
    python = make_venv(venv, env)
    # pip comes from the running environment's packages but installs into the venv (its sys.prefix).
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
    seen = {str(Path(entry).resolve()) for entry in facts["path"] if entry}
    missing = [entry for entry in package_dirs() if entry not in seen]
    assert not missing, f"the venv does not see these package folders of the running Python: {missing}"
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


def test_the_packaging_check_passes_inside_a_virtualenv(tmp_path: Path) -> None:
    """Run the check above from a virtualenv, as a user who installed into one would (issue #21).

    A virtualenv's own site-packages are not the base Python's, so a check that builds its venv with
    ``--system-site-packages`` misses them; this virtualenv gets the running packages (torch & co.)
    through a ``.pth`` file, so nothing is reinstalled or downloaded.
    """
    env = _clean_env()
    user_venv = tmp_path / "user-venv"
    python = make_venv(user_venv, env)
    test_id = f"{Path(__file__).resolve()}::test_wheel_installs_and_works_outside_the_repository"
    result = subprocess.run(
        [
            str(python),
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--basetemp",
            str(tmp_path / "t"),
            test_id,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, f"inside {user_venv}:\n{result.stdout}\n{result.stderr}"
    assert "1 passed" in result.stdout
