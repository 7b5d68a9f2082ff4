"""Prompts files and command-line prompts: the schema, and errors that name the bad entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sam2long.cli import _command_line_prompts
from sam2long.mask_io import write_png
from sam2long.prompts import Prompt, PromptError, load_prompts, parse_box, parse_point


def _write(tmp_path: Path, payload) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps(payload) if not isinstance(payload, str) else payload)
    return path


def test_a_valid_file_gives_prompts_in_order(tmp_path: Path) -> None:
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3, 2:5] = 1
    write_png(tmp_path / "m.png", mask)
    path = _write(
        tmp_path,
        {
            "prompts": [
                {"obj": 1, "frame": 0, "points": [[10, 20], [30, 40]], "labels": [1, 0]},
                {"obj": 2, "frame": 3, "box": [1, 2, 30, 40]},
                {"obj": 3, "frame": 5, "mask": "m.png"},
            ]
        },
    )
    one, two, three = load_prompts(path)
    assert (one.obj_id, one.frame_idx, one.points, one.labels) == (1, 0, [[10.0, 20.0], [30.0, 40.0]], [1, 0])
    assert (two.obj_id, two.frame_idx, two.box, two.points) == (2, 3, [1.0, 2.0, 30.0, 40.0], None)
    assert three.mask_path == tmp_path / "m.png" and np.array_equal(three.load_mask(), mask > 0)


@pytest.mark.parametrize(
    "payload, message",
    [
        ("{not json", "not valid JSON"),
        ({"objects": []}, r'expected \{"prompts": \[...\]\}'),
        ({"prompts": []}, "at least one entry"),
        ({"prompts": [{"obj": 1, "frame": 0}]}, r"prompts\[0\]: give points, a box or a mask"),
        (
            {"prompts": [{"obj": 0, "frame": 0, "box": [0, 0, 1, 1]}]},
            r"prompts\[0\]: 'obj' must be an integer >= 1",
        ),
        (
            {"prompts": [{"obj": 1, "frame": -2, "box": [0, 0, 1, 1]}]},
            r"'frame' must be an integer >= 0, got -2",
        ),
        ({"prompts": [{"obj": 1, "frame": 0, "box": [0, 0, 1]}]}, r"'box' must be \[x0, y0, x1, y1\]"),
        ({"prompts": [{"obj": 1, "frame": 0, "points": [1, 2]}]}, r"'points' must be \[\[x, y\], ...\]"),
        ({"prompts": [{"obj": 1, "frame": 0, "points": [["a", 2]]}]}, "'points' must be"),
        (
            {"prompts": [{"obj": 1, "frame": 0, "mask": "missing.png"}]},
            "mask file .*missing.png does not exist",
        ),
        (
            {"prompts": [{"obj": 1, "frame": 0, "box": [0, 0, 1, 1], "colour": 3}]},
            r"unknown keys \['colour'\]",
        ),
        ({"prompts": [{"obj": 1, "frame": 0, "box": [0, 0, 1, 1]}, 7]}, r"prompts\[1\]: expected an object"),
    ],
)
def test_bad_files_name_the_entry(tmp_path: Path, payload, message: str) -> None:
    with pytest.raises(PromptError, match=message):
        load_prompts(_write(tmp_path, payload))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(PromptError, match="cannot read prompts file .*nope.json"):
        load_prompts(tmp_path / "nope.json")


def test_command_line_prompts_group_by_object_and_frame() -> None:
    items = [
        ("--point", "10,20", 0, 1),
        ("--point", "30,40,0", 0, 1),
        ("--box", "1,2,30,40", 4, 2),
        ("--point", "5,6", 4, 2),
        ("--mask", "m.png", 2, 3),
    ]
    prompts = {(p.obj_id, p.frame_idx): p for p in _command_line_prompts(items)}
    assert prompts[(1, 0)].points == [[10.0, 20.0], [30.0, 40.0]] and prompts[(1, 0)].labels == [1, 0]
    assert prompts[(2, 4)].box == [1.0, 2.0, 30.0, 40.0] and prompts[(2, 4)].points == [[5.0, 6.0]]
    assert prompts[(3, 2)].mask_path == Path("m.png")
    for bad, parse in (("1,2,5", parse_point), ("x,y", parse_point), ("1,2,3", parse_box)):
        with pytest.raises(PromptError, match=bad):
            parse(bad)


def test_predictor_errors_are_reported_with_the_source() -> None:
    class Refusing:
        def add_new_points_or_box(self, *args, **kwargs):
            raise ValueError("frame_idx 99 is outside the video's frames 0..7")

    prompt = Prompt(2, 99, box=[0, 0, 5, 5], source="prompts.json prompts[4]")
    with pytest.raises(PromptError, match=r"prompts\[4\] \(object 2, frame 99\): frame_idx 99 is outside"):
        prompt.apply(Refusing(), state=None)
