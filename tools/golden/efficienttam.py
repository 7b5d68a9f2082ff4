"""Record the official EfficientTAM's golden outputs for ``tests/test_efficienttam.py``.

The official code (github.com/yformer/EfficientTAM, package ``efficient_track_anything``) is on
GitHub only, which CI cannot reach; CI compares our ``sam2`` against the files this script writes
to ``tests/golden/efficienttam/`` (format: ``tests/efficienttam_golden.py``).

Check the reference out OUTSIDE this repository, at the pinned commit
(``tests/efficienttam_ref.py``: ``COMMIT``; its package files must match ``TREE_SHA256``)::

    git clone https://github.com/yformer/EfficientTAM /tmp/EfficientTAM
    git -C /tmp/EfficientTAM checkout abcd061ebd3cc6e7527d152d75b890126aaa53f6
    # or: curl -L https://github.com/yformer/EfficientTAM/archive/abcd061ebd3cc6e7527d152d75b890126aaa53f6.tar.gz | tar xz -C /tmp

then, from the repository root, in the environment the tests use (same torch)::

    EFFICIENTTAM_REF_SRC=/tmp/EfficientTAM python tools/golden/efficienttam.py

and commit ``tests/golden/efficienttam/``. Nothing of the reference is installed: it runs in a
subprocess with the checkout on ``PYTHONPATH``, on the drivers, inputs and seeded random weights
of ``tests/test_efficienttam.py`` and ``tests/conftest.py`` (imported from there, not copied).
Regenerate when those change (the tests then fail, saying so). Takes a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

import efficienttam_golden as golden  # noqa: E402
import efficienttam_ref as ref  # noqa: E402
import numpy as np  # noqa: E402
import test_efficienttam as t  # noqa: E402
import torch  # noqa: E402
from conftest import checkpoint_state_dict, copy_first_frames  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref-src", default=None, help=f"reference checkout (default ${ref.REF_SRC_ENV})")
    parser.add_argument("--out", type=Path, default=golden.GOLDEN_DIR)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    opts = parser.parse_args()
    root = ref.locate(opts.ref_src)

    def official(driver, args):
        print(f"running official {driver.__name__} ...", flush=True)
        return ref.run_official(driver, args, root=root, threads=opts.threads)

    with tempfile.TemporaryDirectory(prefix="efficienttam-golden-") as tmp:
        frames = copy_first_frames(Path(tmp), t.NUM_FRAMES)
        (ckpt := Path(tmp) / "ckpt").mkdir()
        state = checkpoint_state_dict(t.CFG, t.SEED, t.OBJ_SCORE_BIAS)
        ckpt = ckpt / "model.pt"
        torch.save({"model": state}, ckpt)
        keys_args = {"configs": t.CONFIGS}
        image_args, video_args = t.image_args(ckpt, frames), t.video_args(ckpt, frames)
        keys = official(t.keys_driver, keys_args)
        image = official(t.image_driver, image_args)
        video = official(t.video_driver, video_args)
        inputs = {
            "keys": golden.describe_args(keys_args),
            "image": golden.describe_args(image_args),
            "video": golden.describe_args(video_args),
        }

    out: Path = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / golden.KEYS).write_text(json.dumps(golden.keys_to_json(keys), separators=(",", ":")) + "\n")
    np.savez_compressed(out / golden.IMAGE, **golden.reduce_image(image))
    np.savez_compressed(out / golden.VIDEO, **golden.pack(golden.reduce_video(video)))
    manifest = {
        "reference": {
            "repo": ref.REPO_URL,
            "commit": ref.COMMIT,
            "package": ref.PACKAGE,
            "tree_sha256": ref.TREE_SHA256,
        },
        "generated": {
            "by": "tools/golden/efficienttam.py",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "device": "cpu",
            "dtype": "float32",
        },
        "state_dict_sha256": golden.state_dict_sha256(state),
        "weights": {"config": t.CFG, "seed": t.SEED, "obj_score_bias": t.OBJ_SCORE_BIAS, "by": "tests/conftest.py:checkpoint_state_dict"},
        "drivers": {"keys": "keys_driver", "image": "image_driver", "video": "video_driver"},
        "inputs": inputs,
    }
    (out / golden.MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    for p in sorted(out.iterdir()):
        print(f"{p.stat().st_size:>9} {p.relative_to(REPO) if p.is_relative_to(REPO) else p}")


if __name__ == "__main__":
    main()
