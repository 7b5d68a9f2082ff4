"""What the demo does, without Gradio or a browser: one :class:`DemoSession` per browser tab.

:class:`DemoEngine` holds what all tabs share: the model settings, the limits on uploads and the
predictors (one SAM 2 predictor, SAM2Long predictors per tree config, least recently used first
out), all model work running under one lock. A :class:`DemoSession` holds everything of one tab: its
video (copied into the tab's own temporary folder), its objects and clicks, a SAM2Long inference
session that receives every click at once (the mask preview), an optional SAM 2 session that gets
the same clicks replayed when a comparison is asked for, the latest run's outputs and its pathway
records (from the predictor's public ``observer=`` hook). Two sessions share no mutable state.

Clicks are SAM 2's: ``add_new_points_or_box`` with all clicks (and the box) of the object on that
frame, so a click after a propagation refines the tracked mask there; ``propagate`` then runs from
the earliest prompted frame forward. Prompt handling is SAM 2 code, the same for every tree config,
so the one session serves SAM2Long predictors with different settings.

User mistakes (no video, no clicks, a bad file, a too large upload) raise :class:`DemoError` with a
message for the page; nothing here leaves a session half-changed by a failed request.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from sam2.utils.frame_sources import FrameSource, FrameSourceError, open_frame_source
from sam2long.config import SAM2LongConfig
from sam2long.export import draw_overlay, object_colour
from sam2long.mask_io import atomic_write_text
from sam2long.outputs import result_masks, write_outputs
from sam2long.pipeline import TrackResult, track
from sam2long.tracker_spec import TREE_TRACKERS, TrackerSpec

CLICK_MODES = ("positive", "negative", "box")
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm"})
Progress = Callable[[float, str], None]


class DemoError(ValueError):
    """A request the demo cannot serve, with a message for the page."""


@dataclass(frozen=True)
class ModelSettings:
    """The SAM 2 model under both trackers."""

    config_file: str
    checkpoint: str
    hydra_overrides: tuple[str, ...] = ()
    device: str = "cpu"
    name: Optional[str] = None  # model name, for the page
    dtype: str = "float32"  # precision policy (sam2.precision); the command passes --dtype


@dataclass(frozen=True)
class Limits:
    """What one tab may load and show."""

    max_upload_bytes: int = 200 * 2**20
    max_video_frames: int = 3000
    max_display_side: int = 1280  # frames larger than this are shown downscaled


# A click on an already tracked frame becomes a conditioning frame, so a correction survives the next
# propagation (SAM 2's default keeps it as an ordinary tracked output that propagation recomputes).
CORRECTIONS_AS_COND = "++model.add_all_frames_to_correct_as_cond=true"


class DemoEngine:
    """Predictors shared by all sessions, built on first use; model calls run under :attr:`lock`.

    Both trackers get :data:`CORRECTIONS_AS_COND` before the user's hydra overrides."""

    def __init__(self, model: ModelSettings, limits: Optional[Limits] = None, cache_size: int = 2) -> None:
        self.model = model
        self.limits = limits or Limits()
        self.cache_size = cache_size
        self.lock = threading.RLock()
        self._sam2long: OrderedDict[SAM2LongConfig, Any] = OrderedDict()
        self._sam2: Any = None
        self._sessions: weakref.WeakSet[DemoSession] = weakref.WeakSet()

    @property
    def hydra_overrides(self) -> list[str]:
        return [CORRECTIONS_AS_COND, *self.model.hydra_overrides]

    def spec(self, tracker: str, sam2long_config: Optional[SAM2LongConfig] = None) -> TrackerSpec:
        """``tracker`` on the engine's model (post-processing on, as upstream's builders)."""
        return TrackerSpec.create(
            tracker,
            self.model.config_file,
            self.model.checkpoint,
            lambda preset: SAM2LongConfig.resolve(preset) if sam2long_config is None else sam2long_config,
            hydra_overrides=tuple(self.hydra_overrides),
            apply_postprocessing=True,
            dtype=self.model.dtype,
        )

    def _build(self, spec: TrackerSpec) -> Any:
        """A predictor that keeps its outputs in the session, so clicks after a propagation
        correct the tracked masks."""
        return spec.build(self.model.device, non_overlap_masks=False, keep_outputs=True)

    def sam2long(self, sam2long_config: Optional[SAM2LongConfig] = None) -> Any:
        """A SAM2Long predictor with these settings (default: the official ones)."""
        sam2long_config = SAM2LongConfig() if sam2long_config is None else sam2long_config
        with self.lock:
            if sam2long_config in self._sam2long:
                self._sam2long.move_to_end(sam2long_config)
                return self._sam2long[sam2long_config]
            predictor = self._build(self.spec("sam2long", sam2long_config))
            self._sam2long[sam2long_config] = predictor
            while len(self._sam2long) > self.cache_size:
                self._sam2long.popitem(last=False)
            return predictor

    def sam2(self) -> Any:
        """The plain SAM 2 predictor (for the comparison)."""
        with self.lock:
            if self._sam2 is None:
                self._sam2 = self._build(self.spec("sam2"))
            return self._sam2

    def open_session(self, video: Any, *, copy: bool = True) -> DemoSession:
        """A new session on a video file or frame folder (an upload is copied into the session)."""
        session = DemoSession.open(self, video, copy=copy)
        self._sessions.add(session)
        return session

    def close_sessions(self) -> int:
        """Close every open session (server shutdown); returns how many were open."""
        open_sessions = [s for s in list(self._sessions) if not s.closed]
        for session in open_sessions:
            session.close()
        return len(open_sessions)


