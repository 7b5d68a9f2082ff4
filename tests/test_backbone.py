"""Tests for the SAM 2 image backbone (Hiera trunk, FPN neck) and the positional encodings."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from sam2.modeling.backbones.hieradet import Hiera, MultiScaleBlock
from sam2.modeling.backbones.image_encoder import FpnNeck, ImageEncoder
from sam2.modeling.backbones.utils import PatchEmbed, window_partition, window_unpartition
from sam2.modeling.position_encoding import (
    PositionEmbeddingRandom,
    PositionEmbeddingSine,
    apply_rotary_enc,
    compute_axial_cis,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = [
    "sam2/sam2_hiera_t",
    "sam2/sam2_hiera_s",
    "sam2/sam2_hiera_b+",
    "sam2/sam2_hiera_l",
    "sam2.1/sam2.1_hiera_t",
    "sam2.1/sam2.1_hiera_s",
    "sam2.1/sam2.1_hiera_b+",
    "sam2.1/sam2.1_hiera_l",
]


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    """Fill all parameters with small random values (pos embeds are zero-initialized)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _tiny_hiera(**kwargs) -> Hiera:
    args = dict(
        embed_dim=16,
        num_heads=1,
        stages=(1, 2, 3, 1),
        global_att_blocks=(4,),
        window_pos_embed_bkg_spatial_size=(7, 7),
    )
    args.update(kwargs)
    return Hiera(**args)


def _tiny_encoder(scalp: int = 1) -> ImageEncoder:
    trunk = _tiny_hiera()
    neck = FpnNeck(
        position_encoding=PositionEmbeddingSine(32),
        d_model=32,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=[2, 3],
        fpn_interp_model="nearest",
    )
    return ImageEncoder(trunk, neck, scalp=scalp)


# --- windowing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hw", [(16, 16), (14, 10), (7, 9)])
def test_window_partition_round_trip(hw):
    x = torch.randn(2, *hw, 5)
    windows, padded = window_partition(x, 4)
    assert padded == (math.ceil(hw[0] / 4) * 4, math.ceil(hw[1] / 4) * 4)
    assert windows.shape == (2 * (padded[0] // 4) * (padded[1] // 4), 4, 4, 5)
    # First window is the top-left crop; the second is its right neighbour.
    torch.testing.assert_close(windows[0], x[0, :4, :4])
    torch.testing.assert_close(windows[1], x[0, :4, 4:8])
    torch.testing.assert_close(window_unpartition(windows, 4, padded, hw), x, rtol=0, atol=0)


def test_window_partition_pads_with_zeros():
    x = torch.ones(1, 5, 5, 2)
    windows, padded = window_partition(x, 4)
    assert padded == (8, 8)
    full = window_unpartition(windows, 4, padded, padded)
    assert full[:, :5, :5].eq(1).all() and full[:, 5:].eq(0).all() and full[:, :, 5:].eq(0).all()


def test_patch_embed_is_channels_last_stride_4():
    embed = PatchEmbed(embed_dim=8)
    x = torch.randn(1, 3, 64, 48)
    out = embed(x)
    assert out.shape == (1, 16, 12, 8)
    torch.testing.assert_close(out, embed.proj(x).permute(0, 2, 3, 1))


# --- positional encodings ------------------------------------------------------------------------


def test_sine_embedding_structure():
    pe = PositionEmbeddingSine(64)
    x = torch.zeros(3, 7, 6, 10)
    pos = pe(x)
    assert pos.shape == (3, 64, 6, 10)
    assert torch.equal(pos[0], pos[2])
    assert pos.abs().max() <= 1.0
    # First half depends only on the row, second half only on the column.
    assert torch.equal(pos[0, :32], pos[0, :32, :, :1].expand(-1, -1, 10))
    assert torch.equal(pos[0, 32:], pos[0, 32:, :1, :].expand(-1, 6, -1))
    # Lowest-frequency pair: sin/cos of the normalized (1-based) coordinate times 2*pi.
    rows = torch.arange(1, 7, dtype=torch.float32) / (6 + 1e-6) * 2 * math.pi
    cols = torch.arange(1, 11, dtype=torch.float32) / (10 + 1e-6) * 2 * math.pi
    torch.testing.assert_close(pos[0, 0, :, 0], rows.sin())
    torch.testing.assert_close(pos[0, 1, :, 0], rows.cos())
    torch.testing.assert_close(pos[0, 32, 0, :], cols.sin())
    torch.testing.assert_close(pos[0, 33, 0, :], cols.cos())
    # Higher channel pairs use lower frequencies (temperature ** (2k / 32)).
    torch.testing.assert_close(pos[0, 2, :, 0], (rows / 10000 ** (2 / 32)).sin())


def test_sine_embedding_cache_is_not_aliased():
    pe = PositionEmbeddingSine(16)
    x = torch.zeros(1, 1, 4, 4)
    first = pe(x)
    assert (4, 4) in pe.cache
    first.zero_()
    again = pe(x)
    assert again.abs().sum() > 0
    assert torch.equal(again, PositionEmbeddingSine(16)(x))


def test_sine_embedding_points_and_boxes():
    pe = PositionEmbeddingSine(16)
    x, y = torch.rand(2, 3), torch.rand(2, 3)
    labels = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0]])
    enc = pe.encode_points(x, y, labels)
    assert enc.shape == (2, 3, 17)
    assert torch.equal(enc[..., -1], labels)
    torch.testing.assert_close(enc[..., 0], (y * 2 * math.pi).sin())
    torch.testing.assert_close(enc[..., 8], (x * 2 * math.pi).sin())
    w, h = torch.rand(3), torch.rand(3)
    boxes = pe.encode_boxes(x[0], y[0], w, h)
    assert boxes.shape == (3, 18)
    assert torch.equal(boxes[:, -2], h) and torch.equal(boxes[:, -1], w)
    torch.testing.assert_close(boxes[:, :16], enc[0, :, :16])


