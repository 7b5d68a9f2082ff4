"""The SAM2Long memory tree: candidate selection and pathway ancestry (model-free).

Per object, a :class:`PathwayTree` holds ``P`` pathways. Each pathway points at a tree *node* (the candidate
it chose at the latest processing step); a node knows its parent node, so a pathway's ancestry is its memory
history. Steps are processing indices (0, 1, 2, ... in tracking order, forwards or backwards in the video).
Step by step the predictor

1. runs the model once per distinct pathway node (:meth:`PathwayTree.unique_pathways`), producing
   ``iou[P, K]`` and ``obj_logit[P]`` for all pathways,
2. calls :meth:`PathwayTree.branch` (or :func:`select_candidates` + :meth:`PathwayTree.advance`),
3. encodes memory for every node listed in ``report.created`` and :meth:`~PathwayTree.attach` es it
   as the node's payload,
4. emits the payloads of ``report.committed`` (final answers, in step order) via :meth:`PathwayTree.payload`.

The tree owns the payloads: a released node's payload stays readable until the next update and is then
dropped. Committed steps are those on which every live pathway agrees (coalescence), so the streamed output
equals the official "best pathway after the last frame" answer. With ``max_lag`` the tree additionally
forces a decision (an approximation, see :meth:`PathwayTree.advance`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

import torch

from sam2long.config import SAM2LongConfig
from sam2long.memory_policy import FrameRecord, history_retention


def is_certain(obj_logit: torch.Tensor, uncertainty: float) -> bool:
    """Official test: the frame is certain iff ``max_p |obj_logit[p]| > uncertainty`` (strict)."""
    return float(obj_logit.detach().abs().max()) > uncertainty


def select_candidates(
    scores_cum: torch.Tensor,
    iou: torch.Tensor,
    obj_logit: torch.Tensor,
    num_pathways: int,
    uncertainty: float,
    eps: float = 1e-5,
    score: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose which of the ``P x K`` candidate branches become the next pathways (one object).

    Args:
        scores_cum: ``[P]`` cumulative scores of the current pathways.
        iou: ``[P, K]`` predicted IoU of each pathway's K candidate masks.
        obj_logit: ``[P]`` (or ``[P, 1]``) object-score logit of each pathway's decoder run.
        num_pathways: number of branches to keep.
        uncertainty: certainty threshold on ``max |obj_logit|`` (strict).
        eps: added to the IoU inside the log.
        score: ``[P, K]`` what a branch is scored by instead of its IoU (SAMURAI's motion-weighted
            score); the diversity rule still reads the IoU.

    Returns ``(parent_idx, cand_idx, new_scores)`` on CPU (int64, int64, float64), in the order of the
    new pathways. Exactly as the official code:

    - branch score ``scores_cum[p] + log(iou[p, k] + eps)`` in float64 (``score`` in place of ``iou``
      when given);
    - candidates sorted by score, descending, **stable** on the row-major ``(p, k)`` order (ties keep
      the lower ``p``, then the lower ``k`` first — Python's ``sorted(reverse=True)`` semantics);
    - certain frame: the first ``num_pathways`` of that order;
    - uncertain frame: walk the order and keep a branch only if its signed IoU (``iou`` if
      ``obj_logit[p] > 0`` else ``-iou``, as float32) rounded with Python ``round(x, 2)`` is new; if fewer
      than ``num_pathways`` were kept, append, for each parent ``p = 0, 1, ...`` not yet represented, its
      best branch, until ``num_pathways`` are kept.

    The first new pathway is always the best-scoring branch.
    """
    if iou.dim() != 2:
        raise ValueError(f"iou must have shape [P, K], got {tuple(iou.shape)}")
    num_parents, num_cands = iou.shape
    obj = obj_logit.detach().reshape(-1).cpu()
    cum = scores_cum.detach().reshape(-1).cpu()
    if obj.numel() != num_parents or cum.numel() != num_parents:
        raise ValueError(
            f"scores_cum {tuple(scores_cum.shape)} and obj_logit {tuple(obj_logit.shape)} must have "
            f"{num_parents} entries to match iou {tuple(iou.shape)}"
        )
    if num_pathways < 1:
        raise ValueError(f"num_pathways must be >= 1, got {num_pathways}")
    iou_cpu = iou.detach().cpu()
    ranked = iou_cpu if score is None else score.detach().cpu()
    if ranked.shape != iou.shape:
        raise ValueError(f"score {tuple(ranked.shape)} must have the shape of iou {tuple(iou.shape)}")
    branch = cum.to(torch.float64)[:, None] + torch.log(ranked.to(torch.float64) + eps)
    flat_scores = branch.reshape(-1)
    order = torch.sort(flat_scores, descending=True, stable=True).indices.tolist()

    if is_certain(obj, uncertainty):
        chosen = order[:num_pathways]
    else:
        iou32 = iou_cpu.float()
        signed = torch.where(obj[:, None] > 0, iou32, -iou32).reshape(-1).tolist()
        chosen = []
        seen: set[float] = set()
        for idx in order:
            key = round(signed[idx], 2)
            if key not in seen:
                seen.add(key)
                chosen.append(idx)
                if len(chosen) == num_pathways:
                    break
        if len(chosen) < num_pathways:
            represented = {idx // num_cands for idx in chosen}
            for parent in range(num_parents):
                if parent not in represented:
                    chosen.append(next(idx for idx in order if idx // num_cands == parent))
                if len(chosen) == num_pathways:
                    break

    index = torch.tensor(chosen, dtype=torch.int64)
    return index // num_cands, index % num_cands, flat_scores[index]


T = TypeVar("T")


@dataclass
class _Node:
    step: int
    parent: int | None
    candidate: int
    iou: float
    obj_logit: float
    score: float
    motion: float | None = None
    visible: bool = True
    children: int = 0
    refs: int = 0
    committed: bool = False


class Created(NamedTuple):
    """A new distinct node: pathway ``parent_pathway`` (on node ``parent``) chose ``candidate``.

    Roots have ``parent_pathway = -1`` and ``parent = None``.
    """

    node: int
    parent_pathway: int
    candidate: int
    parent: int | None
    iou: float
    obj_logit: float


class Commit(NamedTuple):
    """A step whose answer became final: the node to output there."""

    step: int
    node: int


@dataclass(frozen=True)
class StepReport:
    """What changed in a :class:`PathwayTree` update.

    Attributes:
        created: every new distinct node (store its candidate's data with :meth:`PathwayTree.attach`).
        committed: newly final steps, ascending.
        released: nodes dropped from the tree (their payloads stay readable until the next update).
        forced_step: the step at which ``max_lag`` forced a decision in this update, else ``None``.
    """

    created: tuple[Created, ...] = ()
    committed: tuple[Commit, ...] = ()
    released: tuple[int, ...] = ()
    forced_step: int | None = None


class PathwayTree(Generic[T]):
    """Ancestry of the ``P`` pathways of one object, with streaming commitment, bounded history and
    per-node payloads of type ``T`` (what the predictor stores for a candidate).

    Args:
        num_pathways: ``P``.
        max_lag: if set, whenever the newest step is more than ``max_lag`` steps ahead of the last committed
            step, commit step ``newest - max_lag`` to the best pathway's ancestor there; pathways that do not
            descend from it are replaced by copies of the best pathway (node and score). This is an
            approximation of the official search (which decides only after the last frame).
        history_size / history_filter: committed history retained for memory selection: the latest committed
            node plus the ``history_size`` most recent older committed nodes whose :class:`FrameRecord`
            satisfies ``history_filter`` (all if ``None``); ``history_size=None`` keeps everything. Use
            :func:`sam2long.memory_policy.history_retention` to get values that leave memory selection exact.
        history_recent: the most recent older committed nodes also kept whatever the filter says (a
            policy that reads recent object pointers next to filtered memory frames: SAMURAI's).
        history_rules: instead of the three above, ``(size, predicate)`` rules: an older committed node
            is kept when it is among the ``size`` most recent ones satisfying some rule's predicate
            (``None`` = any); the policy of DAM4SAM's memory needs several.
    """

    def __init__(
        self,
        num_pathways: int,
        *,
        max_lag: int | None = None,
        history_size: int | None = None,
        history_filter: Callable[[FrameRecord], bool] | None = None,
        history_recent: int = 0,
        history_rules: Sequence[tuple[int, Callable[[FrameRecord], bool] | None]] | None = None,
    ) -> None:
        if num_pathways < 1:
            raise ValueError(f"num_pathways must be >= 1, got {num_pathways}")
        if max_lag is not None and max_lag < 1:
            raise ValueError(f"max_lag must be >= 1 or None, got {max_lag}")
        if history_size is not None and history_size < 0:
            raise ValueError(f"history_size must be >= 0 or None, got {history_size}")
        self.num_pathways = num_pathways
        self.max_lag = max_lag
        self.history_size = history_size
        self.history_filter = history_filter
        self.history_recent = history_recent
        if history_rules is None and history_size is not None:
            history_rules = [(history_size, history_filter), (history_recent, None)]
        self.history_rules = None if history_rules is None else list(history_rules)
        self._nodes: dict[int, _Node] = {}
        self._payloads: dict[int, T] = {}
        self._released_payloads: dict[int, T] = {}
        self._next_id = 0
        self._pathways: list[int] = []
        self._scores: list[float] = []
        self._trunk: list[int] = []
        self._latest: int | None = None
        self._closed = False

    # ------------------------------------------------------------------ queries
    @property
    def started(self) -> bool:
        return bool(self._pathways)

    @property
    def pathway_nodes(self) -> tuple[int, ...]:
        """Node of each pathway at the latest step (several pathways may share a node)."""
        return tuple(self._pathways)

    @property
    def scores(self) -> torch.Tensor:
        """``[P]`` float64 cumulative scores."""
        return torch.tensor(self._scores, dtype=torch.float64)

    @property
    def committed_step(self) -> int | None:
        """Last step whose output is final."""
        return self._nodes[self._trunk[-1]].step if self._trunk else None

    @property
    def num_stored_nodes(self) -> int:
        """Number of nodes held (uncommitted ones + retained committed history)."""
        return len(self._nodes)

    def best_pathway(self) -> int:
        """Index of the best pathway: highest cumulative score, lowest index on ties (official pathway 0)."""
        self._require_started()
        best = 0
        for p, score in enumerate(self._scores):
            if score > self._scores[best]:
                best = p
        return best

    def unique_pathways(self) -> tuple[list[int], torch.Tensor]:
        """Distinct pathway nodes (first-appearance order) and ``inverse[P]`` mapping pathways to them.

        Pathways sharing a node have identical memory, so the model needs to run once per distinct node;
        expand its outputs with ``outputs[inverse]`` before selection.
        """
        self._require_started()
        unique: list[int] = []
        position: dict[int, int] = {}
        inverse = []
        for node in self._pathways:
            if node not in position:
                position[node] = len(unique)
                unique.append(node)
            inverse.append(position[node])
        return unique, torch.tensor(inverse, dtype=torch.int64)

    def record(self, node: int) -> FrameRecord:
        """The :class:`FrameRecord` of a stored node."""
        data = self._nodes[node]
        return FrameRecord(data.step, node, data.iou, data.obj_logit, data.motion, data.visible)

    def history(self, pathway: int) -> list[FrameRecord]:
        """Retained ancestry of a pathway, oldest first, ending with its latest node (input of
        :func:`sam2long.memory_policy.plan_memory`)."""
        self._require_started()
        private = []
        node = self._pathways[pathway]
        while not self._nodes[node].committed:
            private.append(node)
            node = self._nodes[node].parent  # type: ignore[assignment]
        records = [self.record(n) for n in self._trunk]
        records.extend(self.record(n) for n in reversed(private))
        return records

    def ancestor(self, node: int, step: int) -> int:
        """The ancestor of ``node`` at ``step`` (``node`` itself if it is at ``step``)."""
        current: int | None = node
        while current is not None and self._nodes[current].step > step:
            data = self._nodes[current]
            if data.committed:
                break
            current = data.parent
        if current is not None and self._nodes[current].step == step:
            return current
        for trunk_node in self._trunk:
            if self._nodes[trunk_node].step == step:
                return trunk_node
        raise KeyError(f"no retained ancestor of node {node} at step {step}")

    # ------------------------------------------------------------------ payloads
    def attach(self, node: int, payload: T) -> None:
        """Store the predictor's data for a node created by the latest update."""
        if node not in self._nodes:
            raise KeyError(f"node {node} is not in the tree")
        self._payloads[node] = payload

    def payload(self, node: int) -> T:
        """The data of a node; released nodes stay readable until the next update."""
        if node in self._payloads:
            return self._payloads[node]
        if node in self._released_payloads:
            return self._released_payloads[node]
        raise KeyError(f"node {node} has no payload (never attached, or released before the last update)")

    # ------------------------------------------------------------------ updates
    def start(
        self,
        step: int,
        iou: float,
        obj_logit: float,
        candidate: int = -1,
        motion: float | None = None,
        visible: bool = True,
    ) -> StepReport:
        """Create the root: the single unbranched output of the first step after the conditioning frame.
        All pathways start on it with score 0; it is committed immediately."""
        if self.started or self._closed:
            raise RuntimeError("the tree has already been started")
        self._begin_update()
        root = self._new_node(step, None, candidate, iou, obj_logit, 0.0, motion, visible)
        self._nodes[root].refs = self.num_pathways
        self._pathways = [root] * self.num_pathways
        self._scores = [0.0] * self.num_pathways
        self._latest = step
        released: list[int] = []
        committed = self._commit_to(root, released)
        return self._report(
            (Created(root, -1, candidate, None, float(iou), float(obj_logit)),), committed, released
        )

    def branch(
        self,
        step: int,
        iou: torch.Tensor,
        obj_logit: torch.Tensor,
        uncertainty: float,
        eps: float = 1e-5,
        score: torch.Tensor | None = None,
        motion: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> StepReport:
        """Select the next pathways from ``iou[P, K]`` / ``obj_logit[P]`` (and ``score[P, K]``, see
        :func:`select_candidates`) and :meth:`advance` to them; ``motion`` / ``visible`` ``[P, K]`` are
        recorded per node."""
        self._require_started()
        parent, cand, new_scores = select_candidates(
            self.scores, iou, obj_logit, self.num_pathways, uncertainty, eps, score
        )
        return self.advance(step, parent, cand, new_scores, iou, obj_logit, motion, visible)

    def advance(
        self,
        step: int,
        parent_idx: torch.Tensor | Sequence[int],
        cand_idx: torch.Tensor | Sequence[int],
        new_scores: torch.Tensor | Sequence[float],
        iou: torch.Tensor,
        obj_logit: torch.Tensor,
        motion: torch.Tensor | None = None,
        visible: torch.Tensor | None = None,
    ) -> StepReport:
        """Move every pathway to its chosen branch at ``step``.

        Args:
            parent_idx, cand_idx, new_scores: output of :func:`select_candidates` (``P`` entries).
            iou: ``[P, K]`` IoU predictions of this step (the chosen one is recorded per node).
            obj_logit: ``[P]`` object-score logits of this step (recorded per node, from its parent's run).
            motion: ``[P, K]`` motion IoUs of this step (NaN: none), recorded per node.
            visible: ``[P, K]`` whether each candidate's mask is non-empty (default: all), per node.

        Identical ``(parent node, candidate)`` choices share one node. Dead branches are released, the
        coalescence point is committed, and ``max_lag`` is enforced.
        """
        self._require_started()
        if step <= self._latest:  # type: ignore[operator]
            raise ValueError(f"step {step} is not after the latest step {self._latest}")
        parents = [int(p) for p in _as_list(parent_idx)]
        cands = [int(k) for k in _as_list(cand_idx)]
        scores = [float(s) for s in _as_list(new_scores)]
        if not len(parents) == len(cands) == len(scores) == self.num_pathways:
            raise ValueError(
                f"expected {self.num_pathways} selected branches, got {len(parents)}/{len(cands)}/{len(scores)}"
            )
        iou_rows = iou.detach().cpu().tolist()
        motion_rows = None if motion is None else motion.detach().cpu().tolist()
        visible_rows = None if visible is None else visible.detach().cpu().tolist()
        obj_rows = obj_logit.detach().reshape(-1).cpu().tolist()
        if len(iou_rows) != len(self._pathways) or len(obj_rows) != len(self._pathways):
            raise ValueError(f"iou and obj_logit must have one row per pathway ({len(self._pathways)})")
        for p, k in zip(parents, cands):
            if not 0 <= p < len(self._pathways) or not 0 <= k < len(iou_rows[p]):
                raise ValueError(f"invalid branch (parent {p}, candidate {k})")

        self._begin_update()
        created = []
        by_key: dict[tuple[int, int], int] = {}
        new_pathways = []
        for p, k, score in zip(parents, cands, scores):
            key = (self._pathways[p], k)
            node = by_key.get(key)
            if node is None:
                moved = None if motion_rows is None or motion_rows[p][k] != motion_rows[p][k] else motion_rows[p][k]
                shown = True if visible_rows is None else bool(visible_rows[p][k])
                node = self._new_node(step, key[0], k, iou_rows[p][k], obj_rows[p], score, moved, shown)
                by_key[key] = node
                created.append(Created(node, p, k, key[0], iou_rows[p][k], obj_rows[p]))
            new_pathways.append(node)

        released: list[int] = []
        self._repoint(new_pathways, scores, released)
        self._latest = step
        committed = self._commit_to(self._coalescence(), released)
        forced = None
        if self.max_lag is not None and step - self.committed_step > self.max_lag:  # type: ignore[operator]
            forced = step - self.max_lag
            self._force(forced, released)
            committed.extend(self._commit_to(self._coalescence(), released))
        return self._report(tuple(created), committed, released, forced)

    def collapse(self) -> StepReport:
        """A conditioning frame arrived: commit the best pathway's steps and put every pathway on its
        latest node (score 0). The committed history stays available to memory selection."""
        self._require_started()
        self._begin_update()
        released: list[int] = []
        best = self._pathways[self.best_pathway()]
        committed = self._commit_to(best, released)
        self._repoint([best] * self.num_pathways, [0.0] * self.num_pathways, released)
        return self._report((), committed, released)

    def restart(
        self,
        step: int,
        iou: float,
        obj_logit: float,
        candidate: int = -1,
        motion: float | None = None,
        visible: bool = True,
    ) -> StepReport:
        """New root after a conditioning frame on an already started tree (see :meth:`start`).

        Call :meth:`collapse` at the conditioning frame first. Older committed history is kept, so a
        memory policy that looks past conditioning frames (SAM 2's) still finds it.
        """
        self._require_started()
        if step <= self._latest:  # type: ignore[operator]
            raise ValueError(f"step {step} is not after the latest step {self._latest}")
        self._begin_update()
        released: list[int] = []
        root = self._new_node(step, None, candidate, iou, obj_logit, 0.0, motion, visible)
        self._repoint([root] * self.num_pathways, [0.0] * self.num_pathways, released)
        self._latest = step
        committed = self._commit_to(root, released)
        return self._report(
            (Created(root, -1, candidate, None, float(iou), float(obj_logit)),), committed, released
        )

    def finish(self) -> StepReport:
        """End of video: commit the best pathway's remaining steps and release every node."""
        self._require_started()
        self._begin_update()
        released: list[int] = []
        committed = self._commit_to(self._pathways[self.best_pathway()], released)
        released.extend(self._nodes)
        self._nodes.clear()
        self._trunk.clear()
        self._pathways = []
        self._scores = []
        self._closed = True
        return self._report((), committed, released)

    # ------------------------------------------------------------------ internals
    def _require_started(self) -> None:
        if self._closed:
            raise RuntimeError("the tree is finished")
        if not self.started:
            raise RuntimeError("call start() first")

    def _begin_update(self) -> None:
        """Payloads released by the previous update are no longer readable."""
        self._released_payloads.clear()

    def _report(
        self,
        created: tuple[Created, ...],
        committed: list[Commit],
        released: list[int],
        forced: int | None = None,
    ) -> StepReport:
        for node in released:
            if node in self._payloads:
                self._released_payloads[node] = self._payloads.pop(node)
        return StepReport(
            created=created, committed=tuple(committed), released=tuple(released), forced_step=forced
        )

    def _new_node(
        self,
        step: int,
        parent: int | None,
        candidate: int,
        iou: float,
        obj_logit: float,
        score: float,
        motion: float | None = None,
        visible: bool = True,
    ) -> int:
        node = self._next_id
        self._next_id += 1
        moved = None if motion is None else float(motion)
        self._nodes[node] = _Node(
            step, parent, candidate, float(iou), float(obj_logit), float(score), moved, bool(visible)
        )
        if parent is not None:
            self._nodes[parent].children += 1
        return node

    def _repoint(self, new_pathways: list[int], new_scores: list[float], released: list[int]) -> None:
        old = self._pathways
        for node in new_pathways:
            self._nodes[node].refs += 1
        for node in old:
            self._nodes[node].refs -= 1
        self._pathways = list(new_pathways)
        self._scores = list(new_scores)
        for node in old:
            self._release_dead(node, released)

    def _release_dead(self, node: int | None, released: list[int]) -> None:
        while node is not None and node in self._nodes:
            data = self._nodes[node]
            if data.committed or data.refs > 0 or data.children > 0:
                return
            del self._nodes[node]
            released.append(node)
            node = data.parent
            if node is not None and node in self._nodes:
                self._nodes[node].children -= 1

    def _coalescence(self) -> int:
        frontier = set(self._pathways)
        while len(frontier) > 1:
            frontier = {self._nodes[n].parent for n in frontier}  # type: ignore[misc]
        return frontier.pop()

    def _force(self, step: int, released: list[int]) -> None:
        best = self.best_pathway()
        anchor = self.ancestor(self._pathways[best], step)
        new_pathways = list(self._pathways)
        new_scores = list(self._scores)
        for p, node in enumerate(self._pathways):
            if self.ancestor(node, step) != anchor:
                new_pathways[p] = self._pathways[best]
                new_scores[p] = self._scores[best]
        self._repoint(new_pathways, new_scores, released)

    def _commit_to(self, node: int, released: list[int]) -> list[Commit]:
        chain = []
        while not self._nodes[node].committed:
            chain.append(node)
            parent = self._nodes[node].parent
            if parent is None:
                break
            node = parent
        chain.reverse()
        committed = []
        for n in chain:
            data = self._nodes[n]
            data.committed = True
            data.parent = None
            self._trunk.append(n)
            committed.append(Commit(data.step, n))
        if chain:
            self._compact(released)
        return committed

    def _compact(self, released: list[int]) -> None:
        if self.history_rules is None:
            return
        *older, latest = self._trunk
        keep: list[int] = []
        taken = [0] * len(self.history_rules)
        for node in reversed(older):
            record = self.record(node)
            kept = False
            for i, (size, predicate) in enumerate(self.history_rules):
                if taken[i] < size and (predicate is None or predicate(record)):
                    taken[i] += 1
                    kept = True
            if kept:
                keep.append(node)
            else:
                del self._nodes[node]
                released.append(node)
        keep.reverse()
        self._trunk = keep + [latest]


def build_tree(
    config: SAM2LongConfig, *, num_maskmem: int, max_obj_ptrs_in_encoder: int, num_frames: int
) -> PathwayTree:
    """A :class:`PathwayTree` for one object with the config's pathways / ``max_lag`` and the smallest
    committed-history retention that keeps memory selection exact."""
    size, keep, recent = history_retention(
        num_maskmem=num_maskmem,
        max_obj_ptrs_in_encoder=max_obj_ptrs_in_encoder,
        num_frames=num_frames,
        iou_threshold=config.iou_threshold,
        selection=config.memory_selection,
        rule=config.memory_rule,
        motion_threshold=config.memory_motion_threshold,
    )
    return PathwayTree(
        config.num_pathways, max_lag=config.max_lag, history_size=size, history_filter=keep, history_recent=recent
    )


def _as_list(values: torch.Tensor | Sequence) -> list:
    if isinstance(values, torch.Tensor):
        return values.detach().reshape(-1).cpu().tolist()
    return list(values)
