"""The Gradio page: a thin layout over :mod:`sam2long.demo.session` (one session per tab, ``gr.State``).

Every callback goes through :func:`guarded`: a :class:`~sam2long.demo.session.DemoError` becomes a
message on the page (``gr.Error``), any other exception is logged and reported the same way, so a
failed request never stops the server or the other tabs. Model work is queued one request at a time
(``concurrency_id="model"``). Analytics are off and no remote fonts are loaded: the page works
without a network.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

from sam2long.config import SAM2LongConfig  # noqa: E402
from sam2long.demo.session import CLICK_MODES, DemoEngine, DemoError, DemoSession, tree_config  # noqa: E402
from sam2long.tracker_spec import TREE_TRACKERS  # noqa: E402

LOGGER = logging.getLogger("sam2long.demo")
MODEL_QUEUE = "model"

HELP = """
**Click** the frame to add the active object (positive / negative clicks, or two corners of a box):
its mask shows at once. **New object** adds another one. **Propagate** tracks every prompted object
from its first prompted frame with SAM2Long (and SAM 2 if ticked). Scrub the frame slider to look at
the result and click any frame to correct it, then propagate again. The pathway plot shows the
memory tree of one object: cumulative scores, candidate IoUs and object-score logits per pathway,
uncertain frames shaded, frames where the pathways coalesced dashed.
"""


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Report a callback's failure on the page (``gr.Error``) instead of breaking the request."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except DemoError as error:
            raise gr.Error(str(error)) from error
        except Exception as error:
            LOGGER.exception("demo request %s failed", fn.__name__)
            raise gr.Error(
                f"internal error ({type(error).__name__}: {error}); the demo keeps running"
            ) from error

    return wrapper


def _need(session: Optional[DemoSession]) -> DemoSession:
    if session is None or session.closed:
        raise DemoError("no video loaded: upload one or press 'Example clip'")
    return session


def _close(session: Optional[DemoSession]) -> None:
    """Gradio's delete callback for a tab's state."""
    if isinstance(session, DemoSession):
        session.close()


class Callbacks:
    """The page's event handlers; each takes the tab's session and returns it with the views."""

    def __init__(self, engine: DemoEngine, default_video: Optional[Path], max_frames: int) -> None:
        self.engine = engine
        self.default_video = default_video
        self.max_frames = max_frames

    # views -------------------------------------------------------------------------------

    def view(self, session: Optional[DemoSession], opened: bool = False) -> tuple:
        """``(session, frame image, frame slider, status, object dropdown, frames to propagate)``; the
        last is only reset when a video was ``opened``."""
        if session is None or session.closed:
            empty = "No video loaded: upload one or press **Example clip**."
            return session, None, gr.update(), empty, gr.update(), gr.update()
        objects = [(f"object {o}", o) for o in session.objects]
        last = session.num_frames - 1
        return (
            session,
            session.render(),
            gr.update(maximum=max(last, 1), value=session.frame_idx, interactive=last > 0),
            session.status(),
            gr.update(choices=objects, value=session.active_obj),
            gr.update(maximum=session.num_frames, value=min(self.max_frames, session.num_frames))
            if opened
            else gr.update(),
        )

    def _open(self, old: Optional[DemoSession], video: Any, copy: bool) -> tuple:
        session = self.engine.open_session(video, copy=copy)
        if old is not None:
            old.close()
        return self.view(session, opened=True) + (None, None, None, gr.update(choices=[], value=None), None)

    # events ------------------------------------------------------------------------------

    def on_load(self, session: Optional[DemoSession]) -> tuple:
        if session is None and self.default_video is not None:
            return self._open(None, self.default_video, copy=False)
        return self.view(session) + (gr.update(),) * 5

    def on_example(self, session: Optional[DemoSession]) -> tuple:
        if self.default_video is None:
            raise DemoError("this server has no example clip: upload a video")
        return self._open(session, self.default_video, copy=False)

    def on_upload(self, session: Optional[DemoSession], upload: Any) -> tuple:
        if upload is None:
            raise DemoError("the upload did not arrive: try again")
        path = upload if isinstance(upload, (str, Path)) else getattr(upload, "name", upload)
        return self._open(session, path, copy=True)

    def on_select(self, session: Optional[DemoSession], mode: str, evt: gr.SelectData) -> tuple:
        x, y = evt.index
        _need(session).click(x, y, mode)
        return self.view(session)

    def on_frame(self, session: Optional[DemoSession], frame_idx: Any) -> tuple:
        _need(session).select_frame(frame_idx)
        return self.view(session)

    def on_object(self, session: Optional[DemoSession], obj_id: Any) -> tuple:
        if obj_id is not None:
            _need(session).set_active_object(obj_id)
        return self.view(session)

    def on_new_object(self, session: Optional[DemoSession]) -> tuple:
        _need(session).new_object()
        return self.view(session)

    def on_undo(self, session: Optional[DemoSession]) -> tuple:
        _need(session).undo_click()
        return self.view(session)

    def on_clear(self, session: Optional[DemoSession]) -> tuple:
        _need(session).clear_frame()
        return self.view(session)

    def on_reset(self, session: Optional[DemoSession]) -> tuple:
        _need(session).reset()
        return self.view(session) + (None, None, None, gr.update(choices=[], value=None), None)

    def on_tracker(self, tracker: str) -> tuple:
        """The tracker's preset into the settings controls: P, δ_iou, δ_conf, modulation on, w_low, w_high."""
        if tracker not in TREE_TRACKERS:
            raise DemoError(f"unknown tracker {tracker!r}")
        config = SAM2LongConfig.resolve(TREE_TRACKERS[tracker])
        low, high = config.memory_modulation or (0.95, 1.05)
        on = config.memory_modulation is not None
        return (config.num_pathways, config.iou_threshold, config.uncertainty, on, low, high)

    def on_propagate(
        self,
        session: Optional[DemoSession],
        tracker: str,
        num_pathways: Any,
        iou_threshold: Any,
        uncertainty: Any,
        modulation_on: bool,
        w_low: Any,
        w_high: Any,
        max_frames: Any,
        compare: bool,
        progress: Any = None,
    ) -> tuple:
        """``view + (overlay video, comparison video, pathway plot, plot object, downloads)``."""
        session = _need(session)
        sam2long_config = tree_config(
            num_pathways, iou_threshold, uncertainty, (w_low, w_high) if modulation_on else None, tracker
        )
        report = None
        if progress is not None:

            def report(fraction: float, text: str) -> None:
                progress(fraction, desc=text)

        run = session.propagate(sam2long_config, int(max_frames), bool(compare), report)
        objects = session.plotted_objects()
        first = objects[0] if objects else None
        return self.view(session) + (
            str(run.overlay),
            str(run.compare) if run.compare is not None else None,
            session.pathway_figure(first),
            gr.update(choices=[(f"object {o}", o) for o in objects], value=first),
            [str(p) for p in run.files],
        )

    def on_plot(self, session: Optional[DemoSession], obj_id: Any) -> Any:
        session = _need(session)
        return session.pathway_figure(None if obj_id is None else int(obj_id))


