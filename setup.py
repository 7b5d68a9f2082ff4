"""Packaging for SAM2Long: our SAM 2 implementation (``sam2``) plus the memory tree (``sam2long``)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

REQUIRED = [
    "torch>=2.3",
    "torchvision>=0.18",
    "hydra-core>=1.3.2",
    "iopath>=0.1.10",
    "numpy>=1.24",
    "pillow>=9.4",
    "tqdm>=4.66",
    "opencv-python-headless>=4.7",
    "av>=14.1",
    "pycocotools>=2.0.7",
]

EXTRAS = {
    # tests, lint, and the notebook test (nbclient runs notebooks/video_segmentation.ipynb)
    "dev": [
        "pytest>=7",
        "ruff>=0.4",
        "nbclient>=0.7",
        "nbformat>=5.1",
        "ipykernel>=6.0",
        "matplotlib>=3.7",
        "selenium>=4.11",
        # tests/test_sot.py: GOT-10k val's AO / SR must equal the official toolkit's
        "got10k>=0.1.3",
    ],
    # the web demo: Gradio is this field's demo convention; matplotlib draws the pathway plot
    "demo": ["gradio>=6.0", "matplotlib>=3.7"],
    "notebook": ["jupyterlab>=3", "ipykernel>=6.0", "matplotlib>=3.5"],
    "hf": ["huggingface_hub>=0.20"],
    # detector re-prompting: ultralytics YOLO is the detector SAM2-LongVideo re-prompts with
    "yolo": ["ultralytics>=8.3"],
    # EdgeTAM's RepViT trunk (configs/edgetam.yaml); the official package pins timm 1.0.15
    "edgetam": ["timm>=1.0.15"],
    # the VOT toolkit running our trackers over TraX (sam2long-vot, sam2long/sot/vot.py):
    "vot": [
        # the toolkit itself (`vot initialize / evaluate / analysis`); 0.9.0 is the release tested here
        "vot-toolkit==0.9.0",
        # vot-toolkit 0.9.0 does not import with attributee 0.1.10 (`dataclass_transform() takes 0
        # positional arguments`) and does not bound it itself
        "attributee<0.1.10",
        # the TraX protocol library (`trax` module) our tracker command serves with
        "vot-trax>=4",
    ],
    # box-tracking evaluation (sam2long eval sot): the success and precision plots
    "sot": ["matplotlib>=3.7"],
}

setup(
    name="sam2long",
    version="0.1.0",
    description="SAM2Long: a training-free memory tree for SAM 2 video object segmentation",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["sam2", "sam2.*", "sam2long", "sam2long.*", "sav_dataset", "sav_dataset.*"]),
    package_data={"sam2": ["*.yaml", "configs/**/*.yaml"], "sam2long": ["presets/*.yaml"]},
    include_package_data=True,
    install_requires=REQUIRED,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "sam2long=sam2long.cli:main",
            "sam2long-vos=sam2long.vos.cli:main",
            "sam2long-vot=sam2long.sot.vot:main",
        ]
    },
    python_requires=">=3.10",
)
