"""The VOT toolkit's tracker command (``sam2long-vot``): any of our trackers over TraX.

The toolkit starts this command (``trackers.ini``) and talks TraX to it (``vot-trax``): an *initialize*
request brings the first image (a file path) and one region per object, then one *frame* request per
image, each answered with every object's region before the next image comes. Regions are masks (VOT
2020/2022 short-term, VOTS; a TraX mask may carry an offset, placed exactly) or rectangles; a mask
becomes a mask prompt, a rectangle a box prompt. Each object is answered in the format it was given in
(``--output auto``), or always as masks / rectangles. Several objects (VOTS) use TraX's multi-object
protocol; objects the toolkit adds on later frames join there.

Tracking is the library's live mode: a :class:`~sam2long.live.LiveStreamSource` whose capture is the
TraX channel, one session per initialize request, and :func:`sam2long.pipeline.track` with prompts for
late objects given from ``before_frame``. TraX is causal: the answer for frame ``t`` is sent when the
tracker asks for frame ``t + 1``. SAM 2's answers are final by then. SAM2Long may keep a frame undecided
longer (its pathways have not agreed yet); it then answers with the mask of the pathway that is best on
that frame (from the observer's records): an online answer, which may differ from the tree's final one
(the best pathway after the last frame). The tree's later commitment keeps steering the tracking but
cannot change an answer already sent.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sam2long.live import LiveStreamSource

OUTPUTS = ("auto", "mask", "rectangle")
#: SAM2Long's ``max_lag`` here unless ``--max_lag`` / ``--no_max_lag`` is given (as ``sam2long segment --live``)
DEFAULT_MAX_LAG = 8


class VotInputError(ValueError):
    """A request of the toolkit that cannot be tracked: a bad region, image or object list."""


# ---------------------------------------------------------------------------------------------- regions


def place_mask(array: np.ndarray, offset: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """A TraX mask (``array`` ``(h, w)``, its top-left corner at ``offset = (x, y)``) as a boolean
    ``(H, W)`` image mask; the parts outside the image are cut off."""
    height, width = size
    x, y = int(offset[0]), int(offset[1])
    full = np.zeros((height, width), dtype=bool)
    top, left = max(y, 0), max(x, 0)
    bottom, right = min(y + array.shape[0], height), min(x + array.shape[1], width)
    if bottom > top and right > left:
        full[top:bottom, left:right] = array[top - y : bottom - y, left - x : right - x] > 0
    return full


def mask_bounds(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of the foreground pixels, inclusive (None for an empty mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1])


def box_mask(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie inside ``box = (x0, y0, x1, y1)``."""
    height, width = size
    x0, y0, x1, y1 = box
    cols = (np.arange(width) + 0.5 >= x0) & (np.arange(width) + 0.5 <= x1)
    rows = (np.arange(height) + 0.5 >= y0) & (np.arange(height) + 0.5 <= y1)
    return rows[:, None] & cols[None, :]


@dataclass(frozen=True)
class Target:
    """One object as the toolkit gave it: its prompt on frame ``frame`` (a mask or an ``(x0, y0, x1, y1)``
    box) and the region type its answers are sent in."""

    obj_id: int
    frame: int
    output: str  # "mask" or "rectangle"
    mask: Optional[np.ndarray] = None
    box: Optional[tuple[float, float, float, float]] = None

    def prompt_mask(self, size: tuple[int, int]) -> np.ndarray:
        """The prompt as a mask: the answer on the frame the object was given on."""
        return self.mask if self.mask is not None else box_mask(self.box, size)


def target_from_region(region: Any, obj_id: int, frame: int, size: tuple[int, int], output: str) -> Target:
    """The :class:`Target` of a TraX region given for object ``obj_id`` on ``frame`` of a ``size`` video."""
    from trax.region import Region

    what = f"object {obj_id} on frame {frame}"
    kind = region.type
    if kind == Region.MASK:
        mask = place_mask(region.array(), region.offset(), size)
        if not mask.any():
            raise VotInputError(f"{what}: the mask region is empty inside the {size[1]}x{size[0]} image")
        return Target(obj_id, frame, "mask" if output == "auto" else output, mask=mask)
    if kind == Region.RECTANGLE:
        x, y, width, height = region.bounds()
        if not (np.isfinite([x, y, width, height]).all() and width > 0 and height > 0):
            raise VotInputError(f"{what}: the rectangle {x},{y} {width}x{height} has no area")
        box = (float(x), float(y), float(x + width), float(y + height))
        if not box_mask(box, size).any():
            raise VotInputError(f"{what}: the rectangle {x},{y} {width}x{height} lies outside the image")
        return Target(obj_id, frame, "rectangle" if output == "auto" else output, box=box)
    raise VotInputError(f"{what}: region type {kind!r} is not supported; give a mask or a rectangle")