def build_app(engine: DemoEngine, default_video: Optional[Path] = None, max_frames: int = 30) -> gr.Blocks:
    """The demo's page (not started: see :func:`launch`)."""
    cb = Callbacks(engine, default_video, max_frames)
    model = engine.model.name or Path(engine.model.config_file).stem
    with gr.Blocks(title="SAM2Long demo", analytics_enabled=False, delete_cache=(600, 3600)) as demo:
        session = gr.State(None, delete_callback=_close)
        gr.Markdown(f"## SAM2Long interactive demo · model `{model}` on `{engine.model.device}`")
        with gr.Row():
            with gr.Column(scale=3):
                frame = gr.Image(
                    label="Frame: click to prompt the active object",
                    type="numpy",
                    interactive=False,
                    format="png",
                    elem_id="frame",
                )
                slider = gr.Slider(0, 1, value=0, step=1, label="Frame", elem_id="frame_slider")
                status = gr.Markdown(elem_id="status")
            with gr.Column(scale=2):
                with gr.Row():
                    upload = gr.File(
                        label="Upload a video", file_types=["video"], file_count="single", elem_id="upload"
                    )
                    example = gr.Button("Example clip", elem_id="example")
                mode = gr.Radio(list(CLICK_MODES), value="positive", label="Click adds", elem_id="mode")
                with gr.Row():
                    obj = gr.Dropdown(
                        choices=[("object 1", 1)], value=1, label="Active object", elem_id="object"
                    )
                    new_obj = gr.Button("New object", elem_id="new_object")
                with gr.Row():
                    undo = gr.Button("Undo click", size="sm")
                    clear = gr.Button("Clear this frame", size="sm")
                    reset = gr.Button("Reset all", size="sm", variant="stop")
                with gr.Accordion("Tracker settings", open=True):
                    tracker = gr.Dropdown(
                        choices=list(TREE_TRACKERS),
                        value="sam2long",
                        label="tracker (its preset fills the settings below)",
                        elem_id="tracker",
                    )
                    num_pathways = gr.Slider(1, 6, value=3, step=1, label="P: pathways per object")
                    iou = gr.Slider(0.0, 1.0, value=0.1, step=0.05, label="δ_iou: memory IoU threshold")
                    conf = gr.Slider(0.0, 10.0, value=2.0, step=0.5, label="δ_conf: uncertainty threshold")
                    with gr.Row():
                        modulation = gr.Checkbox(value=True, label="memory modulation")
                        w_low = gr.Number(0.95, label="w_low", minimum=0.01)
                        w_high = gr.Number(1.05, label="w_high", minimum=0.01)
                    frames = gr.Slider(
                        1,
                        max(max_frames, 1),
                        value=max_frames,
                        step=1,
                        label="frames to propagate",
                        elem_id="max_frames",
                    )
                    compare = gr.Checkbox(
                        value=False, label="also run SAM 2 (side by side)", elem_id="compare"
                    )
                propagate = gr.Button("Propagate", variant="primary", elem_id="propagate")
        gr.Markdown(HELP)
        with gr.Row():
            overlay = gr.Video(label="SAM2Long overlay", interactive=False, elem_id="overlay_video")
            side = gr.Video(label="SAM 2 | SAM2Long", interactive=False, elem_id="compare_video")
        with gr.Row():
            with gr.Column(scale=3):
                plot = gr.Plot(label="Memory pathways", format="png", elem_id="pathway_plot")
            with gr.Column(scale=1):
                plot_obj = gr.Dropdown(choices=[], label="Pathways of object", elem_id="plot_object")
                files = gr.File(
                    label="Downloads", file_count="multiple", interactive=False, elem_id="downloads"
                )

        view = [session, frame, slider, status, obj, frames]
        results = [overlay, side, plot, plot_obj, files]
        queued = {"concurrency_id": MODEL_QUEUE, "concurrency_limit": 1}
        demo.load(guarded(cb.on_load), [session], view + results, **queued)
        example.click(guarded(cb.on_example), [session], view + results, **queued)
        upload.upload(guarded(cb.on_upload), [session, upload], view + results, **queued)
        frame.select(guarded(cb.on_select), [session, mode], view, **queued)
        slider.release(guarded(cb.on_frame), [session, slider], view, show_progress="hidden")
        obj.input(guarded(cb.on_object), [session, obj], view)
        new_obj.click(guarded(cb.on_new_object), [session], view)
        undo.click(guarded(cb.on_undo), [session], view, **queued)
        clear.click(guarded(cb.on_clear), [session], view, **queued)
        reset.click(guarded(cb.on_reset), [session], view + results, **queued)

        @guarded
        def on_propagate(s, t, p, i, c, m, lo, hi, n, cmp, progress=gr.Progress()):  # noqa: B008
            return cb.on_propagate(s, t, p, i, c, m, lo, hi, n, cmp, progress)

        tracker.input(guarded(cb.on_tracker), [tracker], [num_pathways, iou, conf, modulation, w_low, w_high])
        propagate.click(
            on_propagate,
            [session, tracker, num_pathways, iou, conf, modulation, w_low, w_high, frames, compare],
            view + results,
            **queued,
        )
        plot_obj.input(guarded(cb.on_plot), [session, plot_obj], plot)
    return demo


def theme() -> gr.themes.Base:
    """The default theme with local fonts only (nothing fetched from the network)."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )


def launch(
    demo: gr.Blocks,
    engine: DemoEngine,
    host: str = "127.0.0.1",
    port: Optional[int] = 7860,
    block: bool = True,
) -> str:
    """Serve ``demo`` on ``host:port`` (never shared); returns the local URL (with ``block``, after
    the server stopped)."""
    demo.queue(default_concurrency_limit=4)
    _, url, _ = demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        ssr_mode=False,
        prevent_thread_lock=not block,
        max_file_size=engine.limits.max_upload_bytes,
        theme=theme(),
        quiet=not block,
    )
    return url
