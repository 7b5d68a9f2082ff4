"""The session output store: bounded RAM, exact spill round trips, and sessions that use it."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from sam2.build_sam import build_sam2_video_predictor
from sam2.utils.output_store import OutputStore, OutputStoreError, entry_bytes

CFG = "configs/sam2.1/sam2.1_hiera_t.yaml"
OVERRIDES = ["++model.image_size=256"]


def _entry(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "maskmem_features": torch.randn(1, 64, 16, 16, generator=g).to(torch.bfloat16),
        "maskmem_pos_enc": [torch.zeros(1, 64, 16, 16)],  # shared: kept by reference, not counted
        "pred_masks": torch.randn(1, 1, 64, 64, generator=g),
        "obj_ptr": torch.randn(1, 256, generator=g),
        "object_score_logits": torch.randn(1, 1, generator=g),
    }


def test_ram_stays_within_budget_and_spilled_entries_round_trip_exactly(tmp_path: Path) -> None:
    size = entry_bytes(_entry(0))
    store = OutputStore(ram_budget_bytes=5 * size, spill_dir=tmp_path)
    frames = store.frames()
    for t in range(300):
        frames[t] = _entry(t)
        assert store.stats.ram_bytes <= 5 * size
    stats = store.stats
    assert stats.ram_entries == 5 and stats.disk_entries == 295 and stats.spills == 295
    assert stats.disk_bytes == 295 * size and stats.peak_ram_bytes <= 5 * size
    assert len(frames) == 300 and sorted(frames) == list(range(300))
    for t in (0, 150, 299):
        expected, got = _entry(t), frames[t]
        for key in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits"):
            assert got[key].dtype == expected[key].dtype and torch.equal(got[key], expected[key]), (t, key)
    assert store.stats.loads == 2, "entry 299 was still in memory"
    assert store.stats.ram_bytes <= 5 * size
    folder = store.spill_folder
    assert folder is not None and folder.parent == tmp_path
    assert len(list(folder.iterdir())) == store.stats.disk_entries


def test_views_into_larger_tensors_are_stored_as_compact_copies(tmp_path: Path) -> None:
    """A row sliced from a batch would keep the whole batch alive, unaccounted, in memory and in
    its spilled file; the store keeps a compact copy, so its byte count is what it really holds."""
    batch = {k: torch.cat([v] * 6) if isinstance(v, torch.Tensor) else v for k, v in _entry(0).items()}
    row = {k: v[2:3] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    store = OutputStore(ram_budget_bytes=0, spill_dir=tmp_path)
    frames = store.frames()
    frames[0] = row
    held = frames[0]
    for key in ("maskmem_features", "pred_masks", "obj_ptr", "object_score_logits"):
        value = held[key]
        assert value.untyped_storage().nbytes() == value.numel() * value.element_size(), key
        assert torch.equal(value, batch[key][2:3]), key
    assert store.stats.ram_bytes == entry_bytes(_entry(0))
    frames[1] = _entry(1)  # spills entry 0
    (spilled,) = store.spill_folder.iterdir()
    assert spilled.stat().st_size < 2 * entry_bytes(_entry(0)), "the file holds the row, not the batch"
    assert torch.equal(frames[0]["maskmem_features"], batch["maskmem_features"][2:3])


def test_removal_deletes_spilled_files_and_the_folder_goes_with_the_store(tmp_path: Path) -> None:
    store = OutputStore(ram_budget_bytes=0, spill_dir=tmp_path)
    a, b = store.frames(), store.frames()
    for t in range(4):
        a[t] = _entry(t)
        b[t] = _entry(10 + t)
    folder = store.spill_folder
    assert store.stats.disk_entries == 7  # the newest entry always stays in memory
    assert a.pop(1)["obj_ptr"].equal(_entry(1)["obj_ptr"])
    del a[2]
    assert 1 not in a and 2 not in a and sorted(a) == [0, 3] and sorted(b) == [0, 1, 2, 3]
    a.clear()
    assert len(a) == 0 and len(b) == 4
    stats = store.stats
    assert stats.ram_entries + stats.disk_entries == 4
    assert len(list(folder.iterdir())) == stats.disk_entries
    assert all(torch.equal(b[t]["pred_masks"], _entry(10 + t)["pred_masks"]) for t in range(4))
    with pytest.raises(KeyError):
        a[0]
    del store, a, b
    gc.collect()
    assert not folder.exists()


def test_no_budget_keeps_everything_in_memory_and_retain_false_keeps_nothing() -> None:
    store = OutputStore(ram_budget_bytes=None)
    frames = store.frames()
    for t in range(20):
        frames[t] = _entry(t)
    assert store.stats.spills == 0 and store.spill_folder is None
    off = OutputStore(retain=False)
    frames = off.frames()
    frames[0] = _entry(0)
    assert 0 not in frames and len(frames) == 0 and frames.get(0) is None


def test_full_disk_fails_with_the_folder_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    frames = OutputStore(ram_budget_bytes=0, spill_dir=tmp_path).frames()
    frames[0] = _entry(0)
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(OutputStoreError, match="No space left") as error:
        frames[1] = _entry(1)
    assert str(tmp_path) in str(error.value)
    assert not [p for p in tmp_path.rglob("*.tmp")], "no half-written file is left"


def test_missing_spill_folder_fails_with_its_name(tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist"
    frames = OutputStore(ram_budget_bytes=0, spill_dir=missing).frames()
    frames[0] = _entry(0)
    with pytest.raises(OutputStoreError, match="does-not-exist"):
        frames[1] = _entry(1)


def test_spill_folder_that_is_a_file_fails_with_its_name(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    frames = OutputStore(ram_budget_bytes=0, spill_dir=not_a_folder).frames()
    frames[0] = _entry(0)
    with pytest.raises(OutputStoreError, match="file"):
        frames[1] = _entry(1)


# --- sessions ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(make_checkpoint):
    ckpt = make_checkpoint(CFG, seed=0, obj_score_bias=1.0)
    return build_sam2_video_predictor(
        CFG, ckpt, device="cpu", hydra_overrides_extra=OVERRIDES, apply_postprocessing=False
    )


def _session(predictor, frames: Path, **kw):
    state = predictor.init_state(str(frames), **kw)
    mask = np.zeros((270, 480), dtype=bool)
    mask[100:200, 150:300] = True
    predictor.add_new_mask(state, 0, 1, mask)
    return state


def _propagate(predictor, state) -> dict[int, torch.Tensor]:
    return {f: m.clone() for f, _, m in predictor.propagate_in_video(state)}


def test_interaction_after_spilling_equals_the_in_memory_session(
    make_checkpoint, bedroom_dir: Path, tmp_path: Path
) -> None:
    """Propagate, click on an already tracked (spilled) frame, propagate again: bit for bit the same
    as a session that keeps everything in memory. The click reads the frame's tracked logits back
    from the store; as a correction it becomes a conditioning frame for the second propagation."""
    predictor = build_sam2_video_predictor(
        CFG,
        make_checkpoint(CFG, seed=0, obj_score_bias=1.0),
        device="cpu",
        hydra_overrides_extra=[*OVERRIDES, "++model.add_all_frames_to_correct_as_cond=true"],
        apply_postprocessing=False,
    )
    results = []
    for budget in (None, 0):
        state = _session(predictor, bedroom_dir, output_ram_budget_bytes=budget, spill_dir=tmp_path)
        first = _propagate(predictor, state)
        _, _, corrected = predictor.add_new_points_or_box(state, 2, 1, points=[[240, 150]], labels=[1])
        second = _propagate(predictor, state)
        results.append((first, corrected.clone(), second, state["output_store"].stats))
    (ram_first, ram_corr, ram_second, ram_stats), (disk_first, disk_corr, disk_second, disk_stats) = results
    assert ram_stats.spills == 0 and disk_stats.spills > 0 and disk_stats.loads > 0
    assert torch.equal(ram_corr, disk_corr)
    for ram, disk in ((ram_first, disk_first), (ram_second, disk_second)):
        assert sorted(ram) == sorted(disk) == list(range(8))
        for f in ram:
            assert torch.equal(ram[f], disk[f]), f
    assert any(not torch.equal(ram_first[f], ram_second[f]) for f in range(3, 8)), "the click changed nothing"


def test_long_propagation_keeps_session_memory_bounded(
    predictor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A few hundred small frames with a tiny budget: the store's own byte count stays under the budget,
    every older output is spilled, and none is lost; freed heap pages are released every 64 frames."""
    import sam2.propagation as propagation
    from sam2.utils.heap import release_free_heap

    assert release_free_heap(), "glibc's malloc_trim is available on Linux"
    releases = []
    monkeypatch.setattr(propagation, "release_free_heap", lambda: releases.append(1) or True)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 255, size=(120, 64, 96, 3), dtype=np.uint8)
    state = predictor.init_state(video, output_ram_budget_bytes=2_000_000, spill_dir=tmp_path)
    predictor.add_new_points_or_box(state, 0, 1, points=[[40, 30]], labels=[1])
    predictor.add_new_points_or_box(state, 0, 2, points=[[70, 20]], labels=[1])
    store = state["output_store"]
    peak = 0
    for _ in predictor.propagate_in_video(state):
        peak = max(peak, store.stats.ram_bytes)
    stats = store.stats
    assert peak <= 2_000_000 and stats.peak_ram_bytes <= 2_000_000
    assert stats.ram_entries + stats.disk_entries == 2 * 119
    assert stats.spills >= 2 * 119 - stats.ram_entries
    assert stats.loads == 0, "memory attention only reads recent outputs, which stay in memory"
    assert len(releases) == 119 // 64
    outputs = state["output_dict_per_obj"]
    assert sorted(outputs[0]["non_cond_frame_outputs"]) == list(range(1, 120))