def encode_region(mask: np.ndarray, output: str) -> Any:
    """A boolean image mask as a TraX region: a mask cropped to its bounding box (the offset says where)
    or that bounding box as a rectangle; an empty mask is a 1x1 empty mask / a 0x0 rectangle."""
    from trax.region import Mask, Rectangle

    bounds = mask_bounds(mask)
    if output == "rectangle":
        if bounds is None:
            return Rectangle.create(0, 0, 0, 0)
        x0, y0, x1, y1 = bounds
        return Rectangle.create(x0, y0, x1 - x0 + 1, y1 - y0 + 1)
    if bounds is None:
        return Mask.create(np.zeros((1, 1), dtype=np.uint8), 0, 0)
    x0, y0, x1, y1 = bounds
    crop = np.ascontiguousarray(mask[y0 : y1 + 1, x0 : x1 + 1], dtype=np.uint8)
    return Mask.create(crop, x0, y0)


def read_request_image(images: dict, size: Optional[tuple[int, int]]) -> np.ndarray:
    """The colour image of a request as BGR (what a capture returns), checked against the session's frame
    ``size``. Decoded as image folders are (PIL), so the frames equal an offline run's."""
    from trax.image import Image

    from sam2.utils.frame_sources import FrameSourceError, read_image_file

    image = images.get("color")
    if image is None:
        raise VotInputError(f"the request has no colour image (channels: {sorted(images)})")
    if image.type() != Image.PATH:
        raise VotInputError(f"images must be given as file paths, got {image.type()!r}")
    path = image.path()
    try:
        rgb = read_image_file(Path(path))
    except FrameSourceError as error:
        raise VotInputError(str(error)) from error
    if size is not None and rgb.shape[:2] != size:
        raise VotInputError(
            f"image {path} is {rgb.shape[0]}x{rgb.shape[1]} (HxW) but the sequence's first frame is "
            f"{size[0]}x{size[1]}"
        )
    return np.ascontiguousarray(rgb[..., ::-1])


# ---------------------------------------------------------------------------------------------- answers


class Answers:
    """Every object's answer per frame: final masks (yielded frames) and provisional ones (the observer's
    best pathway), fixed when the frame is *settled*, i.e. when the tracker asks for the next frame."""

    def __init__(self, size: tuple[int, int], score_thresh: float) -> None:
        self.size = size
        self.score_thresh = score_thresh
        self.targets: list[Target] = []
        self._masks: dict[int, dict[int, np.ndarray]] = {}  # frame -> object -> mask
        self._provisional: dict[int, dict[int, Any]] = {}  # frame -> object -> low-res logits
        self._settled = -1
        self._model: Any = None
        self._state: Any = None

    def bind(self, predictor: Any, state: Any) -> None:
        """The predictor and session that turn provisional logits into masks."""
        self._model, self._state = predictor, state

    def add_target(self, target: Target) -> None:
        """An object given on ``target.frame``: its answer there is its prompt."""
        if any(t.obj_id == target.obj_id for t in self.targets):
            raise VotInputError(f"object {target.obj_id} is given twice")
        self.targets.append(target)
        self._masks.setdefault(target.frame, {})[target.obj_id] = target.prompt_mask(self.size)

    def targets_on(self, frame: int) -> list[Target]:
        return [t for t in self.targets if t.frame == frame]

    def final(self, frame: int, masks: dict[int, np.ndarray]) -> None:
        """Final masks of a yielded frame (ignored once the frame is settled: its answer was sent)."""
        if frame > self._settled:
            answer = self._masks.setdefault(frame, {})
            for obj_id, mask in masks.items():
                answer.setdefault(obj_id, mask)

    def observe(self, record: Any) -> None:
        """Observer of the propagation: keep the best pathway's logits of a tracked frame."""
        if record.frame_idx is None or record.best_pathway is None or record.kind in ("prompt", "absent"):
            return
        node = record.pathway_nodes[record.best_pathway]
        logits = next((c.pred_masks for c in record.created if c.node == node), None)
        if logits is not None and record.frame_idx > self._settled:
            self._provisional.setdefault(record.frame_idx, {})[int(record.obj_id)] = logits

    def settle(self, frame: int) -> list:
        """The TraX objects of ``frame`` (the tracker has moved past it), in the order objects were given;
        frames are settled in order."""
        if frame != self._settled + 1:
            raise RuntimeError(f"frame {frame} settled after frame {self._settled}")
        answer = self._masks.pop(frame, {})
        pending = self._provisional.pop(frame, {})
        targets = [t for t in self.targets if t.frame <= frame]
        for target in targets:
            if target.obj_id in answer:
                continue
            logits = pending.get(target.obj_id)
            if logits is None:
                raise RuntimeError(f"the tracker gave no mask for object {target.obj_id} on frame {frame}")
            full = self._model.video_res_masks(self._state, self._model.postprocess_masks(logits))
            answer[target.obj_id] = (full[0, 0] > self.score_thresh).cpu().numpy()
        self._settled = frame
        return [(encode_region(answer[t.obj_id], t.output), {}) for t in targets]


