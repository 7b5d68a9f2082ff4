"""``notebooks/video_segmentation.ipynb``: committed without outputs, and it runs top to bottom.

The notebook is executed with nbclient in a Jupyter kernel running this interpreter, in a temporary
working directory laid out like the repository (``notebooks/`` next to ``examples/``), with seeded
random weights (``SAM2LONG_NOTEBOOK_CHECKPOINT``), 256-px inputs and 5 frames after the prompt. The
assertions read the JSON summary the notebook writes and the executed cells' outputs.

Outside CI the execution test skips (with the reason) when the notebook packages are missing or the
kernel does not start; under ``CI=true`` both are failures.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from extras import unavailable

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "video_segmentation.ipynb"
GENERATOR = ROOT / "notebooks" / "make_notebook.py"
EXAMPLES = ROOT / "examples"
SUMMARY = "video_segmentation_outputs.json"
FRAMES = 5  # SAM2LONG_NOTEBOOK_FRAMES: frames tracked after the prompted one
PLOT_CELLS = {"video", "prompt-clicks", "prompt-box", "side-by-side", "scores", "logits"}


def _import(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        unavailable(f"{module} is not installed ({error}); pip install -e '.[notebook]'")


def _load_generator():
    spec = importlib.util.spec_from_file_location("make_notebook", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_notebook_is_generated_and_cleared():
    _import("nbformat")
    generator = _load_generator()
    assert NOTEBOOK.read_text(encoding="utf-8") == generator.render(), (
        f"{NOTEBOOK.name} differs from what {GENERATOR.name} writes; run python notebooks/make_notebook.py"
    )
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code_cells = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell["outputs"] == [] and cell["execution_count"] is None, f"cell {cell['id']} has outputs"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert PLOT_CELLS <= {cell["id"] for cell in code_cells}


def test_notebook_executes(tmp_path, make_checkpoint, monkeypatch):
    nbformat = _import("nbformat")
    nbclient = _import("nbclient")
    kernelspec = _import("ipykernel.kernelspec")
    _import("matplotlib")
    from nbclient.exceptions import CellExecutionError

    # A repository-like layout: the notebook opens ../examples/bedroom.mp4 from its working directory.
    work = tmp_path / "notebooks"
    work.mkdir()
    (tmp_path / "examples").mkdir()
    for name in ("bedroom.mp4", "bedroom_prompts.json"):
        shutil.copy2(EXAMPLES / name, tmp_path / "examples" / name)

    # A "python3" kernel spec for this interpreter, first on the Jupyter path (nothing is installed
    # into the user's or the system's Jupyter folders).
    prefix = tmp_path / "jupyter"
    kernelspec.install(kernel_name="python3", prefix=str(prefix))
    monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))

    checkpoint = make_checkpoint("configs/sam2.1/sam2.1_hiera_t.yaml", seed=0, obj_score_bias=1.0)
    monkeypatch.setenv("SAM2LONG_NOTEBOOK_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SAM2LONG_NOTEBOOK_OVERRIDES", "++model.image_size=256")
    monkeypatch.setenv("SAM2LONG_NOTEBOOK_FRAMES", str(FRAMES))
    # Offline: a checkpoint fetched by name would be an error here, never a download.
    monkeypatch.setenv("SAM2LONG_OFFLINE", "1")
    monkeypatch.setenv("SAM2LONG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    started = []
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
        on_notebook_start=lambda notebook: started.append(True),
    )
    try:
        client.execute()
    except CellExecutionError:
        raise
    except Exception as error:
        if not started:
            unavailable(f"the python3 Jupyter kernel ({sys.executable}) did not start: {error!r}")
        raise

    cells = {cell["id"]: cell for cell in nb.cells if cell["cell_type"] == "code"}
    for cell_id, cell in cells.items():
        assert cell["execution_count"] is not None, f"cell {cell_id} did not run"
        errors = [out for out in cell["outputs"] if out["output_type"] == "error"]
        assert not errors, f"cell {cell_id} raised: {errors}"
    with_images = {
        cell_id
        for cell_id, cell in cells.items()
        if any("image/png" in out.get("data", {}) for out in cell["outputs"])
    }
    assert with_images == PLOT_CELLS

    summary = json.loads((work / SUMMARY).read_text(encoding="utf-8"))
    expected_prompts = json.loads((EXAMPLES / "bedroom_prompts.json").read_text(encoding="utf-8"))["prompts"]
    assert summary["prompts"] == expected_prompts
    assert summary["model"] == "sam2.1-tiny"
    assert summary["video_frames"] == 90 and summary["frame_size"] == [270, 480]
    assert summary["objects"] == [1, 2]
    assert summary["num_pathways"] == 3
    # The prompted frame plus FRAMES more, for both trackers.
    assert summary["frames_processed"] == {"sam2": FRAMES + 1, "sam2long": FRAMES + 1}
    # Frame 0 is prompted, frame 1 starts the tree (root), every later frame is a tree selection.
    assert summary["branch_frames"] == {"1": FRAMES - 1, "2": FRAMES - 1}
    # Object-score bias 1.0 keeps every logit inside ±uncertainty (2.0): the uncertain rule is used.
    for obj in ("1", "2"):
        assert 0 < summary["uncertain_frames"][obj] <= summary["branch_frames"][obj]
    height, width = summary["frame_size"]
    for tracker in ("sam2", "sam2long"):
        areas = summary["mean_mask_area"][tracker]
        assert set(areas) == {"1", "2"}
        assert all(0 < area <= height * width for area in areas.values()), areas
    assert summary["best_path_matches_session"] is True
