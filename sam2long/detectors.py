"""Box sources for :mod:`sam2long.reprompt` backed by real detectors.

:class:`YoloBoxSource` wraps an ultralytics YOLO model (the ``[yolo]`` extra: ``pip install
'sam2long[yolo]'``). The user gives the model: a local weights file (``yolo11n.pt`` ...), a model yaml
(an untrained network, for trying the plumbing) or a ``YOLO`` object; nothing is downloaded here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from sam2long.reprompt import Detection


def _import_yolo() -> Any:
    """``ultralytics.YOLO``, keeping PIL's own ``Image.open``: importing ultralytics replaces it
    process-wide with a HEIF fallback that, on any unreadable image, pip-installs ``pi-heif``; our mask
    and frame readers must keep PIL's errors (we hand YOLO arrays, never files)."""
    from PIL import Image

    pil_open = Image.open
    try:
        from ultralytics import YOLO
    except ImportError as error:
        raise ImportError("the YOLO box source needs ultralytics: pip install 'sam2long[yolo]'") from error
    finally:
        Image.open = pil_open
    return YOLO


def _load_yolo(model: Union[str, os.PathLike]) -> Any:
    YOLO = _import_yolo()
    path = Path(model)
    if path.suffix in (".pt", ".onnx", ".engine", ".torchscript") and not path.is_file():
        raise FileNotFoundError(
            f"YOLO model {path} not found: give the path of a local weights file (nothing is downloaded)"
        )
    return YOLO(str(model))


class YoloBoxSource:
    """Boxes, scores and class names of an ultralytics YOLO model on RGB frames.

    Args:
        model: weights file / model yaml path, or a loaded ``ultralytics.YOLO``.
        classes: only these class indices (``None``: all).
        conf: the detector's own confidence threshold (the re-prompt policy applies ``min_score`` too).
        imgsz: inference size.
        device: torch device for the detector (``None``: ultralytics' choice).
    """

    def __init__(
        self,
        model: Union[str, os.PathLike, Any],
        classes: Optional[Sequence[int]] = None,
        conf: float = 0.25,
        imgsz: int = 640,
        device: Optional[str] = None,
    ) -> None:
        self.model = _load_yolo(model) if isinstance(model, (str, os.PathLike)) else model
        self.classes = list(classes) if classes is not None else None
        self.conf = conf
        self.imgsz = imgsz
        self.device = device

    def __call__(self, frame: np.ndarray, frame_idx: int) -> list[Detection]:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(
                f"frame {frame_idx}: expected an (H, W, 3) uint8 RGB frame, got {frame.shape} {frame.dtype}"
            )
        kwargs: dict[str, Any] = dict(conf=self.conf, imgsz=self.imgsz, classes=self.classes, verbose=False)
        if self.device is not None:
            kwargs["device"] = self.device
        # ultralytics reads numpy frames as BGR (OpenCV's order)
        (result,) = self.model.predict(np.ascontiguousarray(frame[..., ::-1]), **kwargs)
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy().astype(float)
        scores = boxes.conf.cpu().numpy().astype(float)
        classes = boxes.cls.cpu().numpy().astype(int)
        names = result.names or {}
        return [
            Detection(tuple(float(v) for v in box), float(score), names.get(int(cls), int(cls)))
            for box, score, cls in zip(xyxy, scores, classes)
        ]
