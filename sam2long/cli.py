"""The ``sam2long`` command (also ``python -m sam2long``): segment a video, run a dataset, evaluate, download.

Subcommands::

    sam2long segment VIDEO --prompts prompts.json --out out/      one video -> masks, overlay, RLE
    sam2long vos ...                                             dataset inference (= sam2long-vos)
    sam2long sot ...                                             box-tracking benchmarks (LaSOT, GOT-10k, ...)
    sam2long eval sav|lvos|sot ...                               the SA-V / LVOS / DAVIS / box-tracking evaluators
    sam2long download [NAMES...|--all]                           fetch checkpoints into the cache
    sam2long demo                                                the Gradio web demo ([demo] extra)

Each subcommand is a thin shell over library code (:mod:`sam2long.segment`, :mod:`sam2long.vos`,
:mod:`sam2long.sot`, :mod:`sav_dataset`, :mod:`sam2long.models`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

LOGGER = logging.getLogger("sam2long")


class _PromptAction(argparse.Action):
    """``--point/--box/--mask`` in command-line order, each tagged with the latest ``--frame/--obj``."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, "cli_prompts", None) or [])
        if option_string == "--frame":
            namespace.current_frame = _non_negative(parser, "--frame", values, 0)
            return
        if option_string == "--obj":
            namespace.current_obj = _non_negative(parser, "--obj", values, 1)
            return
        frame = getattr(namespace, "current_frame", 0)
        obj = getattr(namespace, "current_obj", 1)
        items.append((option_string, values, frame, obj))
        namespace.cli_prompts = items


