"""``sam2long demo`` / ``python -m sam2long.demo``: serve the Gradio demo (local only by default)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from sam2long.models import add_model_arguments, model_files_from_args

LOGGER = logging.getLogger("sam2long.demo")

# The bundled example clip (present in a source checkout and an editable install).
EXAMPLE_VIDEO = Path(__file__).resolve().parents[2] / "examples" / "bedroom.mp4"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def build_parser() -> argparse.ArgumentParser:
    """The demo's command-line flags (model flags as in ``sam2long segment``)."""
    parser = argparse.ArgumentParser(
        prog="sam2long demo",
        description="Interactive web demo: click objects, propagate with SAM2Long (and SAM 2), "
        "compare, inspect the memory pathways, download masks. Needs pip install -e '.[demo]'.",
    )
    parser.add_argument(
        "--video",
        default=None,
        help=f"video shown when a tab opens (default: the bundled example {EXAMPLE_VIDEO.name})",
    )
    add_model_arguments(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    limits = parser.add_argument_group("limits")
    limits.add_argument(
        "--max_frames", type=int, default=30, help="default of the 'frames to propagate' control"
    )
    limits.add_argument("--max_upload_mb", type=float, default=200.0, help="largest upload (default: 200)")
    limits.add_argument(
        "--max_video_frames", type=int, default=3000, help="longest video accepted (default: 3000)"
    )
    return parser


def model_settings(args: argparse.Namespace):
    """:class:`~sam2long.demo.session.ModelSettings` from ``--config/--checkpoint`` or ``--model``
    (fetching the checkpoint into the cache on first use)."""
    from sam2.build_sam import default_device
    from sam2long.demo.session import ModelSettings

    config, checkpoint, name = model_files_from_args(args)
    device = str(args.device or default_device())
    return ModelSettings(config, checkpoint, tuple(args.hydra_overrides), device, name, args.dtype)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Start the demo server and serve until interrupted; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(None if argv is None else list(argv))
    if args.config is not None and args.checkpoint is None:
        parser.error("--config needs --checkpoint")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Gradio's own health checks
    try:
        from sam2long.demo import app
    except ImportError as error:
        print(f"error: the demo needs Gradio ({error}): pip install -e '.[demo]'", file=sys.stderr)
        return 2
    from sam2long.demo.session import DemoEngine, Limits

    video = Path(args.video) if args.video else EXAMPLE_VIDEO
    if not video.exists():
        if args.video:
            print(f"error: --video {video} does not exist", file=sys.stderr)
            return 2
        LOGGER.warning("the example clip %s is missing; tabs start empty (upload a video)", video)
        video = None
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_video_frames=args.max_video_frames)
    engine = DemoEngine(model_settings(args), limits)
    LOGGER.info(
        "building the model (%s on %s)", engine.model.name or engine.model.config_file, engine.model.device
    )
    engine.sam2long()
    if args.host not in LOCAL_HOSTS:
        LOGGER.warning("listening on %s: anyone who can reach this address can use the demo", args.host)
    demo = app.build_app(engine, default_video=video, max_frames=args.max_frames)
    try:
        app.launch(demo, engine, host=args.host, port=args.port, block=True)
    finally:
        engine.close_sessions()
    return 0