def test_sam2long_best_path_outputs_spill_and_serve_corrections_like_in_memory(
    make_checkpoint, bedroom_dir: Path, tmp_path: Path
) -> None:
    """SAM2Long writes its committed best-path outputs to the same store; with everything spilled, a
    correction after propagation and a second propagation equal the in-memory session."""
    from sam2long import build_sam2long_video_predictor

    predictor = build_sam2long_video_predictor(
        CFG,
        make_checkpoint(CFG, seed=0, obj_score_bias=1.0),
        device="cpu",
        hydra_overrides_extra=[*OVERRIDES, "++model.add_all_frames_to_correct_as_cond=true"],
        apply_postprocessing=False,
    )
    runs = []
    for budget in (None, 0):
        state = _session(predictor, bedroom_dir, output_ram_budget_bytes=budget, spill_dir=tmp_path)
        first = _propagate(predictor, state)
        _, _, corrected = predictor.add_new_points_or_box(state, 5, 1, points=[[100, 100]], labels=[1])
        second = _propagate(predictor, state)
        runs.append((first, corrected.clone(), second, state["output_store"].stats))
    (a_first, a_corr, a_second, a_stats), (b_first, b_corr, b_second, b_stats) = runs
    assert a_stats.spills == 0 and b_stats.spills > 0 and b_stats.loads > 0
    assert torch.equal(a_corr, b_corr)
    for a, b in ((a_first, b_first), (a_second, b_second)):
        assert sorted(a) == sorted(b) == list(range(8))
        assert all(torch.equal(a[f], b[f]) for f in a)


def test_sam2long_session_outputs_own_their_memory(make_checkpoint, bedroom_dir: Path) -> None:
    """Outputs SAM2Long stores for two objects x three pathways are not views of the per-frame batch:
    each tensor's storage is exactly its own size, so the store's byte count is the memory held."""
    from sam2long import build_sam2long_video_predictor

    predictor = build_sam2long_video_predictor(
        CFG, make_checkpoint(CFG, seed=0, obj_score_bias=1.0), device="cpu", hydra_overrides_extra=OVERRIDES
    )
    state = _session(predictor, bedroom_dir)
    predictor.add_new_points_or_box(state, 0, 2, points=[[100, 60]], labels=[1])
    _propagate(predictor, state)
    held = 0
    for obj_idx in (0, 1):
        outputs = state["output_dict_per_obj"][obj_idx]["non_cond_frame_outputs"]
        assert sorted(outputs) == list(range(1, 8))
        for out in outputs.values():
            for key, value in out.items():
                if key != "maskmem_pos_enc":
                    assert value.untyped_storage().nbytes() == value.numel() * value.element_size(), key
                    held += value.untyped_storage().nbytes()
    assert state["output_store"].stats.ram_bytes == held