def _non_negative(parser: argparse.ArgumentParser, flag: str, text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        parser.error(f"{flag} expects an integer >= {minimum}, got {text!r}")
    return value


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    from sam2long.config import add_config_arguments
    from sam2long.models import add_model_arguments
    from sam2long.pipeline import DIRECTIONS
    from sam2long.tracker_spec import TRACKERS

    p = sub.add_parser(
        "segment",
        help="segment and track objects in one video",
        description="Track prompted objects through a video and write masks, an overlay video, COCO RLE "
        "and a summary into --out. Prompts: --prompts FILE (schema in the README), or --point X,Y[,LABEL] / "
        "--box X0,Y0,X1,Y1 / --mask PNG, each for the latest --frame N and --obj ID given before it.",
    )
    p.add_argument("video", help="a video file (mp4, mov, avi, mkv, webm) or a folder of JPEG/PNG frames")
    p.add_argument(
        "--out", default=None, help="output folder (created; optional for a live stream with --show)"
    )
    p.add_argument("--prompts", default=None, help="prompts JSON file")
    for flag, metavar, text in (
        ("--point", "X,Y[,LABEL]", "a click in video pixels (LABEL 1 positive, the default, or 0 negative)"),
        ("--box", "X0,Y0,X1,Y1", "a box in video pixels"),
        ("--mask", "PNG", "a mask PNG of the video's size (non-zero = object)"),
    ):
        p.add_argument(flag, action=_PromptAction, metavar=metavar, dest="cli_prompts", help=text)
    p.add_argument(
        "--frame", action=_PromptAction, metavar="N", dest="cli_prompts", help="frame of the next prompts"
    )
    p.add_argument(
        "--obj", action=_PromptAction, metavar="ID", dest="cli_prompts", help="object of the next prompts"
    )
    model = add_model_arguments(p)
    model.add_argument(
        "--tracker",
        choices=TRACKERS,
        default="sam2long",
        help="sam2long (the memory tree, the default), sam2 (plain SAM 2), samurai (motion-aware choice), "
        "dam4sam (distractor-aware memory), or the tree combined with either: sam2long-samurai, "
        "sam2long-dam4sam (README: Trackers)",
    )
    model.add_argument(
        "--compare-sam2", dest="compare_sam2", action="store_true", help="also run SAM 2; side-by-side video"
    )
    tree = p.add_argument_group("SAM2Long memory tree")
    add_config_arguments(tree)
    run = p.add_argument_group("propagation and output")
    direction = run.add_mutually_exclusive_group()
    direction.add_argument(
        "--reverse",
        dest="direction",
        action="store_const",
        const="reverse",
        help="backwards from the latest prompt",
    )
    direction.add_argument(
        "--both", dest="direction", action="store_const", const="both", help="forwards, then backwards"
    )
    p.set_defaults(direction=DIRECTIONS[0], cli_prompts=[], handler=_run_segment)
    run.add_argument(
        "--fps", type=float, default=None, help="frame rate of frame folders (default: the video's, or 24)"
    )
    run.add_argument(
        "--score_thresh", type=float, default=0.0, help="threshold on the mask logits (default: 0)"
    )
    run.add_argument(
        "--max_frames",
        type=_positive_int,
        default=None,
        metavar="N",
        help="track at most N frames, from the earliest prompted frame forwards; with --reverse back from "
        "the latest prompted frame; with --both N each way from the earliest (upstream's "
        "max_frame_num_to_track = N - 1 per direction). Every output and summary.json cover the tracked "
        "frames only. A live stream stops after N stream frames",
    )
    det = p.add_argument_group(
        "detector re-prompting ([yolo] extra)",
        "re-prompt a lost object with a detector's box of its class (forward propagation)",
    )
    det.add_argument(
        "--detector", metavar="MODEL", default=None, help="ultralytics YOLO weights file or model yaml"
    )
    det.add_argument(
        "--reprompt_absent",
        type=int,
        default=5,
        metavar="K",
        help="ask after K consecutive absent frames (0: never; default: %(default)s)",
    )
    det.add_argument(
        "--reprompt_every",
        type=int,
        default=0,
        metavar="N",
        help="also ask every N frames (0: never, the default)",
    )
    det.add_argument(
        "--detector_min_score", type=float, default=0.5, help="ignore boxes scored lower (default: 0.5)"
    )
    det.add_argument(
        "--detector_classes",
        type=int,
        nargs="*",
        default=None,
        metavar="C",
        help="detector class indices to keep",
    )
    det.add_argument(
        "--detector_device", default=None, help="device of the detector (default: ultralytics' choice)"
    )
    live = p.add_argument_group(
        "live streams", "VIDEO as a camera index (0) or a stream URL (rtsp://, http://): tracked in one pass"
    )
    live.add_argument("--live", action="store_true", help="read VIDEO (e.g. a file) as a live stream")
    live.add_argument("--show", action="store_true", help="show the overlay in a window (q quits)")
    live.add_argument(
        "--drop",
        choices=("oldest", "none"),
        default=None,
        help="when tracking is slower than the stream: drop the oldest waiting frame (cameras, URLs) or "
        "none (files given with --live); the default follows the source",
    )
    live.add_argument(
        "--live_max_lag",
        type=int,
        default=8,
        metavar="N",
        help="SAM2Long's max_lag on live streams when --max_lag is not given (default: %(default)s)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _command_line_prompts(items: Sequence[tuple]) -> list:
    """Group ``--point``/``--box`` of one object and frame into one prompt; masks stand alone."""
    from sam2long.prompts import Prompt, parse_box, parse_point

    grouped: dict[tuple[int, int], dict] = {}
    prompts = []
    for flag, value, frame, obj in items:
        if flag == "--mask":
            prompts.append(Prompt(obj, frame, mask_path=Path(value), source=f"--mask {value}"))
            continue
        entry = grouped.setdefault((obj, frame), {"points": [], "labels": [], "box": None})
        if flag == "--point":
            xy, label = parse_point(value)
            entry["points"].append(xy)
            entry["labels"].append(label)
        else:
            entry["box"] = parse_box(value)
    for (obj, frame), entry in grouped.items():
        points = entry["points"] or None
        prompts.append(
            Prompt(
                obj,
                frame,
                points=points,
                labels=entry["labels"] or None,
                box=entry["box"],
                source="command line",
            )
        )
    return prompts


def _writable_folder(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as error:
        raise SystemExit(f"error: output folder {path} cannot be written: {error}") from error
    return path


def _reprompting(args: argparse.Namespace, frames: Any):
    """Detector re-prompting on ``frames`` from the detector flags, or None without ``--detector``."""
    if args.detector is None:
        return None
    from sam2long.detectors import YoloBoxSource
    from sam2long.pipeline import Reprompting
    from sam2long.reprompt import RepromptPolicy

    try:
        policy = RepromptPolicy(
            absent_frames=args.reprompt_absent or None,
            every=args.reprompt_every or None,
            min_score=args.detector_min_score,
        )
        source = YoloBoxSource(
            args.detector,
            classes=args.detector_classes,
            conf=args.detector_min_score,
            device=args.detector_device,
        )
    except (ValueError, ImportError, FileNotFoundError) as error:
        raise SystemExit(f"error: --detector {args.detector}: {error}") from error
    return Reprompting(frames, source, policy)


def _first_missing_folder(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_empty_folders(top: Path) -> None:
    """Remove ``top`` and the folders below it, bottom up, as far as they are empty (no file is touched)."""
    for folder, _, _ in os.walk(top, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)


def _run_segment(args: argparse.Namespace) -> int:
    from sam2long.live import is_stream_spec

    live = args.live or is_stream_spec(args.video)
    if not live and args.out is None:
        raise SystemExit("error: --out is required (an output folder)")
    # a run that fails before it writes a frame removes the --out folders it created (never older ones)
    created = _first_missing_folder(Path(args.out).absolute()) if args.out is not None else None
    status = 1
    try:
        status = _run_live(args) if live else _run_file(args)
    finally:
        if status != 0 and created is not None:
            _remove_empty_folders(created)
    return status


def _collect_prompts(args: argparse.Namespace) -> list:
    from sam2long.prompts import PromptError, load_prompts

    prompts = (load_prompts(args.prompts) if args.prompts else []) + _command_line_prompts(args.cli_prompts)
    if not prompts:
        raise PromptError("no prompts: give --prompts FILE or --point/--box/--mask")
    for prompt in prompts:
        if prompt.mask_path is not None and not prompt.mask_path.is_file():
            raise PromptError(f"{prompt.source}: mask file {prompt.mask_path} does not exist")
    return prompts


def _window(title: str):
    """``show(frame_rgb) -> keep going`` in an OpenCV window (q or Esc stops)."""
    import cv2

    def show(frame_rgb) -> bool:
        try:
            cv2.imshow(title, cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as error:
            raise SystemExit(
                "error: --show needs an OpenCV build with a GUI (opencv-python, not opencv-python-headless) "
                f"and a display: {error}"
            ) from error
        return key not in (ord("q"), 27)

    return show


def _warn_empty(results: Sequence) -> None:
    """Warn about a tracker that tracked no frame or objects whose masks are empty on every tracked frame."""
    for result in results:
        if result.frames_tracked == 0:
            LOGGER.warning("%s tracked no frame", result.name)
        elif result.empty_objects:
            LOGGER.warning(
                "%s: the mask of object(s) %s is empty on every tracked frame, the prompted one included; "
                "check the prompts (video pixels), --score_thresh and the model",
                result.name,
                ", ".join(map(str, result.empty_objects)),
            )


def _warn_outside(prompts: Sequence, frames: range, max_frames: Optional[int]) -> None:
    """Warn about prompts on frames that ``--max_frames`` left out of the output."""
    outside = sorted({p.frame_idx for p in prompts if p.frame_idx not in frames})
    if max_frames is not None and outside:
        LOGGER.warning(
            "prompts on frame(s) %s lie outside the frames tracked with --max_frames %d (%d-%d): "
            "their masks are not in the output",
            ", ".join(map(str, outside)),
            max_frames,
            frames[0],
            frames[-1],
        )


def _tracker_spec(args: argparse.Namespace, config_file: str, checkpoint: str, live: bool):
    """The :class:`~sam2long.tracker_spec.TrackerSpec` of a segment run (post-processing on, ``--dtype``);
    on a live stream SAM2Long's ``max_lag`` defaults to ``--live_max_lag``."""
    from sam2long.tracker_spec import spec_from_args

    return spec_from_args(
        args, config_file, checkpoint, args.live_max_lag if live else None, apply_postprocessing=True
    )


def _print_cost_hint(config_file: str, device: Any, args: argparse.Namespace) -> None:
    """A large model on a CPU: say what it costs and what is faster (one line on stderr)."""
    from sam2.precision import resolve_precision
    from sam2long.models import cpu_cost_hint

    bf16 = resolve_precision(args.dtype, device).name == "bfloat16"
    hint = cpu_cost_hint(config_file, device, args.tracker, bf16)
    if hint is not None:
        print(hint, file=sys.stderr)


def _run_live(args: argparse.Namespace) -> int:
    from sam2.build_sam import default_device
    from sam2.precision import resolve_precision
    from sam2.utils.frame_sources import FrameSourceError
    from sam2long.export import write_summary
    from sam2long.live import LiveStreamSource, is_stream_spec, parse_stream_spec
    from sam2long.models import model_files_from_args
    from sam2long.prompts import PromptError
    from sam2long.segment import track_live

    if args.out is None and not args.show:
        raise SystemExit("error: a live stream needs --out (overlay.mp4, masks/) and/or --show")
    for flag, value in (("--compare-sam2", args.compare_sam2), ("--detector", args.detector)):
        if value:
            raise SystemExit(f"error: {flag} is not available on live streams")
    if args.direction != "forward":
        raise SystemExit("error: a live stream is tracked forwards only")
    spec_text = args.video
    drop = args.drop or ("oldest" if is_stream_spec(spec_text) else "none")
    try:
        prompts = _collect_prompts(args)
        source = LiveStreamSource(parse_stream_spec(spec_text), drop=drop, max_frames=args.max_frames)
    except (PromptError, FrameSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = _writable_folder(Path(args.out)) if args.out is not None else None
    config_file, checkpoint, model_name = model_files_from_args(args)
    device = args.device or default_device()
    _print_cost_hint(config_file, device, args)
    spec = _tracker_spec(args, config_file, checkpoint, live=True)
    fps = args.fps or source.fps or 30.0
    try:
        predictor = spec.build(device, non_overlap_masks=False)
        result = track_live(
            spec.tracker,
            predictor,
            source,
            prompts,
            out,
            fps,
            args.score_thresh,
            _window("sam2long") if args.show else None,
        )
    except (PromptError, FrameSourceError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        source.close()
    _warn_empty([result])
    stats = source.stats
    if out is not None:
        write_summary(
            out / "summary.json",
            frames=result.frames_tracked,
            frame_size=list(source.size),
            fps=fps,
            trackers={result.name: result.summary()},
            stream={
                "source": spec_text,
                "drop_policy": drop,
                "captured": stats.captured,
                "tracked": stats.delivered,
                "dropped": stats.dropped,
                "max_lag": spec.max_lag,
            },
            device=str(device),
            precision=resolve_precision(args.dtype, device).summary(),
            model=model_name,
            config=config_file,
            checkpoint=str(checkpoint),
            tracker=spec.describe(),
        )
    print(
        f"tracked {result.frames_tracked} of {stats.captured} stream frames ({stats.dropped} dropped)"
        + (f"; wrote overlay.mp4, masks/, summary.json to {out}" if out is not None else "")
    )
    return 0


def _run_file(args: argparse.Namespace) -> int:
    from sam2.build_sam import default_device
    from sam2.precision import resolve_precision
    from sam2.utils.frame_sources import FrameSourceError, open_frame_source
    from sam2long.models import model_files_from_args
    from sam2long.outputs import write_outputs
    from sam2long.prompts import PromptError
    from sam2long.segment import output_frames, summarize, track

    try:
        prompts = _collect_prompts(args)
        source = open_frame_source(args.video)
    except (PromptError, FrameSourceError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = _writable_folder(Path(args.out))
    config_file, checkpoint, model_name = model_files_from_args(args)
    device = args.device or default_device()
    _print_cost_hint(config_file, device, args)
    main_spec = _tracker_spec(args, config_file, checkpoint, live=False)
    runs = [(main_spec, out)]
    if args.compare_sam2:
        runs.insert(0, (main_spec.sam2_baseline(), out / "sam2"))
    fps = args.fps or getattr(source, "fps", None) or 24.0
    if args.detector is not None and args.direction != "forward":
        raise SystemExit("error: --detector re-prompts during forward propagation; drop --reverse/--both")
    reprompting = _reprompting(args, source)
    results = []
    try:
        for spec, folder in runs:
            predictor = spec.build(device, non_overlap_masks=False)
            results.append(
                track(
                    spec.tracker,
                    predictor,
                    source,
                    prompts,
                    folder,
                    args.direction,
                    args.score_thresh,
                    reprompting,
                    args.max_frames,
                )
            )
            del predictor
    except (PromptError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    main_result = results[-1]
    compare = results[0] if args.compare_sam2 else None
    frames = output_frames(results, len(source), args.max_frames)
    _warn_empty(results)
    _warn_outside(prompts, frames, args.max_frames)
    write_outputs(source, main_result, out, fps, frames, compare)
    summarize(
        out / "summary.json",
        source,
        fps,
        results,
        frames,
        max_frames=args.max_frames,
        video=str(args.video),
        device=str(device),
        precision=resolve_precision(args.dtype, device).summary(),
        model=model_name,
        config=config_file,
        checkpoint=str(checkpoint),
        direction=args.direction,
        tracker=main_spec.describe(),
    )
    written = "overlay.mp4, masks/, palette/, masks_rle.json, summary.json"
    if compare is not None:
        written += ", compare.mp4, sam2/masks/"
    span = f" ({frames[0]}-{frames[-1]} of {len(source)})" if len(frames) < len(source) else ""
    print(f"wrote {len(frames)} frames{span} to {out} ({written})")
    return 0


def _vos_main(argv: list[str]) -> Any:
    from sam2long.vos.cli import main as vos_main

    return vos_main(argv)


def _sot_main(argv: list[str]) -> Any:
    from sam2long.sot.cli import main as sot_main

    return sot_main(argv)


def _sot_eval_main(argv: list[str]) -> Any:
    from sam2long.sot.cli import eval_main

    return eval_main(argv)


def _download_main(argv: list[str]) -> Any:
    from sam2long.models import download_main

    return download_main(argv)


def _demo_main(argv: list[str]) -> Any:
    from sam2long.demo.launch import main as demo_main

    return demo_main(argv)


def _sav_main(argv: list[str]) -> Any:
    from sav_dataset.sav_evaluator import main as sav_main

    return sav_main(argv)


def _lvos_main(argv: list[str]) -> Any:
    from sav_dataset.lvos_evaluator import main as lvos_main

    return lvos_main(argv)


# Subcommands that hand their arguments to another entry point unchanged (imported when called).
_PASSTHROUGH = {
    "vos": ("dataset VOS inference (sam2long vos --help)", _vos_main),
    "sot": ("box-tracking benchmark inference (sam2long sot --help)", _sot_main),
    "download": ("download checkpoints by model name (sam2long download --help)", _download_main),
    "demo": ("interactive web demo, Gradio (sam2long demo --help)", _demo_main),
}
_EVALUATORS = {"sav": _sav_main, "lvos": _lvos_main, "sot": _sot_eval_main}


def _plain(text: str) -> str:
    """reST markup as the terminal should show it: ``x`` and :role:`x` as x, a closing :: as :."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", text)
    return re.sub(r"::$", ":", text.replace("``", ""), flags=re.MULTILINE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sam2long", description=_plain(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    for name, (help_text, _) in _PASSTHROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    sub.add_parser(
        "eval",
        help="evaluate predictions: sam2long eval sav|lvos|sot ... (SA-V, LVOS, DAVIS, box tracking)",
        add_help=False,
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``sam2long`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in _PASSTHROUGH:
        return int(_PASSTHROUGH[argv[0]][1](argv[1:]) or 0)
    if argv and argv[0] == "eval":
        if len(argv) < 2 or argv[1] not in _EVALUATORS:
            parser.error(f"eval needs one of {sorted(_EVALUATORS)}: sam2long eval sav|lvos|sot --help")
        return int(_EVALUATORS[argv[1]](argv[2:]) or 0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
