"""Unit tests of the SAM 2 heads: shared utils, prompt encoder, mask decoder, memory modules.

Everything runs on CPU with tiny shapes (image 256 -> 16x16 features). Parity with upstream is
tested elsewhere; here we check shapes, documented behaviour and the ``memory_key_scale`` hook.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sam2.modeling.memory_attention import MemoryAttention, MemoryAttentionLayer
from sam2.modeling.memory_encoder import CXBlock, Fuser, MaskDownSampler, MemoryEncoder
from sam2.modeling.position_encoding import PositionEmbeddingSine, apply_rotary_enc, compute_axial_cis
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import Attention, RoPEAttention, TwoWayTransformer
from sam2.modeling.sam2_utils import (
    MLP,
    DropPath,
    LayerNorm2d,
    get_1d_sine_pe,
    get_activation_fn,
    get_clones,
    select_closest_cond_frames,
)

IMG = 256
FS = IMG // 16  # image-embedding side
HW = FS * FS
D = 256  # hidden dim
MEM = 64  # memory dim


def _perturb(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Add seeded noise to every parameter so that no norm/scale/bias stays at its init value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=gen))
    return module.eval()


# --- sam2_utils ---------------------------------------------------------------------------------


def test_mlp_structure_and_forward() -> None:
    torch.manual_seed(0)
    mlp = MLP(8, 16, 4, num_layers=3)
    assert [(lin.in_features, lin.out_features) for lin in mlp.layers] == [(8, 16), (16, 16), (16, 4)]
    x = torch.randn(5, 8)
    manual = x
    for i, lin in enumerate(mlp.layers):
        manual = lin(manual)
        if i < 2:
            manual = F.relu(manual)
    torch.testing.assert_close(mlp(x), manual, rtol=0, atol=0)

    sig = MLP(8, 16, 4, num_layers=2, sigmoid_output=True)
    out = sig(x * 100)
    assert out.min() >= 0 and out.max() <= 1
    one = MLP(8, 16, 4, num_layers=1)
    assert len(one.layers) == 1 and one.layers[0].in_features == 8 and one.layers[0].out_features == 4


def test_layernorm2d_matches_channel_layernorm() -> None:
    torch.manual_seed(0)
    ln = _perturb(LayerNorm2d(6))
    x = torch.randn(2, 6, 5, 7) * 3 + 1
    ref = F.layer_norm(x.permute(0, 2, 3, 1), (6,), ln.weight, ln.bias, eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), ref, rtol=1e-5, atol=1e-5)

    plain = LayerNorm2d(6)
    y = plain(x)
    torch.testing.assert_close(y.mean(1), torch.zeros(2, 5, 7), rtol=0, atol=1e-5)
    torch.testing.assert_close(y.var(1, unbiased=False), torch.ones(2, 5, 7), rtol=0, atol=1e-3)


def test_get_1d_sine_pe() -> None:
    pos = torch.tensor([0.0, 1.0, 3.5])
    pe = get_1d_sine_pe(pos, dim=8)
    assert pe.shape == (3, 8)
    torch.testing.assert_close(pe[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    # Frequencies come in pairs: 10000 ** (2 * (i // 2) / 4) for i in 0..3.
    freqs = torch.tensor([1.0, 1.0, 100.0, 100.0])
    torch.testing.assert_close(pe[2, :4], torch.sin(3.5 / freqs))
    torch.testing.assert_close(pe[2, 4:], torch.cos(3.5 / freqs))


def test_activation_and_clones() -> None:
    assert get_activation_fn("relu") is F.relu
    assert get_activation_fn("gelu") is F.gelu
    assert get_activation_fn("glu") is F.glu
    with pytest.raises(RuntimeError):
        get_activation_fn("tanh")
    base = nn.Linear(3, 3)
    clones = get_clones(base, 3)
    assert len(clones) == 3
    with torch.no_grad():
        clones[0].weight.zero_()
    assert clones[1].weight.abs().sum() > 0 and base.weight.abs().sum() > 0


def test_droppath() -> None:
    x = torch.ones(64, 3, 2)
    dp = DropPath(0.5)
    assert dp.eval()(x) is x
    torch.manual_seed(0)
    y = dp.train()(x)
    per_sample = y.flatten(1)
    # Whole samples are either dropped or scaled by 1 / keep_prob.
    assert set(per_sample.unique().tolist()) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    assert 0 < (per_sample[:, 0] == 0).sum() < 64
    assert DropPath(0.0).train()(x) is x


def test_select_closest_cond_frames() -> None:
    outs = {t: f"o{t}" for t in [0, 10, 20, 30, 40]}
    sel, unsel = select_closest_cond_frames(25, outs, max_cond_frame_num=-1)
    assert sel == outs and unsel == {}
    sel, unsel = select_closest_cond_frames(25, outs, max_cond_frame_num=3)
    assert set(sel) == {20, 30, 10} and set(unsel) == {0, 40}
    assert sel[20] == "o20" and unsel[0] == "o0"
    # Frame at the current index counts as "after".
    sel, _ = select_closest_cond_frames(20, outs, max_cond_frame_num=2)
    assert set(sel) == {10, 20}
    sel, _ = select_closest_cond_frames(50, outs, max_cond_frame_num=2)
    assert set(sel) == {40, 30}
    with pytest.raises(ValueError):
        select_closest_cond_frames(25, outs, max_cond_frame_num=1)


# --- prompt encoder -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prompt_encoder() -> PromptEncoder:
    torch.manual_seed(0)
    return _perturb(
        PromptEncoder(
            embed_dim=D, image_embedding_size=(FS, FS), input_image_size=(IMG, IMG), mask_in_chans=16
        )
    )


def test_prompt_encoder_state_dict_layout(prompt_encoder: PromptEncoder) -> None:
    shapes = {k: tuple(v.shape) for k, v in prompt_encoder.state_dict().items()}
    assert shapes["pe_layer.positional_encoding_gaussian_matrix"] == (2, D // 2)
    assert shapes["mask_downscaling.0.weight"] == (4, 1, 2, 2)
    assert shapes["mask_downscaling.3.weight"] == (16, 4, 2, 2)
    assert shapes["mask_downscaling.6.weight"] == (D, 16, 1, 1)
    assert {f"point_embeddings.{i}.weight" for i in range(4)} <= shapes.keys()
    assert shapes["not_a_point_embed.weight"] == shapes["no_mask_embed.weight"] == (1, D)
    assert prompt_encoder.mask_input_size == (4 * FS, 4 * FS)


@torch.no_grad()
def test_prompt_encoder_points_boxes_masks(prompt_encoder: PromptEncoder) -> None:
    pe = prompt_encoder
    pts = torch.tensor([[[10.0, 20.0], [100.0, 30.0]], [[5.0, 5.0], [200.0, 250.0]]])
    lbl = torch.tensor([[1, 0], [1, -1]])
    boxes = torch.tensor([[10.0, 20.0, 100.0, 200.0], [0.0, 0.0, 255.0, 255.0]])

    sparse, dense = pe((pts, lbl), None, None)
    assert sparse.shape == (2, 3, D)  # a padding token is appended without a box
    no_mask = pe.no_mask_embed.weight.view(1, D, 1, 1).expand(2, D, FS, FS)
    assert torch.equal(dense, no_mask)
    # Padding and label -1 tokens are exactly the "not a point" embedding.
    assert torch.equal(sparse[0, 2], pe.not_a_point_embed.weight[0])
    assert torch.equal(sparse[1, 1], pe.not_a_point_embed.weight[0])
    # Same location with a positive vs negative label differs by the two label embeddings.
    flipped, _ = pe((pts, 1 - lbl.clamp(min=0)), None, None)
    delta = pe.point_embeddings[1].weight[0] - pe.point_embeddings[0].weight[0]
    torch.testing.assert_close(sparse[0, 0] - flipped[0, 0], delta, rtol=0, atol=1e-5)

    sparse_pb, _ = pe((pts, lbl), boxes, None)
    assert sparse_pb.shape == (2, 4, D)  # no padding when a box is present
    sparse_b, _ = pe(None, boxes, None)
    assert sparse_b.shape == (2, 2, D)
    torch.testing.assert_close(sparse_pb[:, 2:], sparse_b, rtol=0, atol=0)
    # A box corner is a point with label 2 / 3.
    corner_pts = boxes.view(2, 2, 2)
    as_points = pe._embed_points(corner_pts, torch.tensor([[2, 3], [2, 3]]), pad=False)
    torch.testing.assert_close(as_points, sparse_b, rtol=0, atol=1e-5)

    masks = torch.randn(2, 1, 4 * FS, 4 * FS)
    sparse_m, dense_m = pe(None, None, masks)
    assert sparse_m.shape == (2, 0, D) and dense_m.shape == (2, D, FS, FS)
    assert not torch.allclose(dense_m[0], dense_m[1])

    _, dense_none = pe(None, None, None)
    assert dense_none.shape == (1, D, FS, FS)
    assert pe.get_dense_pe().shape == (1, D, FS, FS)


# --- transformer / attention --------------------------------------------------------------------


@torch.no_grad()
def test_attention_matches_manual_softmax() -> None:
    torch.manual_seed(0)
    attn = Attention(32, num_heads=4, downsample_rate=2, kv_in_dim=8).eval()
    q, k, v = torch.randn(2, 5, 32), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    out = attn(q, k, v)
    qh = attn.q_proj(q).view(2, 5, 4, 4).transpose(1, 2)
    kh = attn.k_proj(k).view(2, 7, 4, 4).transpose(1, 2)
    vh = attn.v_proj(v).view(2, 7, 4, 4).transpose(1, 2)
    w = torch.softmax(qh @ kh.transpose(-1, -2) / 2.0, dim=-1)
    manual = attn.out_proj((w @ vh).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        Attention(30, num_heads=4)


@torch.no_grad()
def test_two_way_transformer_shapes() -> None:
    torch.manual_seed(0)
    tr = TwoWayTransformer(depth=2, embedding_dim=64, num_heads=4, mlp_dim=128).eval()
    assert tr.layers[0].skip_first_layer_pe and not tr.layers[1].skip_first_layer_pe
    assert tr.layers[0].cross_attn_token_to_image.internal_dim == 32
    img, pe, tok = torch.randn(3, 64, 8, 8), torch.randn(3, 64, 8, 8), torch.randn(3, 6, 64)
    queries, keys = tr(img, pe, tok)
    assert queries.shape == (3, 6, 64) and keys.shape == (3, 64, 64)


@pytest.mark.parametrize("side", [FS, 2 * FS])
@torch.no_grad()
def test_rope_attention_any_size_and_excluded_keys(side: int) -> None:
    torch.manual_seed(0)
    attn = RoPEAttention(64, 2, rope_k_repeat=True, feat_sizes=(64, 64), kv_in_dim=16).eval()
    n, n_ptr = side * side, 3
    q, mem = torch.randn(2, n, 64), torch.randn(2, 2 * n + n_ptr, 16)
    out = attn(q, mem, mem, num_k_exclude_rope=n_ptr)
    assert out.shape == (2, n, 64)
    assert attn.freqs_cis.shape == (n, 16)

    # Manual reference: rotate the two key grids, leave the pointer tokens as projected.
    qh = attn._separate_heads(attn.q_proj(q), 2)
    kh = attn._separate_heads(attn.k_proj(mem), 2)
    vh = attn._separate_heads(attn.v_proj(mem), 2)
    cis = compute_axial_cis(dim=32, end_x=side, end_y=side)
    qr, kr = apply_rotary_enc(qh, kh[:, :, : 2 * n], cis, repeat_freqs_k=True)
    kr = torch.cat([kr, kh[:, :, 2 * n :]], dim=2)
    manual = attn.out_proj(attn._recombine_heads(F.scaled_dot_product_attention(qr, kr, vh)))
    torch.testing.assert_close(out, manual, rtol=1e-5, atol=1e-5)


def test_rope_attention_rejects_bad_inputs() -> None:
    attn = RoPEAttention(32, 1, feat_sizes=(4, 4)).eval()
    with pytest.raises(ValueError):
        attn(torch.randn(1, 16, 32), torch.randn(1, 32, 32), torch.randn(1, 32, 32))
    with pytest.raises(ValueError):
        attn(torch.randn(1, 15, 32), torch.randn(1, 15, 32), torch.randn(1, 15, 32))


# --- mask decoder -------------------------------------------------------------------------------


def _decoder(**kw) -> MaskDecoder:
    tr = TwoWayTransformer(depth=2, embedding_dim=D, mlp_dim=256, num_heads=8)
    return _perturb(MaskDecoder(transformer_dim=D, transformer=tr, num_multimask_outputs=3, **kw))


@pytest.fixture(scope="module")
def full_decoder() -> MaskDecoder:
    torch.manual_seed(0)
    return _decoder(
        use_high_res_features=True,
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_multimask_token_for_obj_ptr=True,
    )


def _decoder_inputs(batch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        image_embeddings=torch.randn(1, D, FS, FS, generator=g),
        image_pe=torch.randn(1, D, FS, FS, generator=g),
        sparse_prompt_embeddings=torch.randn(batch, 3, D, generator=g),
        dense_prompt_embeddings=torch.randn(batch, D, FS, FS, generator=g),
        high_res_features=[
            torch.randn(1, D // 8, 4 * FS, 4 * FS, generator=g),
            torch.randn(1, D // 4, 2 * FS, 2 * FS, generator=g),
        ],
    )


def test_mask_decoder_state_dict_layout(full_decoder: MaskDecoder) -> None:
    shapes = {k: tuple(v.shape) for k, v in full_decoder.state_dict().items()}
    assert shapes["obj_score_token.weight"] == (1, D)
    assert shapes["mask_tokens.weight"] == (4, D)
    assert shapes["conv_s0.weight"] == (D // 8, D, 1, 1)
    assert shapes["conv_s1.weight"] == (D // 4, D, 1, 1)
    assert shapes["pred_obj_score_head.layers.2.weight"] == (1, D)
    assert shapes["iou_prediction_head.layers.2.weight"] == (4, D)
    assert shapes["output_upscaling.3.weight"] == (D // 4, D // 8, 2, 2)
    assert shapes["output_hypernetworks_mlps.3.layers.2.weight"] == (D // 8, D)
    assert shapes["transformer.final_attn_token_to_image.q_proj.weight"] == (D // 2, D)


@torch.no_grad()
def test_mask_decoder_outputs(full_decoder: MaskDecoder) -> None:
    inp = _decoder_inputs(batch=2)
    masks, iou, tokens, obj = full_decoder(**inp, multimask_output=True, repeat_image=True)
    assert masks.shape == (2, 3, 4 * FS, 4 * FS) and iou.shape == (2, 3)
    assert tokens.shape == (2, 3, D) and obj.shape == (2, 1)
    assert iou.min() >= 0 and iou.max() <= 1  # sigmoid IoU head

    single, iou1, tok1, obj1 = full_decoder(**inp, multimask_output=False, repeat_image=True)
    assert single.shape == (2, 1, 4 * FS, 4 * FS) and iou1.shape == (2, 1) and tok1.shape == (2, 1, D)
    all_masks, all_iou, all_tok, _ = full_decoder.predict_masks(
        **{k: v for k, v in inp.items()}, repeat_image=True
    )
    assert torch.equal(single, all_masks[:, :1]) and torch.equal(masks, all_masks[:, 1:])
    assert torch.equal(tok1, all_tok[:, :1]) and torch.equal(tokens, all_tok[:, 1:])
    assert torch.equal(obj, obj1)

    # repeat_image=True is the same as feeding the image repeated per prompt.
    rep = dict(inp, image_embeddings=inp["image_embeddings"].expand(2, -1, -1, -1))
    masks_rep, iou_rep, _, _ = full_decoder(**rep, multimask_output=True, repeat_image=False)
    torch.testing.assert_close(masks_rep, masks, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(iou_rep, iou, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        full_decoder(**inp, multimask_output=True, repeat_image=False)


@torch.no_grad()
def test_mask_decoder_without_obj_head_and_high_res() -> None:
    torch.manual_seed(0)
    dec = _decoder()
    inp = _decoder_inputs(batch=2)
    inp["high_res_features"] = None
    masks, iou, tokens, obj = dec(**inp, multimask_output=True, repeat_image=True)
    assert masks.shape == (2, 3, 4 * FS, 4 * FS) and tokens.shape == (2, 1, D)
    assert torch.equal(obj, torch.full((2, 1), 10.0))
    assert not hasattr(dec, "conv_s0") and not hasattr(dec, "obj_score_token")


def test_dynamic_multimask_via_stability() -> None:
    torch.manual_seed(0)
    dec = _decoder(dynamic_multimask_via_stability=True)
    logits = torch.randn(3, 4, 8, 8) * 4
    logits[0, 0] = 5.0  # single mask perfectly stable
    logits[1, 0] = torch.linspace(-0.1, 0.1, 64).view(8, 8)  # half the pixels flip within +-delta
    logits[2, 0] = -5.0  # empty mask counts as stable
    iou = torch.tensor([[0.1, 0.2, 0.9, 0.3], [0.1, 0.2, 0.3, 0.9], [0.5, 0.9, 0.1, 0.1]])
    scores = dec._get_stability_scores(logits[:, :1])
    assert scores[0].item() == 1.0 and scores[2].item() == 1.0 and scores[1].item() < 0.98
    masks, scores_out = dec._dynamic_multimask_via_stability(logits, iou)
    assert torch.equal(masks[0], logits[0, :1]) and torch.equal(masks[2], logits[2, :1])
    assert torch.equal(masks[1], logits[1, 3:4])  # best multimask IoU is token 3
    assert scores_out.flatten().tolist() == pytest.approx([0.1, 0.9, 0.5])


# --- memory attention ---------------------------------------------------------------------------


def _memory_attention(batch_first: bool = True) -> MemoryAttention:
    def rope(**kw) -> RoPEAttention:
        return RoPEAttention(
            rope_theta=10000.0, feat_sizes=[64, 64], embedding_dim=D, num_heads=1, dropout=0.1, **kw
        )

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope(rope_k_repeat=True, kv_in_dim=MEM),
        d_model=D,
        dim_feedforward=128,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope(),
    )
    return _perturb(
        MemoryAttention(D, pos_enc_at_input=True, layer=layer, num_layers=2, batch_first=batch_first)
    )


@pytest.fixture(scope="module")
def memory_attention() -> MemoryAttention:
    torch.manual_seed(0)
    return _memory_attention()


def _memory_inputs(n_frames: int = 2, n_ptr: int = 4, batch: int = 2, side: int = FS) -> dict:
    g = torch.Generator().manual_seed(1)
    n, m = side * side, n_frames * side * side + n_ptr
    return dict(
        curr=torch.randn(n, batch, D, generator=g),
        curr_pos=torch.randn(n, batch, D, generator=g),
        memory=torch.randn(m, batch, MEM, generator=g),
        memory_pos=torch.randn(m, batch, MEM, generator=g),
        num_obj_ptr_tokens=n_ptr,
    )


@torch.no_grad()
def test_memory_attention_shapes_and_list_input(memory_attention: MemoryAttention) -> None:
    assert len(memory_attention.layers) == 2
    assert memory_attention.layers[0] is not memory_attention.layers[1]
    inp = _memory_inputs()
    out = memory_attention(**inp)
    assert out.shape == (HW, 2, D)
    as_list = memory_attention(**dict(inp, curr=[inp["curr"]], curr_pos=[inp["curr_pos"]]))
    assert torch.equal(out, as_list)
    # Batch elements are independent.
    first = memory_attention(**{k: v[:, :1] if torch.is_tensor(v) else v for k, v in inp.items()})
    torch.testing.assert_close(first, out[:, :1], rtol=1e-5, atol=1e-5)
    big = memory_attention(**_memory_inputs(side=2 * FS))
    assert big.shape == (4 * HW, 2, D)
    with pytest.raises(ValueError):
        memory_attention(**dict(inp, memory=inp["memory"][:, :1]))


@torch.no_grad()
def test_memory_key_scale_none_and_ones_are_identity(memory_attention: MemoryAttention) -> None:
    inp = _memory_inputs()
    base = memory_attention(**inp)
    assert torch.equal(memory_attention(**inp, memory_key_scale=None), base)
    n_mem = inp["memory"].shape[0]
    assert torch.equal(memory_attention(**inp, memory_key_scale=torch.ones(2, n_mem, 1)), base)
    assert torch.equal(memory_attention(**inp, memory_key_scale=torch.ones(1, n_mem, 1)), base)


@torch.no_grad()
def test_memory_key_scale_scales_keys_only(memory_attention: MemoryAttention) -> None:
    inp = _memory_inputs()
    n_mem = inp["memory"].shape[0]
    scale = torch.rand(2, n_mem, 1) + 0.5
    seen: dict[str, list[torch.Tensor]] = {"k": [], "v": []}
    ca = memory_attention.layers[1].cross_attn_image
    hooks = [
        ca.k_proj.register_forward_pre_hook(lambda _m, a: seen["k"].append(a[0])),
        ca.v_proj.register_forward_pre_hook(lambda _m, a: seen["v"].append(a[0])),
    ]
    try:
        out = memory_attention(**inp, memory_key_scale=scale)
    finally:
        for h in hooks:
            h.remove()
    mem_bf, pos_bf = inp["memory"].transpose(0, 1), inp["memory_pos"].transpose(0, 1)
    torch.testing.assert_close(seen["k"][0], (mem_bf + pos_bf) * scale, rtol=0, atol=0)
    torch.testing.assert_close(seen["v"][0], mem_bf, rtol=0, atol=0)
    assert not torch.allclose(out, memory_attention(**inp), atol=1e-4)
    # A per-entry scale shared over the batch broadcasts like the expanded one.
    shared = scale[:1]
    torch.testing.assert_close(
        memory_attention(**inp, memory_key_scale=shared),
        memory_attention(**inp, memory_key_scale=shared.expand(2, -1, -1)),
        rtol=0,
        atol=0,
    )


@torch.no_grad()
def test_memory_key_scale_sequence_first_layers() -> None:
    torch.manual_seed(0)
    layer = MemoryAttentionLayer(
        activation="gelu",
        cross_attention=Attention(D, 1, kv_in_dim=MEM),
        d_model=D,
        dim_feedforward=64,
        dropout=0.0,
        pos_enc_at_attn=True,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=True,
        self_attention=Attention(D, 1),
    )
    ma = _perturb(MemoryAttention(D, pos_enc_at_input=False, layer=layer, num_layers=1, batch_first=False))
    # Plain attention layers treat dim 0 as batch here, so memory and curr need equal lengths.
    inp = _memory_inputs(n_frames=1, n_ptr=0)
    scale = torch.rand(2, inp["memory"].shape[0], 1)
    seen = []
    hook = ma.layers[0].cross_attn_image.k_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    try:
        ma(**inp, memory_key_scale=scale)
    finally:
        hook.remove()
    expected = (inp["memory"] + inp["memory_pos"]) * scale.transpose(0, 1)
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)


def test_memory_attention_dropout_only_in_training(memory_attention: MemoryAttention) -> None:
    inp = _memory_inputs(n_frames=1, n_ptr=0, batch=1)
    with torch.no_grad():
        a = memory_attention.eval()(**inp)
        b = memory_attention(**inp)
        assert torch.equal(a, b)
        torch.manual_seed(0)
        c = memory_attention.train()(**inp)
    memory_attention.eval()
    assert not torch.allclose(a, c)


# --- memory encoder -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def memory_encoder() -> MemoryEncoder:
    torch.manual_seed(0)
    enc = MemoryEncoder(
        out_dim=MEM,
        mask_downsampler=MaskDownSampler(kernel_size=3, stride=2, padding=1),
        fuser=Fuser(CXBlock(dim=D, kernel_size=7, padding=3, layer_scale_init_value=1e-6), num_layers=2),
        position_encoding=PositionEmbeddingSine(
            num_pos_feats=MEM, normalize=True, scale=None, temperature=10000
        ),
    )
    return _perturb(enc)


def test_memory_encoder_layout(memory_encoder: MemoryEncoder) -> None:
    shapes = {k: tuple(v.shape) for k, v in memory_encoder.state_dict().items()}
    # 4 stride-2 stages: 1 -> 4 -> 16 -> 64 -> 256 channels, then a 1x1 projection.
    assert [shapes[f"mask_downsampler.encoder.{i}.weight"] for i in (0, 3, 6, 9)] == [
        (4, 1, 3, 3),
        (16, 4, 3, 3),
        (64, 16, 3, 3),
        (256, 64, 3, 3),
    ]
    assert shapes["mask_downsampler.encoder.12.weight"] == (D, D, 1, 1)
    assert shapes["fuser.layers.1.dwconv.weight"] == (D, 1, 7, 7)
    assert shapes["fuser.layers.0.gamma"] == (D,)
    assert shapes["out_proj.weight"] == (MEM, D, 1, 1)
    assert isinstance(memory_encoder.fuser.proj, nn.Identity)


@torch.no_grad()
def test_memory_encoder_forward(memory_encoder: MemoryEncoder) -> None:
    g = torch.Generator().manual_seed(0)
    pix = torch.randn(2, D, FS, FS, generator=g)
    masks = torch.randn(2, 1, IMG, IMG, generator=g) * 5
    out = memory_encoder(pix, masks)
    feats, (pos,) = out["vision_features"], out["vision_pos_enc"]
    assert feats.shape == (2, MEM, FS, FS) and pos.shape == (2, MEM, FS, FS)
    skipped = memory_encoder(pix, torch.sigmoid(masks), skip_mask_sigmoid=True)
    torch.testing.assert_close(skipped["vision_features"], feats, rtol=0, atol=0)
    other = memory_encoder(pix, -masks)
    assert not torch.allclose(other["vision_features"], feats)


@torch.no_grad()
def test_cxblock_and_fuser() -> None:
    torch.manual_seed(0)
    block = CXBlock(dim=8, kernel_size=3, padding=1)
    x = torch.randn(2, 8, 5, 5)
    with torch.no_grad():
        block.gamma.zero_()
    assert torch.equal(block(x), x)  # zero layer scale: pure residual
    assert CXBlock(dim=8, layer_scale_init_value=0.0).gamma is None
    full = CXBlock(dim=8, kernel_size=3, padding=1, use_dwconv=False)
    assert full.dwconv.weight.shape == (8, 8, 3, 3)
    fuser = Fuser(block, num_layers=2, dim=8, input_projection=True)
    assert isinstance(fuser.proj, nn.Conv2d) and fuser(x).shape == x.shape
    with pytest.raises(ValueError):
        Fuser(block, num_layers=1, input_projection=True)


def test_mask_downsampler_strides() -> None:
    ds = MaskDownSampler(embed_dim=32, kernel_size=4, stride=4, padding=0, total_stride=16)
    assert ds(torch.randn(1, 1, 64, 64)).shape == (1, 32, 4, 4)
    assert math.isclose(len(ds.encoder), 2 * 3 + 1)
    with pytest.raises(ValueError):
        MaskDownSampler(stride=4, total_stride=8)


@torch.no_grad()
def test_memory_key_mask_equals_unpadded_memory(memory_attention: MemoryAttention) -> None:
    """An item padded with masked frames/pointers attends exactly like the item alone."""
    g = torch.Generator().manual_seed(3)
    curr, curr_pos = torch.randn(HW, 2, D, generator=g), torch.randn(HW, 2, D, generator=g)
    frames = torch.randn(2 * HW, 2, MEM, generator=g)
    frames_pos = torch.randn(2 * HW, 2, MEM, generator=g)
    ptrs, ptrs_pos = torch.randn(4, 2, MEM, generator=g), torch.randn(4, 2, MEM, generator=g)
    memory = torch.cat([frames, ptrs])
    memory_pos = torch.cat([frames_pos, ptrs_pos])
    # Item 1 really has one frame and two pointer tokens; the rest is padding (filled with noise).
    valid = torch.ones(2, 2 * HW + 4, dtype=torch.bool)
    valid[1, HW : 2 * HW] = False
    valid[1, 2 * HW + 2 :] = False
    out = memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4, memory_key_mask=valid)

    alone_mem = torch.cat([frames[:HW, 1:], ptrs[:2, 1:]])
    alone_pos = torch.cat([frames_pos[:HW, 1:], ptrs_pos[:2, 1:]])
    alone = memory_attention(curr[:, 1:], alone_mem, curr_pos[:, 1:], alone_pos, num_obj_ptr_tokens=2)
    torch.testing.assert_close(out[:, 1:], alone, rtol=1e-5, atol=1e-5)
    full = memory_attention(
        curr[:, :1], memory[:, :1], curr_pos[:, :1], memory_pos[:, :1], num_obj_ptr_tokens=4
    )
    torch.testing.assert_close(out[:, :1], full, rtol=1e-5, atol=1e-5)
    unmasked = memory_attention(curr, memory, curr_pos, memory_pos, num_obj_ptr_tokens=4)
    assert not torch.allclose(unmasked[:, 1:], alone, atol=1e-3)
