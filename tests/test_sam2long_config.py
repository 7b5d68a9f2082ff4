"""SAM2Long settings declared once: resolve, generated CLI flags, packaged presets, the builder."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
import torch

from sam2.build_sam import default_device
from sam2long import build_sam2long_video_predictor
from sam2long.config import (
    SAM2LongConfig,
    add_config_arguments,
    available_presets,
    config_from_args,
    preset_path,
)
from sam2long.predictor import SAM2LongVideoPredictor

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
SMALL_IMAGE = ["++model.image_size=256"]

# One non-default command line per field, with the value it must give. A new field without an
# entry here fails test_every_field_round_trips_through_its_flag.
FLAG_EXAMPLES = {
    "num_pathways": (["--num_pathways", "5"], 5),
    "iou_threshold": (["--iou_threshold", "0.45"], 0.45),
    "uncertainty": (["--uncertainty", "0.5"], 0.5),
    "memory_modulation": (["--memory_modulation", "0.8", "1.2"], (0.8, 1.2)),
    "memory_selection": (["--no_memory_selection"], False),
    "eps": (["--eps", "0.001"], 0.001),
    "max_lag": (["--max_lag", "16"], 16),
    "memory_rule": (["--memory_rule", "samurai"], "samurai"),
    "memory_motion_threshold": (["--memory_motion_threshold", "0.2"], 0.2),
    "motion_weight": (["--motion_weight", "0.25"], 0.25),
    "motion_warmup": (["--motion_warmup", "4"], 4),
    "motion_min_iou": (["--motion_min_iou", "0.5"], 0.5),
    "object_threshold": (["--object_threshold", "-1"], -1.0),
}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser.add_argument_group("tree"))
    return parser.parse_args(argv)


# --------------------------------------------------------------------------- resolve


def test_resolve_defaults_are_the_official_preset() -> None:
    assert SAM2LongConfig.resolve() == SAM2LongConfig.from_preset("official") == SAM2LongConfig()
    assert SAM2LongConfig.resolve().num_pathways == 3


def test_resolve_preset_with_overrides() -> None:
    paper = SAM2LongConfig.resolve("paper")
    assert paper.iou_threshold == 0.3 and paper.num_pathways == 3
    tuned = SAM2LongConfig.resolve("paper", num_pathways=5, memory_modulation=None)
    assert (tuned.iou_threshold, tuned.num_pathways, tuned.memory_modulation) == (0.3, 5, None)


def test_resolve_instance_is_passed_through_or_overridden() -> None:
    custom = SAM2LongConfig(num_pathways=2, memory_modulation=None)
    assert SAM2LongConfig.resolve(custom) is custom
    changed = SAM2LongConfig.resolve(custom, iou_threshold=0.7)
    assert (changed.num_pathways, changed.memory_modulation, changed.iou_threshold) == (2, None, 0.7)
    assert custom.iou_threshold == 0.1  # the base is not modified


def test_resolve_mapping_with_overrides() -> None:
    config = SAM2LongConfig.resolve({"num_pathways": 4, "max_lag": 10}, max_lag=20)
    assert (config.num_pathways, config.max_lag, config.iou_threshold) == (4, 20, 0.1)
    with pytest.raises(ValueError, match="unknown SAM2Long config keys"):
        SAM2LongConfig.resolve({"num_pathway": 4})


def test_resolve_validates_overrides() -> None:
    with pytest.raises(ValueError, match="num_pathways must be >= 1"):
        SAM2LongConfig.resolve(num_pathways=0)
    with pytest.raises(ValueError, match="iou_threshold"):
        SAM2LongConfig.resolve("paper", iou_threshold=2.0)
    with pytest.raises(ValueError, match="unknown SAM2Long preset 'nope'"):
        SAM2LongConfig.resolve("nope")
    with pytest.raises(TypeError, match="config must be"):
        SAM2LongConfig.resolve(3)


def test_resolve_unknown_override_names_it_and_lists_fields() -> None:
    with pytest.raises(ValueError, match="num_pathway'") as err:
        SAM2LongConfig.resolve("paper", num_pathway=2)
    for name in SAM2LongConfig.field_names():
        assert name in str(err.value)


# --------------------------------------------------------------------------- presets


def test_presets_are_package_data() -> None:
    assert {"official", "paper"} <= set(available_presets())
    resource = preset_path("paper")
    assert resource.name == "paper.yaml" and resource.parent.name == "presets"
    assert resource.parent.parent.name == "sam2long"
    assert SAM2LongConfig.from_preset("paper", max_lag=3).max_lag == 3
    with pytest.raises(ValueError, match="invalid preset name"):
        preset_path("../official")


# --------------------------------------------------------------------------- command line


def test_every_field_has_help_and_a_generated_flag() -> None:
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    dests = {action.dest: action for action in parser._actions}
    for f in dataclasses.fields(SAM2LongConfig):
        assert f.metadata.get("help"), f"field {f.name} has no help text"
        assert f.name in dests, f"field {f.name} has no generated flag"
        assert f"--{f.name}" in parser._option_string_actions
        assert dests[f.name].default is None
    assert "preset" in dests


def test_every_field_round_trips_through_its_flag() -> None:
    assert set(FLAG_EXAMPLES) == set(SAM2LongConfig.field_names())
    defaults = SAM2LongConfig()
    for name, (argv, expected) in FLAG_EXAMPLES.items():
        assert getattr(defaults, name) != expected
        config = config_from_args(_parse(argv))
        assert getattr(config, name) == expected, name
        others = {n for n in SAM2LongConfig.field_names() if n != name}
        assert all(getattr(config, n) == getattr(defaults, n) for n in others), name


def test_official_script_flag_names() -> None:
    args = _parse(["--num_pathway", "2", "--iou_thre", "0.3", "--uncertainty", "1"])
    assert (args.num_pathways, args.iou_threshold, args.uncertainty) == (2, 0.3, 1.0)
    config = config_from_args(args)
    assert (config.num_pathways, config.iou_threshold, config.uncertainty) == (2, 0.3, 1.0)


def test_no_flags_gives_defaults_and_unset_values_are_none() -> None:
    args = _parse([])
    assert all(getattr(args, name) is None for name in SAM2LongConfig.field_names())
    assert args.preset is None
    assert config_from_args(args) == SAM2LongConfig()


def test_switch_off_flags() -> None:
    config = config_from_args(_parse(["--no_memory_modulation", "--no_memory_selection"]))
    assert config.memory_modulation is None and config.memory_selection is False
    assert config_from_args(_parse(["--memory_selection"])).memory_selection is True
    assert config_from_args(_parse(["--max_lag", "4"])).max_lag == 4
    assert config_from_args(_parse(["--no_max_lag"])).max_lag is None
    with pytest.raises(SystemExit):
        _parse(["--memory_selection", "--no_memory_selection"])
    with pytest.raises(SystemExit):
        _parse(["--memory_modulation", "0.9"])


def test_preset_flag_with_overrides() -> None:
    assert config_from_args(_parse(["--preset", "paper"])) == SAM2LongConfig.from_preset("paper")
    config = config_from_args(_parse(["--preset", "paper", "--num_pathway", "5", "--no_memory_modulation"]))
    assert (config.iou_threshold, config.num_pathways, config.memory_modulation) == (0.3, 5, None)
    config = config_from_args(_parse(["--preset", "paper", "--iou_thre", "0.2"]))
    assert config.iou_threshold == 0.2


def test_invalid_flag_values_raise_value_error() -> None:
    with pytest.raises(ValueError, match="num_pathways"):
        config_from_args(_parse(["--num_pathway", "0"]))
    with pytest.raises(ValueError, match="unknown SAM2Long preset"):
        config_from_args(_parse(["--preset", "nope"]))


# --------------------------------------------------------------------------- builder


@pytest.fixture(scope="module")
def paper_model() -> SAM2LongVideoPredictor:
    return build_sam2long_video_predictor(
        TINY, None, device="cpu", hydra_overrides_extra=SMALL_IMAGE, config="paper", num_pathways=4
    )


def test_builder_passes_the_config_at_construction(
    paper_model: SAM2LongVideoPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(paper_model, SAM2LongVideoPredictor)
    assert paper_model.tracker.config == SAM2LongConfig.from_preset("paper", num_pathways=4)
    assert paper_model.tracker.store_outputs is True
    assert paper_model.image_size == 256 and not paper_model.training

    seen: list[dict] = []
    original = SAM2LongVideoPredictor.__init__

    def spy(self, *args, **kwargs):
        seen.append({"config": kwargs.get("config"), "store_outputs": kwargs.get("store_outputs")})
        original(self, *args, **kwargs)

    monkeypatch.setattr(SAM2LongVideoPredictor, "__init__", spy)
    custom = SAM2LongConfig(num_pathways=2, memory_modulation=None)
    model = build_sam2long_video_predictor(
        TINY, device="cpu", hydra_overrides_extra=SMALL_IMAGE, config=custom, store_outputs=False
    )
    assert seen == [{"config": custom, "store_outputs": False}]
    assert seen[0]["config"] is custom and model.tracker.config is custom
    assert model.tracker.store_outputs is False


def test_builder_rejects_bad_settings_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args, **kwargs):
        raise AssertionError("the model must not be built")

    monkeypatch.setattr("sam2long.build.build_video_predictor_class", no_build)
    with pytest.raises(ValueError, match="num_pathways must be >= 1"):
        build_sam2long_video_predictor(TINY, device="cpu", num_pathways=0)
    with pytest.raises(ValueError, match="'iou_thre'"):
        build_sam2long_video_predictor(TINY, device="cpu", iou_thre=0.3)
    with pytest.raises(ValueError, match="vos_optimized") as err:
        build_sam2long_video_predictor(TINY, device="cpu", vos_optimized=True)
    assert "SAM 2 only" in str(err.value) and "build_sam2_video_predictor" in str(err.value)


def test_builder_keeps_positional_config_ckpt_device() -> None:
    with pytest.raises(TypeError):
        build_sam2long_video_predictor(TINY, None, "cpu", "paper")


# --------------------------------------------------------------------------- device


@pytest.mark.parametrize(
    ("cuda", "environ", "expected"),
    [
        (False, {}, "cpu"),
        (False, {"LOCAL_RANK": "3"}, "cpu"),
        (True, {}, "cuda"),
        (True, {"LOCAL_RANK": "3", "RANK": "7"}, "cuda:3"),
    ],
)
def test_default_device(monkeypatch: pytest.MonkeyPatch, cuda: bool, environ: dict, expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert default_device(environ) == expected


def test_default_device_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert default_device() == "cuda:1"
    monkeypatch.delenv("LOCAL_RANK")
    assert default_device() == "cuda"