def test_sine_embedding_rejects_scale_without_normalize():
    with pytest.raises(ValueError):
        PositionEmbeddingSine(16, normalize=False, scale=1.0)


def test_random_embedding_grid_and_coords():
    torch.manual_seed(0)
    pe = PositionEmbeddingRandom(8)
    grid = pe((4, 6))
    assert grid.shape == (16, 4, 6)
    torch.testing.assert_close(grid[:8] ** 2 + grid[8:] ** 2, torch.ones(8, 4, 6))
    # Pixel centers of the grid encode like the same points given as pixel coordinates.
    coords = torch.tensor([[[0.5, 0.5], [5.5, 3.5]]])
    pts = pe.forward_with_coords(coords, (4, 6))
    torch.testing.assert_close(pts[0, 0], grid[:, 0, 0])
    torch.testing.assert_close(pts[0, 1], grid[:, 3, 5])


def test_axial_rope():
    cis = compute_axial_cis(dim=16, end_x=4, end_y=3)
    assert cis.shape == (12, 8) and cis.is_complex()
    torch.testing.assert_close(cis.abs(), torch.ones(12, 8))
    # Token 5 sits at column 1, row 1: the x and y halves rotate by the same angles.
    torch.testing.assert_close(cis[5, :4], cis[5, 4:])
    torch.testing.assert_close(cis[1, 4:], torch.ones(4, dtype=cis.dtype))

    q, k = torch.randn(2, 2, 12, 16), torch.randn(2, 2, 36, 16)
    q_rot, k_rot = apply_rotary_enc(q, k, cis, repeat_freqs_k=True)
    assert q_rot.shape == q.shape and k_rot.shape == k.shape
    # Rotations preserve the norm of each (even, odd) pair.
    pair_norm = q.reshape(2, 2, 12, 8, 2).norm(dim=-1)
    torch.testing.assert_close(q_rot.reshape(2, 2, 12, 8, 2).norm(dim=-1), pair_norm)
    # Repeated keys are rotated chunk by chunk like the queries.
    for chunk in range(3):
        _, k_chunk = apply_rotary_enc(q, k[:, :, 12 * chunk : 12 * (chunk + 1)], cis)
        torch.testing.assert_close(k_rot[:, :, 12 * chunk : 12 * (chunk + 1)], k_chunk)
    # Relative property: <R(p)q, R(p)k> does not depend on the common position p.
    q1, k1 = q[:1, :1, :1].expand(1, 1, 12, 16), k[:1, :1, :1].expand(1, 1, 12, 16)
    qr, kr = apply_rotary_enc(q1, k1, cis)
    dots = (qr * kr).sum(-1)
    torch.testing.assert_close(dots, dots[..., :1].expand_as(dots))
    empty = k[:, :, :0]
    _, k_empty = apply_rotary_enc(q, empty, cis)
    assert k_empty is empty