def tree_config(
    num_pathways: Any,
    iou_threshold: Any,
    uncertainty: Any,
    modulation: Optional[Sequence[float]],
    tracker: str = "sam2long",
) -> SAM2LongConfig:
    """The settings of a tree ``tracker`` (its preset: SAM2Long, SAMURAI, DAM4SAM or a combination)
    with the page's controls applied (``modulation`` None = off), or DemoError."""
    try:
        if tracker not in TREE_TRACKERS:
            raise ValueError(f"unknown tracker {tracker!r}; choose one of {list(TREE_TRACKERS)}")
        return SAM2LongConfig.resolve(
            TREE_TRACKERS[tracker],
            num_pathways=int(num_pathways),
            iou_threshold=float(iou_threshold),
            uncertainty=float(uncertainty),
            memory_modulation=None if modulation is None else tuple(float(v) for v in modulation),
        )
    except (TypeError, ValueError) as error:
        raise DemoError(f"invalid {tracker} settings: {error}") from error


@dataclass
class FramePrompts:
    """One object's clicks (and box) on one frame, in video pixels."""

    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: Optional[tuple[float, float, float, float]] = None

    def empty(self) -> bool:
        return not self.points and self.box is None


@dataclass(frozen=True)
class PromptEvent:
    """One change of the prompts, replayed in order into the SAM 2 session."""

    obj_id: int
    frame_idx: int
    prompts: Optional[FramePrompts]  # None: the object's prompts on the frame were cleared
    remove_object: bool = False  # the object has no prompts left anywhere


@dataclass(frozen=True)
class RunOutputs:
    """What a propagation left for the page."""

    folder: Path
    sam2long_config: SAM2LongConfig
    sam2long: TrackResult
    sam2: Optional[TrackResult]
    overlay: Path
    compare: Optional[Path]
    files: tuple[Path, ...]  # downloads: overlay, comparison, masks zip, COCO RLE, pathway records
    records: tuple[Any, ...]  # PathwayStep records (masks dropped)


def _strip_masks(record: Any) -> Any:
    """A pathway record without the node masks (only the numbers are kept)."""
    created = tuple(dataclasses.replace(node, pred_masks=None) for node in record.created)
    return dataclasses.replace(record, created=created)


def _record_json(record: Any) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    for node in data["created"]:
        node.pop("pred_masks", None)
    return data


