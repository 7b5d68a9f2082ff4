"""Write ``video_segmentation.ipynb`` (without outputs) from the cells below: ``python notebooks/make_notebook.py``.

The notebook is generated so that its diff stays reviewable: edit the cells here, run this script and
commit both files. Cell ids are fixed (``tests/test_notebook.py`` checks that the committed notebook is
exactly what this script writes and that it carries no outputs).
"""

from __future__ import annotations

import sys
from pathlib import Path
from textwrap import dedent

import nbformat

NOTEBOOK = Path(__file__).resolve().parent / "video_segmentation.ipynb"

# (cell type, cell id, source)
CELLS: list[tuple[str, str, str]] = [
    (
        "markdown",
        "title",
        """
        # Video segmentation with SAM 2 and SAM2Long

        SAM 2's video predictor segments an object on a prompted frame and tracks it through the video
        with a memory of past frames. It keeps **one** mask per frame, chosen greedily among the mask
        decoder's candidates, so one wrong choice enters the memory and misleads every later frame.

        **SAM2Long** ([Ding et al., 2024](https://arxiv.org/abs/2410.16268)) keeps `P` memory
        *pathways* per object instead: each pathway has its own memory bank and a cumulative score
        Σ log(IoU + ε); every frame each pathway branches into the decoder's 3 candidate masks and
        the best `P` survive. The answer is the best pathway at the end of the video.

        This notebook prompts two objects on the first frame of a short clip, propagates them with SAM 2
        and with SAM2Long (`P = 3`) from the same prompts, shows the masks side by side and looks inside
        SAM2Long's memory tree through its pathway records.
        """,
    ),
    (
        "markdown",
        "setup-md",
        """
        ## Environment set-up

        From the repository root:

        ```bash
        pip install -e ".[notebook]"
        jupyter lab notebooks/
        ```

        The first run downloads the `sam2.1-tiny` checkpoint (156 MB) into the model cache
        (`$SAM2LONG_CACHE/checkpoints/`, default `~/.cache/sam2long/checkpoints/`), or use
        `sam2long download sam2.1-tiny` beforehand. A CUDA GPU is used when there is one; the tiny
        model also runs on a CPU.

        Three optional environment variables change what the notebook runs (the test suite uses
        them to execute it with random weights):

        | variable | meaning |
        |---|---|
        | `SAM2LONG_NOTEBOOK_CHECKPOINT` | a checkpoint file to load instead of fetching the official one by name |
        | `SAM2LONG_NOTEBOOK_OVERRIDES` | extra hydra overrides, separated by spaces, e.g. `++model.image_size=256` |
        | `SAM2LONG_NOTEBOOK_FRAMES` | track at most this many frames after the prompted one (default: the whole video) |
        """,
    ),
    (
        "code",
        "imports",
        """
        import json
        import os
        import shlex
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np
        import torch

        from sam2.utils.frame_sources import open_frame_source
        from sam2long.export import draw_overlay, object_colour
        from sam2long.models import build_model_by_name
        """,
    ),
    (
        "code",
        "device",
        """
        # select the device for computation
        if torch.cuda.is_available():
            device = torch.device("cuda")
        else:
            device = torch.device("cpu")
        print(f"using device: {device}")
        """,
    ),
    (
        "markdown",
        "load-md",
        """
        ### Loading the SAM 2 and SAM2Long video predictors

        `build_model_by_name` turns a model name into a video predictor: the name gives the hydra
        config and the official checkpoint, which is downloaded once and verified against its sha256.
        `tracker="sam2"` gives the plain SAM 2 predictor, `tracker="sam2long"` the memory tree;
        SAM2Long's settings (`num_pathways`, `iou_threshold`, `uncertainty`, ...) are keyword arguments.
        Both predictors load the same weights, so every difference below comes from the tracking.
        """,
    ),
    (
        "code",
        "load",
        """
        model_name = "sam2.1-tiny"
        checkpoint = os.environ.get("SAM2LONG_NOTEBOOK_CHECKPOINT") or None  # None: the official file
        hydra_overrides = shlex.split(os.environ.get("SAM2LONG_NOTEBOOK_OVERRIDES", ""))
        frames_to_track = os.environ.get("SAM2LONG_NOTEBOOK_FRAMES", "")
        max_frame_num_to_track = int(frames_to_track) if frames_to_track else None  # None: all frames

        sam2_predictor = build_model_by_name(
            model_name,
            tracker="sam2",
            device=device,
            checkpoint=checkpoint,
            hydra_overrides_extra=hydra_overrides,
        )
        sam2long_predictor = build_model_by_name(
            model_name,
            tracker="sam2long",
            device=device,
            checkpoint=checkpoint,
            hydra_overrides_extra=hydra_overrides,
            num_pathways=3,
        )
        print(sam2long_predictor.tracker.config)
        """,
    ),
    (
        "markdown",
        "helpers-md",
        """
        Helper functions: boolean masks from the predictors' mask logits, and the prompts drawn on a
        frame. Masks are drawn with `sam2long.export.draw_overlay`, which colours each object as the
        exported overlay videos and palette PNGs do (DAVIS palette).
        """,
    ),
    (
        "code",
        "helpers",
        """
        def masks_from_logits(obj_ids, mask_logits):
            \"\"\"Boolean (H, W) masks by object id from video-resolution mask logits.\"\"\"
            return {int(obj_id): (mask_logits[i, 0] > 0.0).cpu().numpy() for i, obj_id in enumerate(obj_ids)}


        def colour(obj_id):
            \"\"\"The object's overlay colour as a matplotlib RGB tuple.\"\"\"
            return tuple(c / 255 for c in object_colour(obj_id))


        def show_points(coords, labels, ax, marker_size=200):
            coords, labels = np.asarray(coords), np.asarray(labels)
            pos_points = coords[labels == 1]
            neg_points = coords[labels == 0]
            ax.scatter(pos_points[:, 0], pos_points[:, 1], color="green", marker="*", s=marker_size,
                       edgecolor="white", linewidth=1.25)
            ax.scatter(neg_points[:, 0], neg_points[:, 1], color="red", marker="*", s=marker_size,
                       edgecolor="white", linewidth=1.25)


        def show_box(box, ax):
            x0, y0, x1, y1 = box
            ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, edgecolor="green", facecolor=(0, 0, 0, 0), lw=2))


        def show_prompt_result(frame_idx, masks, prompts):
            \"\"\"One frame with the prompts given so far and each predictor's masks.\"\"\"
            fig, axes = plt.subplots(1, len(masks), figsize=(6 * len(masks), 4))
            for ax, (name, tracker_masks) in zip(axes, masks.items()):
                ax.imshow(draw_overlay(source.get(frame_idx), tracker_masks))
                for prompt in prompts:
                    if "points" in prompt:
                        show_points(prompt["points"], prompt["labels"], ax)
                    if "box" in prompt:
                        show_box(prompt["box"], ax)
                ax.set_title(f"{name}, frame {frame_idx}")
                ax.axis("off")
            plt.show()
        """,
    ),
    (
        "markdown",
        "video-md",
        """
        ### The video

        `examples/bedroom.mp4` holds the first 90 frames of upstream SAM 2's bedroom example at 480×270.
        `open_frame_source` opens a folder of JPEG/PNG frames or a video file; video files are decoded
        with PyAV with frame-accurate random access, and a predictor accepts the source as it is.
        """,
    ),
    (
        "code",
        "video",
        """
        video_path = Path("../examples/bedroom.mp4")  # relative to this notebook's folder
        source = open_frame_source(video_path)
        height, width = source.size
        print(f"{video_path.name}: {len(source)} frames of {width}x{height}")

        frame_idx = 0
        plt.figure(figsize=(9, 6))
        plt.title(f"frame {frame_idx}")
        plt.imshow(source.get(frame_idx))
        plt.axis("off")
        plt.show()
        """,
    ),
    (
        "markdown",
        "state-md",
        """
        #### Initialising the inference states

        Each predictor tracks in its own session (`init_state`). With `stream_frames=True` frames are
        decoded when they are first used, so memory does not grow with the video length and only the
        frames that are tracked are decoded.
        """,
    ),
    (
        "code",
        "state",
        """
        sam2_state = sam2_predictor.init_state(source, stream_frames=True)
        sam2long_state = sam2long_predictor.init_state(source, stream_frames=True)
        trackers = {"SAM 2": (sam2_predictor, sam2_state), "SAM2Long": (sam2long_predictor, sam2long_state)}
        """,
    ),
    (
        "markdown",
        "prompt-md",
        """
        ### Prompting two objects

        The prompts are those of `examples/bedroom_prompts.json`: the girl (object 1) with two positive
        clicks and the boy (object 2) with a box, both on frame 0. Coordinates are video pixels
        `(x, y)`; label `1` is a positive click, `0` a negative one. Each prompt goes to both predictors:
        `add_new_points_or_box` returns the masks of all objects on the prompted frame.
        """,
    ),
    (
        "code",
        "prompt-helper",
        """
        prompts = []


        def add_prompt(frame_idx, obj_id, points=None, labels=None, box=None):
            \"\"\"Give one prompt to both predictors; returns each one's masks on that frame.\"\"\"
            prompt = {"obj": obj_id, "frame": frame_idx}
            if points is not None:
                prompt.update(points=points, labels=labels)
            if box is not None:
                prompt["box"] = box
            prompts.append(prompt)
            masks = {}
            for name, (predictor, state) in trackers.items():
                _, out_obj_ids, out_mask_logits = predictor.add_new_points_or_box(
                    state, frame_idx=frame_idx, obj_id=obj_id, points=points, labels=labels, box=box
                )
                masks[name] = masks_from_logits(out_obj_ids, out_mask_logits)
            return masks
        """,
    ),
    (
        "markdown",
        "prompt-clicks-md",
        """
        #### Object 1: two positive clicks
        """,
    ),
    (
        "code",
        "prompt-clicks",
        """
        prompt_masks = add_prompt(frame_idx=0, obj_id=1, points=[[198, 112], [200, 60]], labels=[1, 1])
        show_prompt_result(0, prompt_masks, prompts)
        """,
    ),
    (
        "markdown",
        "prompt-box-md",
        """
        #### Object 2: a box

        A box is `[x0, y0, x1, y1]`. Adding object 2 does not change object 1's mask.
        """,
    ),
    (
        "code",
        "prompt-box",
        """
        prompt_masks = add_prompt(frame_idx=0, obj_id=2, box=[75, 65, 140, 200])
        show_prompt_result(0, prompt_masks, prompts)
        """,
    ),
    (
        "markdown",
        "propagate-sam2-md",
        """
        ### Propagating with SAM 2

        `propagate_in_video` yields `(frame_idx, obj_ids, mask_logits)` for every tracked frame, the
        prompted one included; `max_frame_num_to_track` limits how many frames follow it.
        """,
    ),
    (
        "code",
        "propagate-sam2",
        """
        sam2_masks = {}  # frame_idx -> {obj_id: mask}
        for out_frame_idx, out_obj_ids, out_mask_logits in sam2_predictor.propagate_in_video(
            sam2_state, max_frame_num_to_track=max_frame_num_to_track
        ):
            sam2_masks[out_frame_idx] = masks_from_logits(out_obj_ids, out_mask_logits)
        print(f"SAM 2 tracked {len(sam2_masks)} frames")
        """,
    ),
    (
        "markdown",
        "propagate-sam2long-md",
        """
        ### Propagating with SAM2Long, recording the memory tree

        SAM2Long's `propagate_in_video` takes the same arguments, plus `observer=`: a function called
        with a `sam2long.predictor.PathwayStep` for every object and frame, and an `end` record per
        object after the last frame. A frame is yielded as soon as all pathways of all objects agree on
        it, so the streamed masks are exactly those of the best pathway at the end.
        """,
    ),
    (
        "code",
        "propagate-sam2long",
        """
        sam2long_masks = {}  # frame_idx -> {obj_id: mask}
        records = []
        for out_frame_idx, out_obj_ids, out_mask_logits in sam2long_predictor.propagate_in_video(
            sam2long_state, max_frame_num_to_track=max_frame_num_to_track, observer=records.append
        ):
            sam2long_masks[out_frame_idx] = masks_from_logits(out_obj_ids, out_mask_logits)
        print(f"SAM2Long tracked {len(sam2long_masks)} frames and left {len(records)} pathway records")
        """,
    ),
    (
        "markdown",
        "side-by-side-md",
        """
        ### SAM 2 and SAM2Long side by side

        A few frames spread over the tracked range, SAM 2 in the top row and SAM2Long below.
        """,
    ),
    (
        "code",
        "side-by-side",
        """
        tracked_frames = sorted(sam2_masks)
        picks = np.unique(np.linspace(0, len(tracked_frames) - 1, num=4).round().astype(int))
        shown_frames = [tracked_frames[i] for i in picks]

        fig, axes = plt.subplots(2, len(shown_frames), figsize=(4 * len(shown_frames), 5), squeeze=False)
        for col, out_frame_idx in enumerate(shown_frames):
            frame = source.get(out_frame_idx)
            for row, (name, tracker_masks) in enumerate((("SAM 2", sam2_masks), ("SAM2Long", sam2long_masks))):
                axes[row, col].imshow(draw_overlay(frame, tracker_masks[out_frame_idx]))
                axes[row, col].set_title(f"{name}, frame {out_frame_idx}")
                axes[row, col].axis("off")
        plt.tight_layout()
        plt.show()
        """,
    ),
    (
        "markdown",
        "records-md",
        """
        ### Inside the memory tree: the pathway records

        Each `PathwayStep` tells what one object's tree did on one frame: `kind` is `prompt` (a
        conditioning frame, the pathways collapse onto it), `root` (the first frame after a prompt,
        tracked greedily, which starts the tree), `branch` (a tree selection) or `end`; `certain` says
        whether the frame was certain (some pathway's object-score logit beyond ±`uncertainty`: the
        top `P` candidates by cumulative score are kept) or uncertain (only candidates with distinct
        predicted IoU are kept, for diversity). `scores`, `ious` and `obj_logits` hold one value per
        pathway after the frame (pathway 0 holds the frame's best branch), `best_pathway` is the index
        of the best one, and `created` lists the tree nodes made on the frame with their parent node.
        """,
    ),
    (
        "code",
        "records",
        """
        obj_id = 1
        steps = [r for r in records if r.obj_id == obj_id and r.frame_idx is not None]
        for step in steps[:12]:
            scores = ", ".join(f"{s:7.3f}" for s in step.scores)
            print(f"frame {step.frame_idx:3d}  {step.kind:7s}  certain={step.certain!s:5s}  scores=[{scores}]")
        """,
    ),
    (
        "markdown",
        "scores-md",
        """
        #### Cumulative scores per pathway

        For object 1: the cumulative score of each of the `P` pathways per frame, with uncertain frames
        shaded. Pathway slots are reassigned every frame (slot 0 holds the best branch), so a line
        follows a slot, not one lineage.
        """,
    ),
    (
        "code",
        "scores",
        """
        tree_steps = [s for s in steps if s.kind in ("root", "branch")]
        uncertain = [s.frame_idx for s in tree_steps if s.certain is False]
        num_pathways = sam2long_predictor.tracker.config.num_pathways

        fig, ax = plt.subplots(figsize=(10, 4))
        for i, frame in enumerate(uncertain):
            ax.axvspan(frame - 0.5, frame + 0.5, color="0.85", lw=0, label="uncertain frame" if i == 0 else None)
        for p in range(num_pathways):
            ax.plot([s.frame_idx for s in tree_steps], [s.scores[p] for s in tree_steps], marker=".",
                    label=f"pathway {p}")
        ax.set_xlabel("frame")
        ax.set_ylabel("cumulative score  Σ log(IoU + ε)")
        ax.set_title(f"SAM2Long pathways of object {obj_id}")
        ax.legend()
        plt.show()
        """,
    ),
    (
        "markdown",
        "logits-md",
        """
        #### Object-score logits: SAM 2 vs SAM2Long's best pathway

        The object-score logit says whether the object is visible (> 0). For SAM 2 it is read from the
        session's stored frame outputs. For SAM2Long the best pathway is followed back from the `end`
        record through the parents of the created nodes; since SAM2Long stores the best pathway's outputs
        in its session, the same values are also found there. The best pathway starts on the frame
        after the prompt (the prompted frame is shared by both trackers). The grey band is
        ±`uncertainty`, the range in which a frame counts as uncertain.
        """,
    ),
    (
        "code",
        "logits",
        """
        def session_object_logits(state, obj_id):
            \"\"\"Frame -> object-score logit stored in a session for one object.\"\"\"
            outputs = state["output_dict_per_obj"][state["obj_id_to_idx"][obj_id]]
            logits = {}
            for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
                for out_frame_idx, out in outputs[kind].items():
                    logits[out_frame_idx] = float(out["object_score_logits"].flatten()[0])
            return dict(sorted(logits.items()))


        def best_pathway_object_logits(records, obj_id):
            \"\"\"Frame -> object-score logit along the final best pathway (since the last prompt).\"\"\"
            nodes = {}
            for record in records:
                if record.obj_id == obj_id:
                    for node in record.created:
                        nodes[node.node] = (record.frame_idx, node)
            end = next(r for r in records if r.obj_id == obj_id and r.kind == "end")
            logits = {}
            node_id = end.pathway_nodes[end.best_pathway]
            while node_id is not None:
                out_frame_idx, node = nodes[node_id]
                logits[out_frame_idx] = node.obj_logit
                node_id = node.parent
            return dict(sorted(logits.items()))


        sam2_logits = session_object_logits(sam2_state, obj_id)
        best_logits = best_pathway_object_logits(records, obj_id)
        stored_logits = session_object_logits(sam2long_state, obj_id)
        best_path_matches_session = bool(
            np.allclose(list(best_logits.values()), [stored_logits[f] for f in best_logits], atol=1e-5)
        )
        print(f"best pathway's logits equal SAM2Long's stored outputs: {best_path_matches_session}")

        delta_conf = sam2long_predictor.tracker.config.uncertainty
        fig, ax = plt.subplots(figsize=(10, 4))
        ax.axhspan(-delta_conf, delta_conf, color="0.9", lw=0, label="±uncertainty")
        ax.axhline(0.0, color="0.5", lw=1)
        ax.plot(list(sam2_logits), list(sam2_logits.values()), marker=".", label="SAM 2")
        ax.plot(list(best_logits), list(best_logits.values()), marker=".", label="SAM2Long, best pathway")
        ax.set_xlabel("frame")
        ax.set_ylabel("object-score logit")
        ax.set_title(f"object {obj_id}")
        ax.legend()
        plt.show()
        """,
    ),
    (
        "markdown",
        "summary-md",
        """
        ### Summary

        Finally a small JSON summary is written into the working directory: frames tracked per tracker,
        the objects, per object the number of branch (tree selection) frames and of uncertain frames,
        and the mean mask area in pixels per object and tracker.
        """,
    ),
    (
        "code",
        "summary",
        """
        obj_ids = [int(o) for o in sam2long_state["obj_ids"]]


        def mean_area(masks_by_frame, obj_id):
            return float(np.mean([masks[obj_id].sum() for masks in masks_by_frame.values()]))


        def count_steps(obj_id, certain=None):
            return sum(
                1 for r in records
                if r.obj_id == obj_id and r.kind == "branch" and (certain is None or r.certain is certain)
            )


        summary = {
            "model": model_name,
            "video": video_path.name,
            "video_frames": len(source),
            "frame_size": [height, width],
            "prompts": prompts,
            "objects": obj_ids,
            "num_pathways": num_pathways,
            "frames_processed": {"sam2": len(sam2_masks), "sam2long": len(sam2long_masks)},
            "branch_frames": {str(o): count_steps(o) for o in obj_ids},
            "uncertain_frames": {str(o): count_steps(o, certain=False) for o in obj_ids},
            "mean_mask_area": {
                "sam2": {str(o): mean_area(sam2_masks, o) for o in obj_ids},
                "sam2long": {str(o): mean_area(sam2long_masks, o) for o in obj_ids},
            },
            "best_path_matches_session": best_path_matches_session,
        }
        Path("video_segmentation_outputs.json").write_text(json.dumps(summary, indent=2) + "\\n")
        print(json.dumps(summary, indent=2))
        """,
    ),
]


def build_notebook() -> nbformat.NotebookNode:
    """The notebook, without outputs."""
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    makers = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [makers[kind](dedent(source).strip("\n"), id=cell_id) for kind, cell_id, source in CELLS]
    nbformat.validate(nb)
    return nb


def render() -> str:
    """The notebook file's text."""
    return nbformat.writes(build_notebook()) + "\n"


def main() -> int:
    NOTEBOOK.write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
