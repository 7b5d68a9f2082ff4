"""Our SAM 2 / SAM 2.1 implementation, checkpoint-compatible with the official release.

Importing the package registers ``sam2`` as hydra's config module, so config names such as
``configs/sam2.1/sam2.1_hiera_t.yaml`` (and the legacy ``sam2_hiera_t.yaml``) resolve exactly
as they do upstream.
"""

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra

if not GlobalHydra.instance().is_initialized():
    initialize_config_module("sam2", version_base="1.2")