@dataclass(eq=False)
class DemoSession:
    """Everything of one browser tab (see the module docstring)."""

    engine: DemoEngine
    work_dir: Path
    video_path: Path
    source: FrameSource
    fps: float
    state: Any  # SAM2Long inference session: clicks and the preview
    frame_idx: int = 0
    objects: list[int] = field(default_factory=lambda: [1])
    active_obj: int = 1
    prompts: dict[tuple[int, int], FramePrompts] = field(default_factory=dict)
    events: list[PromptEvent] = field(default_factory=list)
    preview: dict[int, dict[int, np.ndarray]] = field(default_factory=dict)  # frame -> obj -> mask
    pending_corner: Optional[tuple[float, float]] = None
    sam2_state: Any = None
    sam2_events: int = 0  # events already replayed into sam2_state
    run: Optional[RunOutputs] = None
    runs_started: int = 0
    closed: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # ------------------------------------------------------------------ opening and closing

    @classmethod
    def open(cls, engine: DemoEngine, video: Any, *, copy: bool = True) -> DemoSession:
        """Check and load a video (DemoError for a missing, too large or unreadable one)."""
        path = Path(video)
        if not path.exists():
            raise DemoError(f"no video at {path}")
        limit = engine.limits.max_upload_bytes
        if path.is_file() and path.stat().st_size > limit:
            raise DemoError(
                f"{path.name} is {path.stat().st_size / 2**20:.1f} MB; this demo accepts videos up to "
                f"{limit / 2**20:.0f} MB (cut or downscale it first)"
            )
        if path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DemoError(
                f"{path.name} is not a video file: upload one of {', '.join(sorted(VIDEO_SUFFIXES))}"
            )
        work_dir = Path(tempfile.mkdtemp(prefix="sam2long-demo-"))
        try:
            if copy and path.is_file():
                target = work_dir / "video" / path.name
                target.parent.mkdir()
                shutil.copyfile(path, target)
                path = target
            try:
                source = open_frame_source(path)
                num_frames = len(source)
            except (FrameSourceError, OSError, IndexError, ValueError) as error:
                raise DemoError(f"cannot read {path.name} as a video: {error}") from error
            if num_frames == 0:
                raise DemoError(f"{path.name} has no frames")
            if num_frames > engine.limits.max_video_frames:
                raise DemoError(
                    f"{path.name} has {num_frames} frames; this demo accepts up to "
                    f"{engine.limits.max_video_frames} (cut it first)"
                )
            fps = float(getattr(source, "fps", None) or 24.0)
            with engine.lock:
                try:
                    state = engine.sam2long().init_state(path)
                except (FrameSourceError, OSError, ValueError) as error:
                    raise DemoError(f"cannot read {path.name} as a video: {error}") from error
        except BaseException:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise
        return cls(engine, work_dir, path, source, fps, state)

    def close(self) -> None:
        """Drop the model sessions and delete the tab's folder (also what Gradio calls on tab close)."""
        with self.lock:
            self.closed = True
            self.state = self.sam2_state = None
            self.run = None
            close = getattr(self.source, "close", None)
            if close is not None:
                close()
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _check_open(self) -> None:
        if self.closed:
            raise DemoError("this session was closed: load a video again")

    # ------------------------------------------------------------------ frames and objects

    @property
    def num_frames(self) -> int:
        return len(self.source)

    @property
    def size(self) -> tuple[int, int]:
        return self.source.size

    @property
    def display_scale(self) -> float:
        """Shown size / video size (frames larger than ``max_display_side`` are downscaled)."""
        return min(1.0, self.engine.limits.max_display_side / max(self.size))

    def select_frame(self, frame_idx: Any) -> None:
        """Show frame ``frame_idx`` (clamped to the video); a half-drawn box is dropped."""
        with self.lock:
            self._check_open()
            self.frame_idx = int(min(max(int(frame_idx), 0), self.num_frames - 1))
            self.pending_corner = None

    def new_object(self) -> int:
        """Add an object (the next free id) and make it the active one."""
        with self.lock:
            self._check_open()
            obj_id = max(self.objects) + 1
            if obj_id > 255:
                raise DemoError("at most 255 objects (palette PNGs hold ids 1..255)")
            self.objects.append(obj_id)
            self.active_obj = obj_id
            self.pending_corner = None
            return obj_id

    def set_active_object(self, obj_id: Any) -> None:
        with self.lock:
            obj_id = int(obj_id)
            if obj_id not in self.objects:
                raise DemoError(f"no object {obj_id}; objects: {self.objects}")
            self.active_obj = obj_id
            self.pending_corner = None

    def prompted_frames(self, obj_id: Optional[int] = None) -> list[int]:
        return sorted({f for (o, f), p in self.prompts.items() if obj_id in (None, o) and not p.empty()})

    # ------------------------------------------------------------------ clicks

    def click(self, x: float, y: float, mode: str = "positive") -> None:
        """A click at ``(x, y)`` in *shown* image pixels: a positive / negative point, or a box corner
        (the second corner completes the box). The active object's mask on this frame is updated."""
        with self.lock:
            self._check_open()
            if mode not in CLICK_MODES:
                raise DemoError(f"unknown click mode {mode!r}; choose one of {CLICK_MODES}")
            height, width = self.size
            scale = self.display_scale
            vx = min(max(float(x) / scale, 0.0), width - 1.0)
            vy = min(max(float(y) / scale, 0.0), height - 1.0)
            key = (self.active_obj, self.frame_idx)
            old = self.prompts.get(key, FramePrompts())
            if mode == "box":
                if self.pending_corner is None:
                    self.pending_corner = (vx, vy)
                    return
                (x0, y0), self.pending_corner = self.pending_corner, None
                box = (min(x0, vx), min(y0, vy), max(x0, vx), max(y0, vy))
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    raise DemoError("the box is too small: click two opposite corners further apart")
                new = FramePrompts(list(old.points), list(old.labels), box)
            else:
                self.pending_corner = None
                label = 1 if mode == "positive" else 0
                new = FramePrompts([*old.points, (vx, vy)], [*old.labels, label], old.box)
            self._set_prompts(key, new)

    def undo_click(self) -> None:
        """Remove the active object's last click on this frame (its box once no click is left)."""
        with self.lock:
            self._check_open()
            self.pending_corner = None
            key = (self.active_obj, self.frame_idx)
            old = self.prompts.get(key)
            if old is None or old.empty():
                raise DemoError(f"object {self.active_obj} has no clicks on frame {self.frame_idx}")
            if old.points:
                new = FramePrompts(old.points[:-1], old.labels[:-1], old.box)
            else:
                new = FramePrompts()
            if new.empty():
                self.clear_frame()
            else:
                self._set_prompts(key, new)

    def clear_frame(self) -> None:
        """Remove the active object's clicks and box on this frame."""
        with self.lock:
            self._check_open()
            self.pending_corner = None
            obj_id, frame_idx = key = (self.active_obj, self.frame_idx)
            if key not in self.prompts:
                return
            remove = not any(o == obj_id for (o, f) in self.prompts if (o, f) != key)
            event = PromptEvent(obj_id, frame_idx, None, remove)
            with self.engine.lock:
                self._apply_event(self.engine.sam2long(), self.state, event, preview=True)
            del self.prompts[key]
            self.events.append(event)

    def reset(self) -> None:
        """Remove every object, click and result (the video stays)."""
        with self.lock:
            self._check_open()
            with self.engine.lock:
                self.engine.sam2long().reset_state(self.state)
            self.prompts.clear()
            self.events.clear()
            self.preview.clear()
            self.objects, self.active_obj, self.pending_corner = [1], 1, None
            self.sam2_state, self.sam2_events = None, 0
            self._replace_run(None)

    def _set_prompts(self, key: tuple[int, int], prompts: FramePrompts) -> None:
        event = PromptEvent(key[0], key[1], prompts)
        with self.engine.lock:
            self._apply_event(self.engine.sam2long(), self.state, event, preview=True)
        self.prompts[key] = prompts
        self.events.append(event)

    def _apply_event(self, predictor: Any, state: Any, event: PromptEvent, preview: bool = False) -> None:
        """Give one prompt change to a predictor's session (and keep the frame's masks as preview)."""
        output = None
        try:
            if event.prompts is not None:
                p = event.prompts
                output = predictor.add_new_points_or_box(
                    state,
                    event.frame_idx,
                    event.obj_id,
                    points=[list(xy) for xy in p.points] or None,
                    labels=list(p.labels) or None,
                    box=list(p.box) if p.box is not None else None,
                    clear_old_points=True,
                )
            elif event.remove_object:
                predictor.remove_object(state, event.obj_id, need_output=False)
                if preview:
                    for masks in self.preview.values():
                        masks.pop(event.obj_id, None)
            else:
                output = predictor.clear_all_prompts_in_frame(state, event.frame_idx, event.obj_id)
        except (ValueError, IndexError) as error:
            raise DemoError(f"the model refused the click: {error}") from error
        if preview and output is not None:
            frame_idx, obj_ids, logits = output
            masks = (logits > 0).cpu().numpy()[:, 0]
            self.preview[int(frame_idx)] = {int(o): masks[i] for i, o in enumerate(obj_ids)}

    # ------------------------------------------------------------------ what the page shows

    def frame_masks(self, frame_idx: Optional[int] = None) -> dict[int, np.ndarray]:
        """Masks shown on a frame: the latest run's, updated by clicks made since (the preview)."""
        frame_idx = self.frame_idx if frame_idx is None else int(frame_idx)
        masks: dict[int, np.ndarray] = {}
        if self.run is not None and frame_idx in self.run.sam2long.tracked:
            masks.update(result_masks(self.source, self.run.sam2long, frame_idx))
        masks.update(self.preview.get(frame_idx, {}))
        return dict(sorted(masks.items()))

    def render(self, frame_idx: Optional[int] = None) -> np.ndarray:
        """The shown frame: masks drawn over it, clicks as dots (green +, red -), boxes, a pending corner."""
        with self.lock:
            self._check_open()
            frame_idx = self.frame_idx if frame_idx is None else int(frame_idx)
            image = draw_overlay(self.source.get(frame_idx), self.frame_masks(frame_idx))
            scale = self.display_scale
            if scale < 1.0:
                height, width = self.size
                size = (max(1, round(width * scale)), max(1, round(height * scale)))
                image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            radius = max(5, round(min(image.shape[:2]) / 45))
            for (obj_id, f), p in sorted(self.prompts.items()):
                if f != frame_idx:
                    continue
                if p.box is not None:
                    x0, y0, x1, y1 = (round(v * scale) for v in p.box)
                    cv2.rectangle(image, (x0, y0), (x1, y1), object_colour(obj_id), 2, cv2.LINE_AA)
                for (x, y), label in zip(p.points, p.labels):
                    centre = (round(x * scale), round(y * scale))
                    colour = (40, 200, 60) if label == 1 else (230, 40, 40)
                    cv2.circle(image, centre, radius, (255, 255, 255), -1, cv2.LINE_AA)
                    cv2.circle(image, centre, radius - 2, colour, -1, cv2.LINE_AA)
            if self.pending_corner is not None:
                x, y = (round(v * scale) for v in self.pending_corner)
                cv2.drawMarker(image, (x, y), (255, 220, 0), cv2.MARKER_CROSS, 3 * radius, 2)
            return image

    def status(self) -> str:
        """A short markdown summary: frame, active object, clicks, the latest run."""
        with self.lock:
            if self.closed:
                return "No video loaded."
            lines = [
                f"**{self.video_path.name}**: {self.num_frames} frames, {self.size[1]}×{self.size[0]}, "
                f"{self.fps:g} fps. Frame **{self.frame_idx}**, object **{self.active_obj}** active."
            ]
            here = self.prompts.get((self.active_obj, self.frame_idx))
            if here is not None and not here.empty():
                pos, neg = here.labels.count(1), here.labels.count(0)
                area = int(self.frame_masks().get(self.active_obj, np.zeros(1, bool)).sum())
                box = ", a box" if here.box is not None else ""
                lines.append(f"Here: {pos} positive, {neg} negative click(s){box}; mask {area} px.")
            if self.pending_corner is not None:
                lines.append("Box: click the opposite corner.")
            prompted = [
                f"{obj_id} (frame{'s' if len(fs) > 1 else ''} {', '.join(map(str, fs))})"
                for obj_id in self.objects
                if (fs := self.prompted_frames(obj_id))
            ]
            lines.append(
                "Prompted objects: " + ("; ".join(prompted) if prompted else "none yet: click the frame.")
            )
            if self.run is not None:
                run = self.run.sam2long
                text = (
                    f"Last run: SAM2Long (P={self.run.sam2long_config.num_pathways}) on frames {run.first_frame}–"
                    f"{run.last_frame} in {run.seconds:.1f} s"
                )
                if self.run.sam2 is not None:
                    text += f", SAM 2 in {self.run.sam2.seconds:.1f} s"
                lines.append(text + ".")
            return "  \n".join(lines)

    # ------------------------------------------------------------------ propagation

    def propagate(
        self,
        sam2long_config: SAM2LongConfig,
        max_frames: int,
        compare: bool = False,
        progress: Optional[Progress] = None,
    ) -> RunOutputs:
        """Track all prompted objects from the earliest prompted frame forward, at most ``max_frames``
        frames, with SAM2Long (and SAM 2 when ``compare``); writes the overlay / side-by-side mp4,
        the masks zip, COCO RLE and the pathway records into a new run folder."""
        with self.lock:
            self._check_open()
            if not self.prompted_frames():
                raise DemoError("no clicks yet: click an object on a frame first")
            max_frames = int(max_frames)
            if max_frames < 1:
                raise DemoError(f"frames to propagate must be >= 1, got {max_frames}")
            report = progress or (lambda fraction, text: None)
            start = self.prompted_frames()[0]
            total = min(max_frames, self.num_frames - start)
            self.runs_started += 1
            folder = self.work_dir / f"run{self.runs_started:03d}"
            steps = total * (2 if compare else 1) + total
            done = 0

            def tick(text: str) -> None:
                nonlocal done
                done += 1
                report(min(done / steps, 1.0), text)

            try:
                records: list[Any] = []
                with self.engine.lock:
                    predictor = self.engine.sam2long(sam2long_config)
                    sam2long = TrackResult("SAM2Long", folder / "masks")
                    self._track(sam2long, predictor, self.state, max_frames, tick, observer=records.append)
                    sam2 = None
                    if compare:
                        sam2 = TrackResult("SAM 2", folder / "sam2" / "masks")
                        self._track_sam2(sam2, max_frames, tick)
                write_outputs(
                    self.source,
                    sam2long,
                    folder,
                    self.fps,
                    sam2long.frames,
                    sam2,
                    on_frame=lambda frame_idx: tick(f"writing frame {frame_idx}"),
                )
                run = self._finish_run(folder, sam2long_config, sam2long, sam2, records)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self.preview = {f: m for f, m in self.preview.items() if f not in sam2long.tracked}
            self._replace_run(run)
            return run

    def _track(
        self,
        result: TrackResult,
        predictor: Any,
        state: Any,
        max_frames: int,
        tick: Callable[[str], None],
        **propagate_kw: Any,
    ) -> None:
        """Propagate ``state`` forward from its earliest prompted frame into ``result``."""
        frames = track(
            predictor,
            state,
            result,
            frame_names=self.source.frame_names,
            max_frames=max_frames,
            **propagate_kw,
        )
        try:
            for frame in frames:
                tick(f"{result.name}: frame {frame.index}")
        except RuntimeError as error:
            raise DemoError(f"{result.name} could not propagate: {error}") from error

    def _track_sam2(self, result: TrackResult, max_frames: int, tick: Callable[[str], None]) -> None:
        """SAM 2 on the same clicks: its own session, with every prompt change replayed in order."""
        predictor = self.engine.sam2()
        if self.sam2_state is None:
            self.sam2_state, self.sam2_events = predictor.init_state(self.video_path), 0
        for event in self.events[self.sam2_events :]:
            self._apply_event(predictor, self.sam2_state, event)
        self.sam2_events = len(self.events)
        self._track(result, predictor, self.sam2_state, max_frames, tick)

    def _finish_run(
        self,
        folder: Path,
        sam2long_config: SAM2LongConfig,
        main: TrackResult,
        sam2: Optional[TrackResult],
        records: list[Any],
    ) -> RunOutputs:
        """The pathway records and the masks zip next to the written outputs."""
        kept = tuple(_strip_masks(r) for r in records)
        pathways = folder / "pathways.json"
        atomic_write_text(pathways, json.dumps([_record_json(r) for r in kept]))
        archive = folder / "masks.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for sub in ("masks", "palette", "sam2/masks"):
                for path in sorted((folder / sub).rglob("*.png")):
                    zf.write(path, path.relative_to(folder).as_posix())
        overlay = folder / "overlay.mp4"
        compare = folder / "compare.mp4" if sam2 is not None else None
        files = [overlay] + ([compare] if compare is not None else [])
        files += [archive, folder / "masks_rle.json", pathways]
        return RunOutputs(folder, sam2long_config, main, sam2, overlay, compare, tuple(files), kept)

    def _replace_run(self, run: Optional[RunOutputs]) -> None:
        old, self.run = self.run, run
        if old is not None and (run is None or old.folder != run.folder):
            shutil.rmtree(old.folder, ignore_errors=True)

    # ------------------------------------------------------------------ pathways

    def plotted_objects(self) -> list[int]:
        """Objects with pathway records in the latest run."""
        if self.run is None:
            return []
        return sorted({int(r.obj_id) for r in self.run.records})

    def pathway_figure(self, obj_id: Optional[int] = None) -> Any:
        """The pathway plot of one object of the latest run (the first one by default)."""
        from sam2long.demo.plots import plot_pathways

        with self.lock:
            records = self.run.records if self.run is not None else ()
            if obj_id is None:
                objects = self.plotted_objects()
                obj_id = objects[0] if objects else self.active_obj
            uncertainty = self.run.sam2long_config.uncertainty if self.run is not None else None
            return plot_pathways(records, int(obj_id), uncertainty=uncertainty)