# ---------------------------------------------------------------------------------------------- stream


class QueueCapture:
    """An OpenCV-like capture of frames handed over one by one (``(ok, bgr)`` pairs; ``end()`` ends it)."""

    def __init__(self) -> None:
        self._frames: queue.Queue = queue.Queue()

    def put(self, bgr: np.ndarray) -> None:
        self._frames.put((True, bgr))

    def end(self) -> None:
        self._frames.put((False, None))

    def read(self) -> tuple[bool, Optional[np.ndarray]]:
        return self._frames.get()

    def release(self) -> None:
        self.end()


class TraxStreamSource(LiveStreamSource):
    """The live source of one TraX session: frames in order, none dropped. When the tracker asks for frame
    ``t + 1`` the answer of frame ``t`` is sent and the toolkit's next request is read (all TraX traffic on
    the tracker's thread); a frame request brings the image (and objects that join there), another
    initialize request or quit ends the stream and is kept in :attr:`next_request`."""

    def __init__(self, server: Any, answers: Answers, first_bgr: np.ndarray, output: str) -> None:
        self.server = server
        self.answers = answers
        self.output = output
        self.next_request: Any = None
        self._received = 1  # frames received from the toolkit
        self._feed = QueueCapture()
        self._feed.put(first_bgr)
        super().__init__("TraX", drop="none", buffer=1, capture=self._feed)

    def _receive(self, index: int) -> None:
        """Answer frame ``index - 1`` and read the toolkit's next request (once per frame)."""
        from trax import TraxStatus

        if index < self._received or self.next_request is not None:
            return
        self.server.status(self.answers.settle(index - 1))
        request = self.server.wait()
        if request.type != TraxStatus.FRAME:
            self.next_request = request
            self._feed.end()
            return
        bgr = read_request_image(request.image, self.answers.size)
        first_id = len(self.answers.targets) + 1
        for number, (region, _) in enumerate(request.objects or ()):
            self.answers.add_target(
                target_from_region(region, first_id + number, index, self.answers.size, self.output)
            )
        self._received += 1
        self._feed.put(bgr)

    def has_frame(self, index: int) -> bool:
        self._receive(index)
        return super().has_frame(index)

    def get(self, index: int) -> np.ndarray:
        self._receive(index)
        return super().get(index)


def prompt(predictor: Any, state: Any, targets: Sequence[Target]) -> None:
    """Give each target's mask or box on its frame."""
    for target in targets:
        if target.mask is not None:
            predictor.add_new_mask(state, target.frame, target.obj_id, target.mask)
        else:
            predictor.add_new_points_or_box(state, target.frame, target.obj_id, box=list(target.box))


def run_session(server: Any, predictor: Any, request: Any, output: str, score_thresh: float = 0.0) -> Any:
    """Track one initialize request to its end; returns the request that ended it (quit or initialize)."""
    import torch

    from sam2long.pipeline import TrackResult, track

    first = read_request_image(request.image, None)
    size = first.shape[:2]
    if not request.objects:
        raise VotInputError("the initialize request gives no object")
    answers = Answers(size, score_thresh)
    for number, (region, _) in enumerate(request.objects):
        answers.add_target(target_from_region(region, number + 1, 0, size, output))
    source = TraxStreamSource(server, answers, first, output)
    try:
        with torch.inference_mode():
            state = predictor.init_state(source)
            answers.bind(predictor, state)
            prompt(predictor, state, answers.targets_on(0))

            def before_frame(frame_idx: int) -> None:
                if frame_idx > 0:
                    prompt(predictor, state, answers.targets_on(frame_idx))

            frames = track(
                predictor,
                state,
                TrackResult("vot"),
                score_thresh=score_thresh,
                observer=answers.observe,
                before_frame=before_frame,
            )
            for frame in frames:
                answers.final(frame.index, frame.masks)
    finally:
        source.close()
    return source.next_request