# --- Hiera blocks --------------------------------------------------------------------------------


def test_windowed_block_is_local_and_global_block_is_not():
    torch.manual_seed(0)
    windowed = MultiScaleBlock(dim=8, dim_out=8, num_heads=2, window_size=4).eval()
    global_blk = MultiScaleBlock(dim=8, dim_out=8, num_heads=2, window_size=0).eval()
    x = torch.randn(1, 8, 8, 8)
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1.0  # perturb one channel of one token in the top-left window
    with torch.no_grad():
        diff_w = (windowed(x2) - windowed(x)).abs().amax(-1)[0]
        diff_g = (global_blk(x2) - global_blk(x)).abs().amax(-1)[0]
    assert diff_w[:4, :4].min() > 0
    assert diff_w[4:].max() == 0 and diff_w[:, 4:].max() == 0
    assert diff_g.min() > 0


def test_q_pool_block_downsamples_and_widens():
    torch.manual_seed(0)
    block = MultiScaleBlock(dim=8, dim_out=16, num_heads=2, q_stride=(2, 2), window_size=4).eval()
    x = torch.randn(2, 12, 12, 8)  # 12 is not a multiple of the window: exercises padding
    with torch.no_grad():
        out = block(x)
    assert out.shape == (2, 6, 6, 16)
    # Pooling happens inside windows of the input, so the output stays local per window.
    x2 = x.clone()
    x2[:, 8:, 8:, 0] += 1.0
    with torch.no_grad():
        diff = (block(x2) - out).abs().amax(-1)
    assert diff[:, :4, :4].max() == 0 and diff[:, 4:, 4:].min() > 0


def test_hiera_stage_layout():
    trunk = _tiny_hiera(window_spec=(8, 4, 14, 7))
    assert trunk.stage_ends == [0, 2, 5, 6]
    assert trunk.q_pool_blocks == [1, 3, 6]
    assert trunk.channel_list == [128, 64, 32, 16]
    # Global block 4 has no window; a stage's first block keeps the previous stage's window.
    assert [b.window_size for b in trunk.blocks] == [8, 8, 4, 4, 0, 14, 14]
    assert [b.attn.num_heads for b in trunk.blocks] == [1, 2, 2, 4, 4, 4, 8]
    assert trunk.pos_embed.shape == (1, 16, 7, 7)
    assert trunk.pos_embed_window.shape == (1, 16, 8, 8)
    assert trunk.get_num_layers() == 7
    assert trunk.get_layer_id("blocks.3.attn.qkv.weight") == 4
    assert trunk.get_layer_id("pos_embed") == 0


