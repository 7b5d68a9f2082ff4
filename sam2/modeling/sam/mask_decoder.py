"""SAM 2 mask decoder: predicts mask logits, IoU estimates and object scores from prompt tokens."""

from __future__ import annotations

from typing import List, Optional, Tuple, Type

import torch
from torch import Tensor, nn

from sam2.modeling.sam2_utils import MLP, LayerNorm2d

# Logit reported for "object present" when the decoder has no object-score head (sigmoid ~ 1).
_DEFAULT_OBJ_SCORE_LOGIT = 10.0


class MaskDecoder(nn.Module):
    """Transformer mask decoder of SAM 2.

    Learned output tokens (optional object-score token, IoU token, ``1 + num_multimask_outputs``
    mask tokens) are prepended to the prompt tokens and run through ``transformer`` together with
    the image embedding. Each mask token is turned by its own MLP into weights that are dotted with
    the 4x upsampled image embedding to give mask logits.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: Type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        """
        Args:
            transformer_dim: channel width of tokens and image embedding.
            transformer: the two-way transformer run on tokens and image.
            num_multimask_outputs: masks predicted in multimask mode (plus one single-mask token).
            activation: activation class of the upscaling path.
            iou_head_depth / iou_head_hidden_dim: shape of the IoU prediction MLP.
            use_high_res_features: add stride-4/stride-8 backbone features while upscaling.
            iou_prediction_use_sigmoid: squash IoU predictions to [0, 1].
            dynamic_multimask_via_stability: in single-mask eval mode, fall back to the best
                multimask output when the single mask is unstable.
            dynamic_multimask_stability_delta / _thresh: stability score parameters.
            pred_obj_scores: add a token + head predicting whether the object is present.
            pred_obj_scores_mlp: use a 3-layer MLP instead of a linear object-score head.
            use_multimask_token_for_obj_ptr: in multimask mode, return the multimask tokens as
                object-pointer tokens instead of the single-mask token.
        """
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs

        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)

        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, transformer_dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        c4, c8 = transformer_dim // 4, transformer_dim // 8
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, c4, kernel_size=2, stride=2),
            LayerNorm2d(c4),
            activation(),
            nn.ConvTranspose2d(c4, c8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            # Project backbone features (stride 4 -> s0, stride 8 -> s1) to the upscaling widths.
            self.conv_s0 = nn.Conv2d(transformer_dim, c8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(transformer_dim, c4, kernel_size=1, stride=1)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, c8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(transformer_dim, transformer_dim, 1, 3)
                if pred_obj_scores_mlp
                else nn.Linear(transformer_dim, 1)
            )

        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: Optional[List[Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Predict masks for a batch of prompts.

        Args:
            image_embeddings: ``[B_img, C, H, W]`` image features.
            image_pe: ``[1, C, H, W]`` dense positional encoding (``PromptEncoder.get_dense_pe``).
            sparse_prompt_embeddings: ``[B, N, C]`` point/box tokens.
            dense_prompt_embeddings: ``[B, C, H, W]`` mask-prompt embedding.
            multimask_output: return the multimask outputs instead of the single mask.
            repeat_image: repeat each image embedding for every prompt of the batch.
            high_res_features: ``[s0, s1]`` projected stride-4 and stride-8 features, if used.

        Returns:
            masks ``[B, M, 4H, 4W]``, iou predictions ``[B, M]``, SAM output tokens
            ``[B, M_tok, C]`` for object pointers, and object score logits ``[B, 1]``.
        """
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings=image_embeddings,
            image_pe=image_pe,
            sparse_prompt_embeddings=sparse_prompt_embeddings,
            dense_prompt_embeddings=dense_prompt_embeddings,
            repeat_image=repeat_image,
            high_res_features=high_res_features,
        )

        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]

        # The object pointer normally comes from the single-mask token, which is what tracking
        # was trained on, even when multiple masks are returned.
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def _output_tokens(self) -> Tuple[Tensor, int]:
        """Learned output tokens and the index of the IoU token among them."""
        parts = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            parts.insert(0, self.obj_score_token.weight)
        return torch.cat(parts, dim=0), int(self.pred_obj_scores)

    def predict_masks(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        repeat_image: bool,
        high_res_features: Optional[List[Tensor]] = None,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """All mask outputs (single + multimask), IoU, mask tokens and object scores."""
        out_tokens, s = self._output_tokens()
        batch = sparse_prompt_embeddings.size(0)
        tokens = torch.cat((out_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings), dim=1)

        if repeat_image:
            src = torch.repeat_interleave(image_embeddings, batch, dim=0)
        else:
            if image_embeddings.shape[0] != batch:
                raise ValueError("image and prompt batch sizes differ; use repeat_image=True")
            src = image_embeddings
        src = src + dense_prompt_embeddings
        if image_pe.size(0) != 1:
            raise ValueError("image_pe must have batch size 1 (from get_dense_pe())")
        pos_src = torch.repeat_interleave(image_pe, batch, dim=0)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, s, :]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens, :]

        src = src.transpose(1, 2).view(b, c, h, w)
        if self.use_high_res_features:
            up1, ln1, act1, up2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            upscaled = act1(ln1(up1(src) + feat_s1))
            upscaled = act2(up2(upscaled) + feat_s0)
        else:
            upscaled = self.output_upscaling(src)

        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )
        b, c, h, w = upscaled.shape
        masks = (hyper_in @ upscaled.view(b, c, h * w)).view(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            object_score_logits = _DEFAULT_OBJ_SCORE_LOGIT * iou_pred.new_ones(iou_pred.shape[0], 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _get_stability_scores(self, mask_logits: Tensor) -> Tensor:
        """IoU between the masks thresholded at +delta and at -delta (1 when both are empty)."""
        flat = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inner = (flat > delta).sum(dim=-1).float()
        outer = (flat > -delta).sum(dim=-1).float()
        return torch.where(outer > 0, inner / outer, 1.0)

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: Tensor, all_iou_scores: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """Keep the single-mask output when it is stable, else use the best-IoU multimask output."""
        multi_logits = all_mask_logits[:, 1:]
        multi_iou = all_iou_scores[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.size(0), device=all_iou_scores.device)
        best_logits = multi_logits[rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)

        single_logits = all_mask_logits[:, 0:1]
        single_iou = all_iou_scores[:, 0:1]
        stable = self._get_stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh

        mask_out = torch.where(stable[..., None, None].expand_as(single_logits), single_logits, best_logits)
        iou_out = torch.where(stable.expand_as(single_iou), single_iou, best_iou)
        return mask_out, iou_out