# ---------------------------------------------------------------------------------------------- command


class WholeLines(io.TextIOBase):
    """A text stream that passes on only whole lines (a carriage return, as progress bars write, ends a
    line too), so nothing it writes can precede a TraX message on the same line."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._pending + text.replace("\r", "\n")).split("\n")
        self._pending = lines.pop()
        whole = "".join(line + "\n" for line in lines if line)
        if whole:
            self.stream.write(whole)
            self.stream.flush()
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


def build_parser() -> argparse.ArgumentParser:
    from sam2long.config import add_config_arguments
    from sam2long.models import add_model_arguments
    from sam2long.tracker_spec import TRACKERS

    parser = argparse.ArgumentParser(
        prog="sam2long-vot",
        description="Tracker command for the VOT toolkit (TraX over stdin/stdout): put it in trackers.ini; "
        "the toolkit starts it and sends the images and regions.",
    )
    parser.add_argument("--tracker", choices=TRACKERS, default="sam2long", help="default: %(default)s")
    parser.add_argument(
        "--output",
        choices=OUTPUTS,
        default="auto",
        help="region type of the answers: auto = the type each object was given in (default: %(default)s)",
    )
    parser.add_argument(
        "--score_thresh", type=float, default=0.0, help="mask logit threshold (default: %(default)s)"
    )
    add_model_arguments(parser)
    add_config_arguments(parser.add_argument_group("SAM2Long (with --tracker sam2long)"))
    return parser


def _spec(args: argparse.Namespace, config_file: str, checkpoint: str) -> Any:
    from sam2long.tracker_spec import spec_from_args

    return spec_from_args(args, config_file, checkpoint, DEFAULT_MAX_LAG, apply_postprocessing=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``sam2long-vot``: serve TraX requests until the toolkit quits; returns the exit status."""
    args = build_parser().parse_args(None if argv is None else list(argv))
    from sam2long.config import SAM2LongConfig

    tree_flags = [f"--{n}" for n in (*SAM2LongConfig.field_names(), "preset") if getattr(args, n) is not None]
    if args.tracker == "sam2" and tree_flags:
        print(f"error: --tracker sam2 takes no SAM2Long settings ({', '.join(tree_flags)})", file=sys.stderr)
        return 2
    if "TRAX" not in os.environ and "TRAX_SOCKET" not in os.environ:
        print(
            "error: sam2long-vot is started by the VOT toolkit (trackers.ini, `vot evaluate`), which talks "
            "TraX to it; TRAX is not set, so no toolkit is listening",
            file=sys.stderr,
        )
        return 2
    try:
        from trax import Server, TraxException, TraxStatus
        from trax.image import Image
        from trax.region import Region
    except ImportError as error:
        print(f"error: sam2long-vot needs vot-trax: pip install 'sam2long[vot]' ({error})", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from sam2.build_sam import default_device
    from sam2.utils.frame_sources import FrameSourceError
    from sam2long.models import model_files_from_args

    # The toolkit reads stdout (TraX) and stderr through one pipe and takes TraX messages only at the
    # start of a line: stderr goes out in whole lines, written on this thread between TraX messages
    # (no progress-bar monitor thread).
    tqdm.monitor_interval = 0
    sys.stderr = WholeLines(sys.stderr)

    config_file, checkpoint, _ = model_files_from_args(args)
    try:
        spec = _spec(args, config_file, checkpoint)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    predictor = spec.build(args.device or default_device(), non_overlap_masks=False)
    server = Server(
        [Region.MASK, Region.RECTANGLE],
        [Image.PATH],
        tracker_name=f"sam2long-vot ({spec.label()})",
        multiobject=True,
    )
    try:
        request = server.wait()
        while request is not None and request.type == TraxStatus.INITIALIZE:
            request = run_session(server, predictor, request, args.output, args.score_thresh)
    except (VotInputError, FrameSourceError, RuntimeError, TraxException) as error:
        print(f"error: {error}", file=sys.stderr)
        server.quit(reason=str(error))
        return 1
    server.quit()
    return 0


if __name__ == "__main__":
    sys.exit(main())
