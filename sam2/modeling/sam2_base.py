"""SAM 2 core model: image backbone, SAM prompt/mask heads and the streaming memory.

``SAM2Base`` owns every trainable part of SAM 2 and implements one tracking step
(:meth:`SAM2Base.track_step`): condition the current frame's features on a bank of past
memories and object pointers, decode masks with the SAM heads, then encode the prediction
into a new memory for later frames. Predictors (image and video) drive it; the module has no
``forward`` of its own.

Every tensor that flows through the tracking step carries a leading batch dimension ``B``
that is simply "the number of parallel tracks" (objects, or objects x hypotheses in
SAM2Long); nothing here assumes a particular meaning for it.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.init import trunc_normal_

from sam2.engine import Candidates, FrameFeatures, FrameOutput, NewMemories
from sam2.modeling.memory import (
    ItemMemory,
    ItemTokens,
    MemoryBatch,
    PointerMemory,
    SpatialMemory,
    pad_and_stack,
    recent_memory_slots,
    tpos_enc_row,
)
from sam2.modeling.sam.mask_decoder import MaskDecoder
from sam2.modeling.sam.prompt_encoder import PromptEncoder
from sam2.modeling.sam.transformer import TwoWayTransformer
from sam2.modeling.sam2_utils import (
    MLP,
    apply_non_overlapping_constraints,
    get_1d_sine_pe,
    select_closest_cond_frames,
)
from sam2.precision import Precision, check_dtype, resolve_precision

# Mask logit written over a whole frame whose object is predicted to be absent.
NO_OBJ_SCORE = -1024.0

# A binary mask used directly as output is mapped to logits {0 -> -10, 1 -> +10}
# (sigmoid(-10) ~= 4.5e-5, i.e. practically a hard mask).
_MASK_LOGIT_SCALE = 20.0
_MASK_LOGIT_BIAS = -10.0

# (temporal position, stored frame output or None for "no frame here")
MemoryEntry = tuple[int, Optional[FrameOutput]]
# (signed/unsigned frame distance, object pointer of shape [B, C])
PointerEntry = tuple[int, Tensor]


class SAMHeadOutputs(NamedTuple):
    """Everything the SAM heads produce for one frame (unpacks like upstream's 7-tuple)."""

    low_res_multimasks: Tensor  # [B, M, 4h, 4w] logits, M = 3 with multimask output else 1
    high_res_multimasks: Tensor  # [B, M, image_size, image_size] logits
    ious: Tensor  # [B, M] predicted IoU of each candidate
    low_res_masks: Tensor  # [B, 1, 4h, 4w] the selected candidate
    high_res_masks: Tensor  # [B, 1, image_size, image_size] the selected candidate
    obj_ptr: Tensor  # [B, C] object pointer of the selected candidate
    object_score_logits: Tensor  # [B, 1] logit that the object is visible


class SAM2Base(nn.Module):
    """Image encoder + memory attention + memory encoder + SAM heads of SAM 2.

    Constructor arguments mirror the official hydra configs, so official checkpoints load
    unchanged. See the inline comments for what each option controls.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        # memories attended to: 1 conditioning slot + (num_maskmem - 1) recent frames
        num_maskmem: int = 7,
        image_size: int = 512,
        backbone_stride: int = 16,
        # mask logits fed to the memory encoder are sigmoid(x) * scale + bias
        sigmoid_scale_for_mem_enc: float = 1.0,
        sigmoid_bias_for_mem_enc: float = 0.0,
        # at eval, encode masks predicted from clicks as hard 0/1 masks in memory
        binarize_mask_from_pts_for_mem_enc: bool = False,
        # on frames with a mask prompt, output that mask directly instead of running SAM
        use_mask_input_as_output_without_sam: bool = False,
        # attend only to this many temporally closest conditioning frames (-1: all)
        max_cond_frames_in_attn: int = -1,
        # on initial conditioning frames, add `no_mem_embed` instead of running memory attention
        directly_add_no_mem_embed: bool = False,
        # feed stride-4 / stride-8 backbone features to the mask decoder
        use_high_res_features_in_sam: bool = False,
        # predict 3 candidate masks on (the first clicks of) initial conditioning frames
        multimask_output_in_sam: bool = False,
        # multimask applies only when the number of clicks lies in [min, max] (a box = 2 clicks)
        multimask_min_pt_num: int = 1,
        multimask_max_pt_num: int = 1,
        # also use multimask output while tracking (not only on initial conditioning frames)
        multimask_output_for_tracking: bool = False,
        # take the object pointer from the selected multimask token
        use_multimask_token_for_obj_ptr: bool = False,
        # squash predicted IoUs into [0, 1] with a sigmoid
        iou_prediction_use_sigmoid: bool = False,
        # eval-time stride r between remembered frames (XMem/Cutie style; the last frame is always kept)
        memory_temporal_stride_for_eval: int = 1,
        # at eval, keep only the top-scoring object per pixel before encoding memories
        non_overlap_masks_for_mem_enc: bool = False,
        # cross-attend to object pointers of other frames in memory attention
        use_obj_ptrs_in_encoder: bool = False,
        max_obj_ptrs_in_encoder: int = 16,
        # temporal positional encoding on object pointers (optionally projected, optionally signed)
        add_tpos_enc_to_obj_ptrs: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = False,
        use_signed_tpos_enc_to_obj_ptrs: bool = False,
        # at eval, only use pointers of conditioning frames that are not in the future
        only_obj_ptrs_in_the_past_for_eval: bool = False,
        # predict whether the object is visible at all
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        # replace (rather than offset) the pointer by `no_obj_ptr` when the object is absent
        fixed_no_obj_ptr: bool = False,
        # blend `no_obj_ptr` in by the visibility probability instead of a hard switch
        soft_no_obj_ptr: bool = False,
        # the decoder's masks and pointers treat the object as present above this object-score logit
        # (SAM 2: 0; SAMURAI lowers it to -1, the name is its config key)
        min_obj_score_logits: float = 0.0,
        use_mlp_for_obj_ptr_proj: bool = False,
        # add a learned embedding to spatial memories of frames where the object is absent
        no_obj_embed_spatial: bool = False,
        # extra keyword arguments for MaskDecoder (e.g. dynamic multimask via stability)
        sam_mask_decoder_extra_args: Optional[dict[str, Any]] = None,
        compile_image_encoder: bool = False,
        # EdgeTAM: compresses every new memory frame to latent tokens (sam2.modeling.perceiver)
        spatial_perceiver: Optional[nn.Module] = None,
        # compute precision of the predictors' public calls: "auto" | "float32" | "bfloat16"
        # (sam2.precision; not a config entry, builders pass it)
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.requested_dtype = check_dtype(dtype)
        if proj_tpos_enc_in_obj_ptrs and not add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs requires add_tpos_enc_to_obj_ptrs")
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr requires pred_obj_scores and use_obj_ptrs_in_encoder")

        # Image backbone (levels 0-2 are used with high-res features, else only level 2).
        self.image_encoder = image_encoder
        self.use_high_res_features_in_sam = use_high_res_features_in_sam
        self.num_feature_levels = 3 if use_high_res_features_in_sam else 1
        self.use_obj_ptrs_in_encoder = use_obj_ptrs_in_encoder
        self.max_obj_ptrs_in_encoder = max_obj_ptrs_in_encoder
        if use_obj_ptrs_in_encoder:
            # Brings a full-resolution mask prompt to stride 4 (the low-res logit grid) so the
            # SAM decoder can turn it into an object pointer.
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.add_tpos_enc_to_obj_ptrs = add_tpos_enc_to_obj_ptrs
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.use_signed_tpos_enc_to_obj_ptrs = use_signed_tpos_enc_to_obj_ptrs
        self.only_obj_ptrs_in_the_past_for_eval = only_obj_ptrs_in_the_past_for_eval

        # Memory attention (current frame <- memories) and memory encoder (frame + mask -> memory).
        self.memory_attention = memory_attention
        self.hidden_dim: int = image_encoder.neck.d_model
        self.memory_encoder = memory_encoder
        self.spatial_perceiver = spatial_perceiver
        self.mem_dim: int = self.hidden_dim
        out_proj = getattr(memory_encoder, "out_proj", None)
        if out_proj is not None and hasattr(out_proj, "weight"):
            self.mem_dim = out_proj.weight.shape[0]  # memories are channel-compressed
        self.num_maskmem = num_maskmem
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, self.mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, self.hidden_dim))
        for param in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc):
            trunc_normal_(param, std=0.02)
        self.directly_add_no_mem_embed = directly_add_no_mem_embed
        self.sigmoid_scale_for_mem_enc = sigmoid_scale_for_mem_enc
        self.sigmoid_bias_for_mem_enc = sigmoid_bias_for_mem_enc
        self.binarize_mask_from_pts_for_mem_enc = binarize_mask_from_pts_for_mem_enc
        self.non_overlap_masks_for_mem_enc = non_overlap_masks_for_mem_enc
        self.memory_temporal_stride_for_eval = memory_temporal_stride_for_eval
        self.use_mask_input_as_output_without_sam = use_mask_input_as_output_without_sam
        self.multimask_output_in_sam = multimask_output_in_sam
        self.multimask_min_pt_num = multimask_min_pt_num
        self.multimask_max_pt_num = multimask_max_pt_num
        self.multimask_output_for_tracking = multimask_output_for_tracking
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.iou_prediction_use_sigmoid = iou_prediction_use_sigmoid

        # SAM prompt encoder + mask decoder.
        self.image_size = image_size
        self.backbone_stride = backbone_stride
        self.sam_mask_decoder_extra_args = sam_mask_decoder_extra_args
        self.pred_obj_scores = pred_obj_scores
        self.pred_obj_scores_mlp = pred_obj_scores_mlp
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        self.min_obj_score_logits = float(min_obj_score_logits)
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, self.hidden_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)
        self.use_mlp_for_obj_ptr_proj = use_mlp_for_obj_ptr_proj
        self.no_obj_embed_spatial: Optional[nn.Parameter] = None
        if no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, self.mem_dim))
            trunc_normal_(self.no_obj_embed_spatial, std=0.02)

        self._build_sam_heads()
        self.max_cond_frames_in_attn = max_cond_frames_in_attn

        if compile_image_encoder:
            # Compile only `forward`, so the module (and its state_dict keys) stay untouched.
            logging.info("Compiling the image encoder; the first forward pass will be slow.")
            self.image_encoder.forward = torch.compile(
                self.image_encoder.forward, mode="max-autotune", fullgraph=True, dynamic=False
            )

    @property
    def device(self) -> torch.device:
        """Device of the model parameters."""
        return next(self.parameters()).device

    @property
    def precision(self) -> Precision:
        """The compute precision of the predictors' calls on the model's current device."""
        return resolve_precision(self.requested_dtype, self.device)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            "SAM2Base has no forward(); use SAM2ImagePredictor / SAM2VideoPredictor for "
            "inference (or a training wrapper for fine-tuning)."
        )

    # ------------------------------------------------------------------ SAM heads

    def _build_sam_heads(self) -> None:
        """Create the SAM prompt encoder, mask decoder and the object-pointer projections."""
        self.sam_prompt_embed_dim = self.hidden_dim
        self.sam_image_embedding_size = self.image_size // self.backbone_stride
        emb = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=self.sam_prompt_embed_dim,
            image_embedding_size=(emb, emb),
            input_image_size=(self.image_size, self.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=self.sam_prompt_embed_dim, mlp_dim=2048, num_heads=8
            ),
            transformer_dim=self.sam_prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=self.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=self.iou_prediction_use_sigmoid,
            pred_obj_scores=self.pred_obj_scores,
            pred_obj_scores_mlp=self.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=self.use_multimask_token_for_obj_ptr,
            **(self.sam_mask_decoder_extra_args or {}),
        )
        # Output token -> object pointer.
        self.obj_ptr_proj: nn.Module
        if not self.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = nn.Identity()
        elif self.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(self.hidden_dim, self.hidden_dim, self.hidden_dim, 3)
        else:
            self.obj_ptr_proj = nn.Linear(self.hidden_dim, self.hidden_dim)
        # Separate projection for the pointers' temporal encoding, so it does not interfere
        # with the spatial positional encoding of the memories.
        self.obj_ptr_tpos_proj: nn.Module
        if self.proj_tpos_enc_in_obj_ptrs:
            self.obj_ptr_tpos_proj = nn.Linear(self.hidden_dim, self.mem_dim)
        else:
            self.obj_ptr_tpos_proj = nn.Identity()

    def _forward_sam_heads(
        self,
        backbone_features: Tensor,
        point_inputs: Optional[dict[str, Tensor]] = None,
        mask_inputs: Optional[Tensor] = None,
        high_res_features: Optional[list[Tensor]] = None,
        multimask_output: bool = False,
    ) -> SAMHeadOutputs:
        """Run the SAM prompt encoder and mask decoder on ``[B, C, h, w]`` features.

        ``point_inputs`` holds ``point_coords`` ``[B, P, 2]`` (x, y in input-image pixels) and
        ``point_labels`` ``[B, P]`` (1 positive, 0 negative, 2/3 box corners, -1 padding).
        ``mask_inputs`` is a ``[B, 1, H, W]`` mask prompt, resized to the prompt encoder's
        grid if needed. ``high_res_features`` are the stride-4 and stride-8 maps (or None).
        With multimask output the candidate with the highest predicted IoU is selected.
        """
        low_res_multimasks, high_res_multimasks, ious, output_tokens, object_score_logits = (
            self._decode_masks(
                backbone_features, point_inputs, mask_inputs, high_res_features, multimask_output
            )
        )
        batch = backbone_features.size(0)
        output_token = output_tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(batch, device=backbone_features.device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
            if output_tokens.size(1) > 1:
                output_token = output_tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks

        return SAMHeadOutputs(
            low_res_multimasks,
            high_res_multimasks,
            ious,
            low_res_masks,
            high_res_masks,
            self._obj_ptr_from_token(output_token, object_score_logits),
            object_score_logits,
        )

    def _decode_masks(
        self,
        backbone_features: Tensor,
        point_inputs: Optional[dict[str, Tensor]] = None,
        mask_inputs: Optional[Tensor] = None,
        high_res_features: Optional[list[Tensor]] = None,
        multimask_output: bool = False,
        gate: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Prompt encoder + mask decoder, keeping every candidate (SAM2Long branches on all of them).

        Returns ``(low_res_multimasks [B, M, 4h, 4w], high_res_multimasks [B, M, S, S],
        ious [B, M], output_tokens [B, M or 1, C], object_score_logits [B, 1])``; with ``gate``, masks of
        objects predicted absent are set to ``NO_OBJ_SCORE``.
        """
        batch = backbone_features.size(0)
        device = backbone_features.device
        emb = self.sam_image_embedding_size
        if backbone_features.shape[1:] != (self.sam_prompt_embed_dim, emb, emb):
            raise ValueError(
                f"expected backbone features [B, {self.sam_prompt_embed_dim}, {emb}, {emb}], "
                f"got {tuple(backbone_features.shape)}"
            )

        if point_inputs is not None:
            coords = point_inputs["point_coords"]
            labels = point_inputs["point_labels"]
            if coords.size(0) != batch or labels.size(0) != batch:
                raise ValueError("point prompts must have the same batch size as the features")
        else:
            # A single padding point (label -1) stands for "no click".
            coords = torch.zeros(batch, 1, 2, device=device)
            labels = -torch.ones(batch, 1, dtype=torch.int32, device=device)

        mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.dim() != 4 or mask_inputs.shape[:2] != (batch, 1):
                raise ValueError(f"mask_inputs must be [B, 1, H, W], got {tuple(mask_inputs.shape)}")
            mask_prompt = mask_inputs
            if mask_inputs.shape[-2:] != self.sam_prompt_encoder.mask_input_size:
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )

        sparse, dense = self.sam_prompt_encoder(points=(coords, labels), boxes=None, masks=mask_prompt)
        low_res_multimasks, ious, output_tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
            repeat_image=False,  # features already have one entry per prompt set
            high_res_features=high_res_features,
        )
        if self.pred_obj_scores and gate:
            # Spatial output is a hard choice: absent objects get an all-background mask.
            is_obj_appearing = object_score_logits > self.min_obj_score_logits
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )

        # Upsample in fp32 (the decoder may run in reduced precision).
        low_res_multimasks = low_res_multimasks.float()
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )

        return low_res_multimasks, high_res_multimasks, ious, output_tokens, object_score_logits

    def _obj_ptr_from_token(self, output_token: Tensor, object_score_logits: Tensor) -> Tensor:
        """Object pointer ``[B, C]`` of a chosen candidate's decoder output token ``[B, C]``."""
        obj_ptr = self.obj_ptr_proj(output_token)
        if self.pred_obj_scores and self.use_obj_ptrs_in_encoder:
            obj_ptr = self._mix_in_no_obj_ptr(obj_ptr, object_score_logits)
        return obj_ptr

    def _mix_in_no_obj_ptr(self, obj_ptr: Tensor, object_score_logits: Tensor) -> Tensor:
        """Blend the learned "no object" pointer in where the object is (likely) absent."""
        if self.soft_no_obj_ptr:
            visible = object_score_logits.sigmoid()
        else:
            visible = (object_score_logits > self.min_obj_score_logits).float()
        if self.fixed_no_obj_ptr:
            obj_ptr = visible * obj_ptr
        return obj_ptr + (1 - visible) * self.no_obj_ptr

    def _use_mask_as_output(
        self,
        backbone_features: Tensor,
        high_res_features: Optional[list[Tensor]],
        mask_inputs: Tensor,
    ) -> SAMHeadOutputs:
        """Turn a binary mask prompt directly into output logits (same outputs as the SAM heads).

        The object pointer still comes from the SAM decoder (prompted with the downsampled
        mask), and visibility is decided by whether the mask has any foreground pixel.
        """
        mask = mask_inputs.float()
        high_res_masks = mask * _MASK_LOGIT_SCALE + _MASK_LOGIT_BIAS
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.size(-2) // 4, high_res_masks.size(-1) // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        batch = mask_inputs.size(0)
        ious = mask_inputs.new_ones(batch, 1).float()  # a mask prompt is taken as certain
        if self.use_obj_ptrs_in_encoder:
            obj_ptr = self._forward_sam_heads(
                backbone_features=backbone_features,
                mask_inputs=self.mask_downsample(mask),
                high_res_features=high_res_features,
            ).obj_ptr
        else:
            obj_ptr = torch.zeros(batch, self.hidden_dim, device=mask_inputs.device)

        visible = torch.any(mask_inputs.flatten(1).float() > 0.0, dim=1)[..., None].float()
        object_score_logits = _MASK_LOGIT_SCALE * visible + _MASK_LOGIT_BIAS
        if self.pred_obj_scores and self.use_obj_ptrs_in_encoder:
            if self.fixed_no_obj_ptr:
                obj_ptr = visible * obj_ptr
            obj_ptr = obj_ptr + (1 - visible) * self.no_obj_ptr

        return SAMHeadOutputs(
            low_res_masks,
            high_res_masks,
            ious,
            low_res_masks,
            high_res_masks,
            obj_ptr,
            object_score_logits,
        )

    # ------------------------------------------------------------------ image features

    def forward_image(self, img_batch: Tensor) -> dict[str, Any]:
        """Run the image encoder on ``[N, 3, H, W]`` images.

        With high-res features enabled, the decoder's 1x1 projections of levels 0 and 1 are
        applied here once, instead of on every prompt.
        """
        backbone_out = self.image_encoder(img_batch)
        if self.use_high_res_features_in_sam:
            fpn = backbone_out["backbone_fpn"]
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return backbone_out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """Keep the used feature levels and flatten them from ``[B, C, H, W]`` to ``[HW, B, C]``."""
        backbone_out = backbone_out.copy()
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        if len(fpn) != len(pos) or len(fpn) < self.num_feature_levels:
            raise ValueError("backbone output has too few or mismatched feature levels")
        feature_maps = fpn[-self.num_feature_levels :]
        pos_maps = pos[-self.num_feature_levels :]
        feat_sizes = [(p.shape[-2], p.shape[-1]) for p in pos_maps]
        vision_feats = [x.flatten(2).permute(2, 0, 1) for x in feature_maps]
        vision_pos_embeds = [p.flatten(2).permute(2, 0, 1) for p in pos_maps]
        return backbone_out, vision_feats, vision_pos_embeds, feat_sizes

    # ------------------------------------------------------------------ memory read-out

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
    ) -> Tensor:
        """Fuse the current frame's top-level features with the memory bank -> ``[B, C, H, W]``."""
        curr = current_vision_feats[-1]
        batch = curr.size(1)
        if self.num_maskmem == 0:
            # Memory disabled (plain SAM on images).
            return self._to_feature_map(curr, feat_sizes[-1])

        if is_init_cond_frame:
            if self.directly_add_no_mem_embed:
                return self._to_feature_map(curr + self.no_mem_embed, feat_sizes[-1])
            # One dummy "no memory" token keeps the attention input non-empty.
            memory = MemoryBatch(
                memory=self.no_mem_embed.expand(1, batch, self.mem_dim),
                memory_pos=self.no_mem_pos_enc.expand(1, batch, self.mem_dim),
                num_obj_ptr_tokens=0,
                num_spatial_mem=1,
            )
        else:
            item = self._memory_item(
                *self._select_memory_entries(frame_idx, output_dict, num_frames, track_in_reverse)
            )
            memory = self.assemble_memory([item], num_frames, curr.device, curr.dtype)
        return self._attend_memory(
            current_vision_feats[-1:], current_vision_pos_embeds[-1:], feat_sizes[-1], memory
        )

    def _to_feature_map(self, seq: Tensor, size: tuple[int, int]) -> Tensor:
        """``[h*w, B, C]`` tokens -> ``[B, C, h, w]`` map."""
        return seq.permute(1, 2, 0).view(seq.size(1), self.hidden_dim, *size)

    def _attend_memory(
        self, vision_feats: list[Tensor], vision_pos: list[Tensor], size: tuple[int, int], memory: MemoryBatch
    ) -> Tensor:
        """Memory attention of the top-level tokens on a memory batch -> ``[B, C, h, w]``."""
        fused = self.memory_attention(
            curr=vision_feats,
            curr_pos=vision_pos,
            memory=memory.memory,
            memory_pos=memory.memory_pos,
            num_obj_ptr_tokens=memory.num_obj_ptr_tokens,
            memory_key_scale=memory.key_scale,
            memory_key_mask=memory.key_mask,
            num_spatial_mem=memory.num_spatial_mem,
        )
        return self._to_feature_map(fused, size)

    # ------------------------------------------------------------------ memory assembly (engine)

    def assemble_memory(
        self, items: Sequence[ItemMemory], num_frames: int, device: torch.device, dtype: torch.dtype
    ) -> MemoryBatch:
        """Turn memory items into the (padded) memory-attention inputs of one batch.

        Spatial memories become ``h*w`` tokens each, positioned by the memory's spatial encoding
        plus ``maskmem_tpos_enc[tpos_index]``; pointers get the sine encoding of their distance
        divided by the largest one (``min(num_frames, max_obj_ptrs_in_encoder) - 1``) and, when
        ``mem_dim`` is smaller than the hidden size, are split into ``C // mem_dim`` tokens.
        Features are cast to ``dtype`` (that of the current frame) on ``device``.
        """
        return pad_and_stack([self._item_tokens(item, num_frames, device, dtype) for item in items], dtype)

    def _item_tokens(
        self, item: ItemMemory, num_frames: int, device: torch.device, dtype: torch.dtype
    ) -> ItemTokens:
        """One item's tokens and positions (see :meth:`assemble_memory`)."""
        batch = item.batch_size
        tokens, positions = [], []
        for entry in item.spatial:
            feats = entry.features.to(device=device, dtype=dtype, non_blocking=True)
            tokens.append(feats.flatten(2).permute(2, 0, 1))
            pos = entry.pos_enc.to(device).flatten(2).permute(2, 0, 1)
            pos = pos + self.maskmem_tpos_enc[entry.tpos_index]
            positions.append(pos.expand(-1, batch, -1))
        tokens_per_frame = tokens[0].size(0)
        ptr_tokens = ptr_pos = None
        split = 1
        if item.pointers:
            channels = self.hidden_dim
            obj_ptrs = torch.stack([entry.pointer for entry in item.pointers], dim=0)  # [N, b, C]
            if self.add_tpos_enc_to_obj_ptrs:
                max_dist = item.pointer_span
                if max_dist is None:
                    max_dist = min(num_frames, self.max_obj_ptrs_in_encoder) - 1
                tpos_dim = channels if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
                rel = torch.tensor([entry.distance for entry in item.pointers], device=device) / max_dist
                ptr_pos = self.obj_ptr_tpos_proj(get_1d_sine_pe(rel, dim=tpos_dim))
                ptr_pos = ptr_pos.unsqueeze(1).expand(-1, batch, self.mem_dim)
            else:
                ptr_pos = obj_ptrs.new_zeros(len(item.pointers), batch, self.mem_dim)
            if self.mem_dim < channels:
                split = channels // self.mem_dim
                obj_ptrs = obj_ptrs.reshape(-1, batch, split, self.mem_dim)
                obj_ptrs = obj_ptrs.permute(0, 2, 1, 3).flatten(0, 1)
                ptr_pos = ptr_pos.repeat_interleave(split, dim=0)
            ptr_tokens = obj_ptrs
        return ItemTokens(
            frames=torch.cat(tokens, dim=0),
            frames_pos=torch.cat(positions, dim=0),
            frame_weights=[entry.weight for entry in item.spatial],
            pointers=ptr_tokens,
            pointers_pos=ptr_pos,
            pointer_weights=[entry.weight for entry in item.pointers],
            tokens_per_frame=tokens_per_frame,
            tokens_per_pointer=split,
        )

    def _spatial_entry(self, out: FrameOutput, t_pos: int) -> SpatialMemory:
        """A stored frame output as a spatial memory at temporal position ``t_pos`` (0 = conditioning)."""
        return SpatialMemory(
            out["maskmem_features"], out["maskmem_pos_enc"][-1], tpos_enc_row(self.num_maskmem, t_pos)
        )

    def _memory_item(self, entries: list[MemoryEntry], pointer_entries: list[PointerEntry]) -> ItemMemory:
        """The memory item of SAM 2's ``(t_pos, output)`` / ``(distance, obj_ptr)`` entries."""
        return ItemMemory(
            spatial=[self._spatial_entry(out, t_pos) for t_pos, out in entries if out is not None],
            pointers=[PointerMemory(ptr, dist) for dist, ptr in pointer_entries],
        )

    def cond_frame_memory(
        self, frame_idx: int, cond_outputs: dict[int, FrameOutput], track_in_reverse: bool
    ) -> ItemMemory:
        """The conditioning part of the memory at ``frame_idx``: the selected conditioning frames
        (temporal slot of ``t_pos = 0``) and, with pointers in the encoder, their pointers."""
        if not cond_outputs:
            raise ValueError("tracking a non-conditioning frame needs at least one conditioning frame")
        selected, _ = select_closest_cond_frames(frame_idx, cond_outputs, self.max_cond_frames_in_attn)
        pointers: list[PointerEntry] = []
        if self.use_obj_ptrs_in_encoder:
            pointers = self._cond_frame_pointers(frame_idx, selected, track_in_reverse)
        return self._memory_item([(0, out) for out in selected.values()], pointers)

    def _select_memory_entries(
        self,
        frame_idx: int,
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
    ) -> tuple[list[MemoryEntry], list[PointerEntry]]:
        """Choose which stored frames feed memory attention for ``frame_idx``.

        Returns ``(memory_entries, pointer_entries)``: ``(t_pos, frame_output)`` pairs for the
        spatial memory (``t_pos`` 0 = conditioning frame, 1..num_maskmem-1 = oldest..newest
        recent frame; ``None`` outputs are skipped) and ``(distance, obj_ptr)`` pairs for the
        object pointers: the selected conditioning frames, then the recent frames of
        :func:`~sam2.modeling.memory.recent_memory_slots` (a conditioning frame dropped by the
        cond-frame limit still counts as recent). Subclasses override this to change the policy.
        """
        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise ValueError("tracking a non-conditioning frame needs at least one conditioning frame")
        selected, unselected = select_closest_cond_frames(
            frame_idx, cond_outputs, self.max_cond_frames_in_attn
        )
        non_cond = output_dict["non_cond_frame_outputs"]
        spatial_slots, pointer_slots = recent_memory_slots(
            frame_idx,
            self.num_maskmem,
            min(num_frames, self.max_obj_ptrs_in_encoder),
            num_frames,
            stride=1 if self.training else self.memory_temporal_stride_for_eval,
            reverse=track_in_reverse,
        )
        memory_entries: list[MemoryEntry] = [(0, out) for out in selected.values()]
        for t_pos, index in spatial_slots:
            out = non_cond.get(index)
            memory_entries.append((t_pos, unselected.get(index) if out is None else out))
        pointer_entries: list[PointerEntry] = []
        if self.use_obj_ptrs_in_encoder:
            pointer_entries = self._cond_frame_pointers(frame_idx, selected, track_in_reverse)
            for distance, index in pointer_slots:
                out = non_cond.get(index, unselected.get(index))
                if out is not None:
                    pointer_entries.append((distance, out["obj_ptr"]))
        return memory_entries, pointer_entries

    def _cond_frame_pointers(
        self, frame_idx: int, selected_cond_outputs: dict[int, FrameOutput], track_in_reverse: bool
    ) -> list[PointerEntry]:
        """``(distance, obj_ptr)`` of the conditioning frames (at eval, optionally only past ones)."""
        cond_outputs = selected_cond_outputs
        if not self.training and self.only_obj_ptrs_in_the_past_for_eval:
            cond_outputs = {
                t: out
                for t, out in selected_cond_outputs.items()
                if (t >= frame_idx if track_in_reverse else t <= frame_idx)
            }
        sign = -1 if track_in_reverse else 1
        entries: list[PointerEntry] = []
        for t, out in cond_outputs.items():
            dist = (frame_idx - t) * sign if self.use_signed_tpos_enc_to_obj_ptrs else abs(frame_idx - t)
            entries.append((dist, out["obj_ptr"]))
        return entries

    # ------------------------------------------------------------------ tracking engine

    def decode_candidates(self, features: FrameFeatures, memory: MemoryBatch) -> Candidates:
        """Memory attention on ``memory`` and the SAM heads without prompts: every row's candidates.

        Rows of ``features`` and ``memory`` correspond; tracking multimask rules apply (3
        candidates when ``multimask_output_for_tracking``).
        """
        pix_feat = self._attend_memory(
            features.vision_feats[-1:], features.vision_pos_embeds[-1:], features.feat_sizes[-1], memory
        )
        low_res, high_res, ious, tokens, object_score_logits = self._decode_masks(
            pix_feat,
            high_res_features=self._high_res_features(features.vision_feats, features.feat_sizes),
            multimask_output=self._use_multimask(is_init_cond_frame=False, point_inputs=None),
        )
        return Candidates(low_res, high_res, ious, tokens, object_score_logits)

    def encode_candidates(
        self, features: FrameFeatures, candidates: Candidates, rows: Tensor, cands: Tensor
    ) -> NewMemories:
        """Object pointers and new memories of candidate ``cands[i]`` of row ``rows[i]``.

        ``features`` must have ``len(rows)`` rows. The rows of one call are the objects the
        ``non_overlap_masks_for_mem_enc`` constraint is resolved across. Memories are returned in
        the compute dtype.
        """
        if features.batch_size != rows.numel():
            raise ValueError(f"features have {features.batch_size} rows for {rows.numel()} chosen candidates")
        token_cands = cands if candidates.tokens.size(1) > 1 else torch.zeros_like(cands)
        scores = candidates.object_score_logits[rows]
        obj_ptr = self._obj_ptr_from_token(candidates.tokens[rows, token_cands], scores)
        maskmem_features, _ = self._encode_new_memory(
            current_vision_feats=features.vision_feats,
            feat_sizes=features.feat_sizes,
            pred_masks_high_res=candidates.high_res_masks[rows, cands].unsqueeze(1),
            object_score_logits=scores,
            is_mask_from_pts=False,
        )
        return NewMemories(
            maskmem_features, obj_ptr, candidates.low_res_masks[rows, cands].unsqueeze(1), scores
        )

    # ------------------------------------------------------------------ memory write

    def _encode_new_memory(
        self,
        current_vision_feats: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: Tensor,
        object_score_logits: Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        """Encode the current frame and its predicted mask logits into a memory (+ positions)."""
        curr = current_vision_feats[-1]
        batch = curr.size(1)
        height, width = feat_sizes[-1]
        pix_feat = curr.permute(1, 2, 0).view(batch, self.hidden_dim, height, width)
        if self.non_overlap_masks_for_mem_enc and not self.training:
            # Objects share the batch dim at eval, so overlaps can be resolved across it.
            pred_masks_high_res = self._apply_non_overlapping_constraints(pred_masks_high_res)
        if self.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts and not self.training:
            # Encode exactly the mask the user sees after clicking.
            mask_for_mem = (pred_masks_high_res > 0).float()
        else:
            mask_for_mem = torch.sigmoid(pred_masks_high_res)
        if self.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * self.sigmoid_scale_for_mem_enc
        if self.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + self.sigmoid_bias_for_mem_enc
        encoded = self.memory_encoder(pix_feat, mask_for_mem, skip_mask_sigmoid=True)
        maskmem_features = encoded["vision_features"]
        maskmem_pos_enc = encoded["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:
            # Mark memories of frames where the object is predicted to be absent.
            absent = 1 - (object_score_logits > 0).float()
            maskmem_features += absent[..., None, None] * self.no_obj_embed_spatial[..., None, None].expand(
                *maskmem_features.shape
            )
        if self.spatial_perceiver is not None:
            maskmem_features, maskmem_pos_enc = self._compress_memory(maskmem_features, maskmem_pos_enc)
        return maskmem_features, maskmem_pos_enc

    def _compress_memory(self, features: Tensor, pos_enc: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """EdgeTAM: ``[B, C, h, w]`` memory -> ``N`` perceiver latents, as a ``[B, C, 1, N]`` map.

        Stored memories keep the 4-D map layout every consumer reads (sessions, SAM2Long's tree):
        ``flatten(2).permute(2, 0, 1)`` of a ``1 x N`` map gives the latents in the official token
        order, so memory assembly and ``tokens_per_frame`` (= ``N``) need no special case.
        """
        latents, pos = self.spatial_perceiver(features, pos_enc[0])
        # [B, N, C] -> [B, C, 1, N]
        return latents.transpose(1, 2).unsqueeze(2), [pos.transpose(1, 2).unsqueeze(2), *pos_enc[1:]]

    # ------------------------------------------------------------------ tracking step

    @staticmethod
    def _high_res_features(
        vision_feats: list[Tensor], feat_sizes: list[tuple[int, int]]
    ) -> Optional[list[Tensor]]:
        """The stride-4/8 maps as ``[B, C, h, w]`` for the mask decoder (None without them)."""
        if len(vision_feats) <= 1:
            return None
        return [
            x.permute(1, 2, 0).view(x.size(1), x.size(2), *size)
            for x, size in zip(vision_feats[:-1], feat_sizes[:-1])
        ]

    def _track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: Optional[dict[str, Tensor]],
        mask_inputs: Optional[Tensor],
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool,
        prev_sam_mask_logits: Optional[Tensor],
    ) -> tuple[FrameOutput, SAMHeadOutputs, Optional[list[Tensor]], Tensor]:
        """Predict masks for one frame; returns (partial output, head outputs, high-res feats, pix feat)."""
        current_out: FrameOutput = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = self._high_res_features(current_vision_feats, feat_sizes)
        if mask_inputs is not None and self.use_mask_input_as_output_without_sam:
            # Treat the mask prompt as ground truth; no memory conditioning needed.
            pix_feat = current_vision_feats[-1].permute(1, 2, 0)
            pix_feat = pix_feat.view(-1, self.hidden_dim, *feat_sizes[-1])
            sam_outputs = self._use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                # Earlier logits (e.g. from interactive clicks) act as the mask prompt.
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits needs point inputs and no mask inputs")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            )
        return current_out, sam_outputs, high_res_features, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: Optional[dict[str, Tensor]],
        run_mem_encoder: bool,
        high_res_masks: Tensor,
        object_score_logits: Tensor,
        current_out: FrameOutput,
    ) -> None:
        """Store the new memory (or None) in ``current_out``."""
        maskmem_features = maskmem_pos_enc = None
        if run_mem_encoder and self.num_maskmem > 0:
            maskmem_features, maskmem_pos_enc = self._encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=point_inputs is not None,
            )
        current_out["maskmem_features"] = maskmem_features
        current_out["maskmem_pos_enc"] = maskmem_pos_enc

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: Optional[dict[str, Tensor]],
        mask_inputs: Optional[Tensor],
        output_dict: dict[str, dict[int, FrameOutput]],
        num_frames: int,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: Optional[Tensor] = None,
    ) -> FrameOutput:
        """Track one frame: predict its masks and (optionally) encode them into a new memory.

        ``track_in_reverse`` walks the video backwards; ``run_mem_encoder=False`` skips the
        memory encoder (e.g. between interactive clicks); ``prev_sam_mask_logits`` are earlier
        low-res logits fed back together with new clicks.
        """
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx,
            is_init_cond_frame,
            current_vision_feats,
            current_vision_pos_embeds,
            feat_sizes,
            point_inputs,
            mask_inputs,
            output_dict,
            num_frames,
            track_in_reverse,
            prev_sam_mask_logits,
        )
        _, _, _, low_res_masks, high_res_masks, obj_ptr, object_score_logits = sam_outputs
        current_out["pred_masks"] = low_res_masks
        current_out["pred_masks_high_res"] = high_res_masks
        current_out["obj_ptr"] = obj_ptr
        if not self.training:
            # Inference only: predictors use it to re-encode memories from consolidated masks.
            current_out["object_score_logits"] = object_score_logits
        self._encode_memory_in_output(
            current_vision_feats,
            feat_sizes,
            point_inputs,
            run_mem_encoder,
            high_res_masks,
            object_score_logits,
            current_out,
        )
        return current_out

    def _use_multimask(self, is_init_cond_frame: bool, point_inputs: Optional[dict[str, Tensor]]) -> bool:
        """Whether the SAM head should output 3 candidate masks for this frame."""
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].size(1)
        return bool(
            self.multimask_output_in_sam
            and (is_init_cond_frame or self.multimask_output_for_tracking)
            and self.multimask_min_pt_num <= num_pts <= self.multimask_max_pt_num
        )

    def _apply_non_overlapping_constraints(self, pred_masks: Tensor) -> Tensor:
        """Keep, at each pixel, only the highest-scoring object (batch dim = objects)."""
        return apply_non_overlapping_constraints(pred_masks)