@pytest.mark.parametrize("size", [256, 320, 512])
def test_hiera_any_multiple_of_32(size):
    torch.manual_seed(0)
    trunk = _tiny_hiera().eval()
    _randomize(trunk)
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, size, size))
    expected = [(1, c, size // s, size // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32])]
    assert [tuple(f.shape) for f in feats] == expected
    assert all(torch.isfinite(f).all() for f in feats)


def test_hiera_pos_embed_interpolates_background_and_tiles_window():
    torch.manual_seed(0)
    trunk = _tiny_hiera()
    _randomize(trunk)
    pos = trunk._get_pos_embed((24, 16))
    assert pos.shape == (1, 24, 16, 16)
    background = F.interpolate(trunk.pos_embed, size=(24, 16), mode="bicubic")
    window = (pos.permute(0, 3, 1, 2) - background)[0]
    # What remains after removing the background is the window embedding, repeated every 8 px.
    torch.testing.assert_close(window[:, :8, :8], trunk.pos_embed_window[0])
    torch.testing.assert_close(window[:, 8:16, :8], window[:, :8, :8])
    torch.testing.assert_close(window[:, 16:, 8:], window[:, :8, :8])


def test_hiera_last_layer_only():
    trunk = _tiny_hiera(return_interm_layers=False).eval()
    assert trunk.channel_list == [128]
    with torch.no_grad():
        feats = trunk(torch.randn(1, 3, 64, 64))
    assert len(feats) == 1 and feats[0].shape == (1, 128, 2, 2)


# --- neck and encoder ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [256, 512])
def test_image_encoder_scalp_and_top_down(size):
    torch.manual_seed(0)
    encoder = _tiny_encoder(scalp=1).eval()
    _randomize(encoder)
    image = torch.randn(1, 3, size, size)
    with torch.no_grad():
        trunk_feats = encoder.trunk(image)
        out = encoder(image)
        full, _ = encoder.neck(trunk_feats)
    fpn = out["backbone_fpn"]
    assert [tuple(f.shape) for f in fpn] == [(1, 32, size // s, size // s) for s in (4, 8, 16)]
    assert len(out["vision_pos_enc"]) == 3
    assert out["vision_features"] is fpn[-1]
    convs = encoder.neck.convs
    with torch.no_grad():
        # Levels 0 and 1 are not in fpn_top_down_levels: lateral conv only.
        torch.testing.assert_close(fpn[0], convs[3](trunk_feats[0]))
        torch.testing.assert_close(fpn[1], convs[2](trunk_feats[1]))
        # Level 2 adds the nearest-upsampled coarsest level (which scalp dropped).
        top = convs[0](trunk_feats[3])
        torch.testing.assert_close(full[3], top)
        up = top.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        torch.testing.assert_close(fpn[2], convs[1](trunk_feats[2]) + up)
    for feat, pos in zip(fpn, out["vision_pos_enc"]):
        torch.testing.assert_close(pos, PositionEmbeddingSine(32)(feat))


def test_fpn_avg_fusion_halves_the_sum():
    torch.manual_seed(0)
    channels = [16, 8]
    xs = [torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]
    necks = [
        FpnNeck(PositionEmbeddingSine(8), 8, channels, fuse_type=fuse, fpn_interp_model="bilinear")
        for fuse in ("sum", "avg")
    ]
    necks[1].load_state_dict(necks[0].state_dict())
    with torch.no_grad():
        summed, _ = necks[0](xs)
        averaged, _ = necks[1](xs)
    torch.testing.assert_close(averaged[0], summed[0] / 2)
    torch.testing.assert_close(averaged[1], summed[1])


def test_encoder_rejects_mismatched_channels():
    trunk = _tiny_hiera()
    neck = FpnNeck(PositionEmbeddingSine(8), 8, [1, 2, 3, 4])
    with pytest.raises(ValueError):
        ImageEncoder(trunk, neck)


@pytest.mark.parametrize("name", CONFIGS)
def test_yaml_configs_build_expected_parameters(name):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml").model.image_encoder
    with torch.device("meta"):  # shapes only: skip allocating and initializing the weights
        encoder = instantiate(cfg)
    trunk_cfg = cfg.trunk
    stages = list(trunk_cfg.get("stages", (2, 3, 16, 3)))
    embed_dim = trunk_cfg.embed_dim
    bkg = list(trunk_cfg.get("window_pos_embed_bkg_spatial_size", (14, 14)))
    window0 = list(trunk_cfg.get("window_spec", (8, 4, 14, 7)))[0]
    state = encoder.state_dict()
    assert state["trunk.pos_embed"].shape == (1, embed_dim, *bkg)
    assert state["trunk.pos_embed_window"].shape == (1, embed_dim, window0, window0)
    assert state["trunk.patch_embed.proj.weight"].shape == (embed_dim, 3, 7, 7)
    assert len(encoder.trunk.blocks) == sum(stages)
    widths = [embed_dim * 2**i for i in range(4)]
    assert encoder.trunk.channel_list == widths[::-1] == list(cfg.neck.backbone_channel_list)
    # Stage-transition blocks carry a residual projection, others do not.
    starts = [sum(stages[:i]) for i in range(1, 4)]
    for i, block_start in enumerate(starts):
        w = state[f"trunk.blocks.{block_start}.proj.weight"]
        assert w.shape == (widths[i + 1], widths[i])
    assert sum(re.fullmatch(r"trunk\.blocks\.\d+\.proj\.weight", k) is not None for k in state) == 3
    for level, width in enumerate(widths[::-1]):
        assert state[f"neck.convs.{level}.conv.weight"].shape == (256, width, 1, 1)
    assert encoder.scalp == 1


def test_yaml_tiny_config_forward_256():
    cfg = OmegaConf.load(CONFIG_DIR / "sam2.1/sam2.1_hiera_t.yaml").model.image_encoder
    encoder = instantiate(cfg).eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 256, 256))
    assert [tuple(f.shape) for f in out["backbone_fpn"]] == [
        (1, 256, 64, 64),
        (1, 256, 32, 32),
        (1, 256, 16, 16),
    ]
    assert out["vision_features"].shape == (1, 256, 16, 16)
