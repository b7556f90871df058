"""DSRB representation blending (METHODS.md §6): IPRB and PPRB on category features, and the
optional category-wise contrastive term between images.

Both blends take the decoupler's category features ``f [B, C, D]`` with ``targets [B, C]``
(float in [0, 1]) and ``known [B, C]`` (bool) and return a blended copy of all three; the
caller runs its head and loss on that copy as an extra training branch. Nothing here changes
the plain branch, and the module has no ``forward``: evaluation never reaches it.

Decisions (each with its reason):

- α and β are *projected* into [0, 1] when used: the stored value is clamped in place before
  the blend (as the reference does), so a step that overshoots is pulled back instead of
  leaving the parameter outside the range where a clamp in the graph would give it a zero
  gradient for good.
- The soft target ``1 − α`` (``1 − β``) is detached by default (``target_grad=False``). Every
  loss we use is linear in the target (BCE: ∂L/∂y = −s), so a target path would reward α for
  moving the label towards whatever the model predicts, with no optimum inside [0, 1]; α
  would be driven to 0 or 1 by the logits' sign rather than learned from the blended
  features. The reference code does let the target carry gradient (it writes the parameter
  into the target tensor); ``target_grad=True`` reproduces that.
- IPRB pairs image i with B−1−i of the (already shuffled) batch, as the reference does; in an
  odd batch the middle image is its own partner, which blends nothing (an entry cannot be
  unknown and known at once).
- "Known positive" means ``known and target >= 0.5`` everywhere in this module.
"""
import logging
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from clipml.errors import ConfigError

logger = logging.getLogger(__name__)

NUM_QUADRANTS = 4
EMPTY_CELL_RULES = ("skip", "class_mean")
Blend = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def quadrant(attention: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Quadrant of each attention map's peak: 0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right.

    ``attention [..., N]`` over an ``(h, w)`` grid, ``N = h*w`` row-major. Row r is in the
    bottom half when ``r >= h // 2`` and column c in the right half when ``c >= w // 2``, so an
    odd grid gives its middle row to the bottom and its middle column to the right (7×7: rows
    0-2 top, 3-6 bottom), as in the reference. Ties go to the first (row-major) maximum.
    """
    h, w = grid
    if attention.shape[-1] != h * w:
        raise ValueError(f"attention has {attention.shape[-1]} locations; grid {h}x{w} needs {h * w}")
    peak = attention.argmax(dim=-1)
    row = torch.div(peak, w, rounding_mode="floor")
    col = peak - row * w
    return 2 * (row >= h // 2).long() + (col >= w // 2).long()


PEAK_RULES = ("attention", "feature")


def peak_scores(attention: torch.Tensor, tokens: torch.Tensor, rule: str) -> torch.Tensor:
    """The per-location scores whose maximum places a class in a quadrant (PPRB, both passes).

    ``"attention"``: the attention ``a_cj`` itself. ``"feature"``: ``a_cj · Σ_d z_jd``, location
    j's share of ``Σ_d f_c``, which is what the reference code takes the peak of
    (Σ over channels of coefficient × feature map); it can peak where the attention is low when
    ``Σ_d z_j`` is negative. ``attention [B, C, N]``, ``tokens [B, N, D]`` -> ``[B, C, N]``.
    """
    if rule == "attention":
        return attention
    if rule == "feature":
        return attention * tokens.sum(dim=-1).unsqueeze(1).to(attention.dtype)
    raise ConfigError(f"model.blending.peak must be one of {PEAK_RULES}; got {rule!r}")


def _known_positive(targets: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    return known & (targets >= 0.5)


def _uniform(shape: Tuple[int, ...], device: torch.device, generator: Optional[torch.Generator]) -> torch.Tensor:
    """U[0, 1) numbers drawn on the generator's own device, so a CPU generator works for CUDA inputs."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _check_inputs(f: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, num_classes: int, feat_dim: int) -> None:
    """A wrong call must fail here rather than blend the wrong entries."""
    if f.dim() != 3 or tuple(f.shape[1:]) != (num_classes, feat_dim):
        raise ValueError(f"f must be [B, {num_classes}, {feat_dim}]; got {tuple(f.shape)}")
    if targets.shape != f.shape[:2] or known.shape != f.shape[:2]:
        raise ValueError(
            f"targets and known must be {tuple(f.shape[:2])}; got {tuple(targets.shape)}, {tuple(known.shape)}"
        )
    if known.dtype != torch.bool:
        raise ValueError(f"known must be a bool tensor; got {known.dtype}")


def _check_attention(attention: torch.Tensor, f: torch.Tensor) -> None:
    if attention.dim() != 3 or attention.shape[:2] != f.shape[:2]:
        raise ValueError(f"attention must be [{f.shape[0]}, {f.shape[1]}, N]; got {tuple(attention.shape)}")


def _check_counts(num_classes: int, feat_dim: int, num_prototypes: int, max_samples: int) -> None:
    if num_classes < 1 or feat_dim < 1:
        raise ConfigError(f"num_classes and feat_dim must be >= 1; got {num_classes}, {feat_dim}")
    if num_prototypes != NUM_QUADRANTS:
        raise ConfigError(
            f"num_prototypes must be {NUM_QUADRANTS} (one prototype per image quadrant); got {num_prototypes}"
        )
    if max_samples < 1:
        raise ConfigError(f"max_samples must be >= 1; got {max_samples}")


def _pair_mean(values: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the ``pairs`` mask; exactly 0 (with zero gradient) when it is empty."""
    return (values * pairs).sum() / pairs.sum().clamp(min=1)


CONTRASTIVE_FORMS = ("hinge", "mined")


def category_contrastive(f: torch.Tensor, targets: torch.Tensor, known: torch.Tensor, form: str = "hinge",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Category-wise contrastive term between the images of a batch (METHODS §6, optional).

    For every class c and two different images i, j, with ``s = cos(f[i, c], f[j, c])``, and
    unknown entries forming no pair:

    ``form="hinge"`` (default): pull ``1 − s`` when c is a known positive in both images, push
    ``max(0, s)`` when it is a known positive in one and a known negative in the other; returns
    ``mean(pull) + mean(push)``, each over its own pairs (all classes pooled, each unordered pair
    once), a kind without any pair adding exactly 0. The push is a hinge at orthogonality: a
    positive and a negative feature need only stop pointing the same way, and pushing them
    towards opposite directions cannot be met by three or more features at once.

    ``form="mined"``: the reference code's ContrastiveLoss, see :func:`_mined_contrastive`.
    """
    if f.dim() != 3:
        raise ValueError(f"f must be [B, C, D]; got {tuple(f.shape)}")
    _check_inputs(f, targets, known, f.shape[1], f.shape[2])
    if form == "mined":
        return _mined_contrastive(f, targets, known, generator)
    if form != "hinge":
        raise ConfigError(f"model.blending.contrastive_form must be one of {CONTRASTIVE_FORMS}; got {form!r}")
    unit = F.normalize(f, dim=-1).transpose(0, 1)  # [C, B, D]
    cos = unit @ unit.transpose(1, 2)  # [C, B, B]: cos[c, i, j]
    positive = _known_positive(targets, known).T  # [C, B]
    negative = (known & ~_known_positive(targets, known)).T
    other = ~torch.eye(f.shape[0], dtype=torch.bool, device=f.device)
    both = positive.unsqueeze(2) & positive.unsqueeze(1) & other  # ordered: the mean is that of unordered pairs
    mixed = positive.unsqueeze(2) & negative.unsqueeze(1)  # (positive i, negative j): each pair once
    return _pair_mean(1 - cos, both) + _pair_mean(cos.clamp(min=0), mixed)


def _mine(values: torch.Tensor, count: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """A random ``2·count`` of ``values`` plus its ``count`` largest (these may appear twice)."""
    if values.numel() == 0:
        return values
    if generator is None:
        order = torch.randperm(values.numel())
    else:
        order = torch.randperm(values.numel(), generator=generator, device=generator.device)
    drawn = values[order[: 2 * count].to(values.device)]
    return torch.cat([drawn, values.sort(descending=True).values[:count]])


def _mined_contrastive(f: torch.Tensor, targets: torch.Tensor, known: torch.Tensor,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
    """The reference's ContrastiveLoss: one mean over ``1 − s`` of the P positive–positive pairs,
    ``1 + s`` of positive–negative pairs and ``1 + s`` of negative–negative pairs, where (when
    P > 0) each of the two push kinds is cut to a random 2P of its pairs plus its P hardest.

    Pairs are the unordered image pairs (i < j, row-major) times the classes, in the reference's
    order, and the random draws come in its order too (negative–negative first, each a
    ``randperm`` of that kind's pairs), so a generator seeded like the reference's global one
    gives the same value. A batch without any pair gives 0 (the reference: NaN).
    """
    i, j = torch.triu_indices(f.shape[0], f.shape[0], 1, device=f.device)
    cos = F.cosine_similarity(f[i], f[j], dim=-1, eps=1e-9)  # [pairs, C]
    positive = _known_positive(targets, known)
    negative = known & ~positive
    pull = (1 - cos)[positive[i] & positive[j]]
    push_mixed = (1 + cos)[(positive[i] & negative[j]) | (negative[i] & positive[j])]
    push_negative = (1 + cos)[negative[i] & negative[j]]
    if pull.numel():
        push_negative = _mine(push_negative, pull.numel(), generator)
        push_mixed = _mine(push_mixed, pull.numel(), generator)
    terms = torch.cat([pull, push_mixed, push_negative])
    return terms.mean() if terms.numel() else cos.sum() * 0


class RepresentationBlending(nn.Module):
    """Learnable α (IPRB) and β (PPRB) plus the per-(class, quadrant) prototypes of PPRB.

    ``prototypes [C, 4, D]`` and ``prototype_valid [C, 4]`` are persistent buffers, so they
    travel in the state dict; a :class:`PrototypeBank` pass writes them. Only the enabled
    branches own their state (no unused parameter to upset distributed training).
    ``max_samples`` is kept only so the caller can build the matching bank from one object.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        instance: bool = True,
        prototype: bool = True,
        num_prototypes: int = NUM_QUADRANTS,
        max_samples: int = 100,
        topk: int = 1,
        alpha_init: float = 0.5,
        beta_init: float = 0.5,
        target_grad: bool = False,
    ) -> None:
        super().__init__()
        _check_counts(num_classes, feat_dim, num_prototypes, max_samples)
        if not (instance or prototype):
            raise ConfigError("blending needs model.blending.instance or model.blending.prototype; both are false")
        if topk < 1:
            raise ConfigError(f"model.blending.topk must be >= 1; got {topk}")
        for key, value in (("alpha_init", alpha_init), ("beta_init", beta_init)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"model.blending.{key} must lie in [0, 1]; got {value}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.instance = instance
        self.prototype = prototype
        self.max_samples = max_samples
        self.topk = topk
        self.target_grad = target_grad
        if instance:
            self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))
        if prototype:
            self.beta = nn.Parameter(torch.tensor(float(beta_init)))
            self.register_buffer("prototypes", torch.zeros(num_classes, NUM_QUADRANTS, feat_dim))
            self.register_buffer("prototype_valid", torch.zeros(num_classes, NUM_QUADRANTS, dtype=torch.bool))

    quadrant = staticmethod(quadrant)

    def _coefficient(self, param: nn.Parameter) -> Tuple[torch.Tensor, torch.Tensor]:
        """Project the parameter into [0, 1]; return (feature coefficient, soft-target value)."""
        param.data.clamp_(0.0, 1.0)  # through .data: a no-op re-clamp must not break a graph that used it
        target_coef = param if self.target_grad else param.detach()
        return param, 1.0 - target_coef

    def _require(self, branch: str) -> None:
        if not getattr(self, branch):
            raise RuntimeError(f"{branch} blending is disabled in this RepresentationBlending")

    def instance_blend(self, f: torch.Tensor, targets: torch.Tensor, known: torch.Tensor) -> Blend:
        """IPRB: unknown entries of image i borrow the known-positive feature of image B−1−i.

        Blended entries get ``α f_i + (1−α) f_{i'}``, target ``1−α`` and become known; every
        other entry keeps its feature, target and known flag. No randomness is involved. Each class
        is blended on its own, so `f` may hold any subset of the classes (a class-subset training step).
        """
        self._require("instance")
        _check_inputs(f, targets, known, f.shape[1] if f.dim() == 3 else self.num_classes, self.feat_dim)
        alpha, soft = self._coefficient(self.alpha)
        mask = ~known & _known_positive(targets, known).flip(0)
        rows, cols = mask.nonzero(as_tuple=True)  # blend only these rows: few, and cheap to index
        a = alpha.to(f.dtype)
        blended = a * f[rows, cols] + (1 - a) * f[f.shape[0] - 1 - rows, cols]
        f_blend = f.index_put((rows, cols), blended)
        targets_blend = torch.where(mask, soft.to(targets.dtype), targets)
        return f_blend, targets_blend, known | mask

    def prototype_blend(
        self,
        f: torch.Tensor,
        targets: torch.Tensor,
        known: torch.Tensor,
        attention: torch.Tensor,
        grid: Tuple[int, int],
        generator: Optional[torch.Generator] = None,
        classes: Optional[torch.Tensor] = None,
    ) -> Blend:
        """PPRB: up to ``topk`` unknown classes per image blend with a prototype from another quadrant.

        Eligible entries are unknown and their class has a valid prototype in a quadrant other
        than the image's own peak quadrant for that class; ``topk`` of them are drawn uniformly
        per image, each with a uniformly drawn eligible quadrant. Images without an eligible
        entry, known entries and classes without prototypes are left exactly as they are.
        `classes`: the class ids of the columns of `f` (a class-subset step; None: all classes in
        order), so each column reads its own class's prototypes, not those of its position.
        """
        self._require("prototype")
        ids = torch.arange(self.num_classes, device=f.device) if classes is None else classes.to(f.device)
        _check_inputs(f, targets, known, len(ids), self.feat_dim)
        _check_attention(attention, f)
        beta, soft = self._coefficient(self.beta)
        batch, num_classes = known.shape
        own = quadrant(attention, grid)
        quads = torch.arange(NUM_QUADRANTS, device=f.device)
        other = self.prototype_valid[ids].unsqueeze(0) & (own.unsqueeze(-1) != quads)  # [B, C, 4]
        eligible = ~known & other.any(dim=-1)
        class_scores = torch.where(eligible, _uniform((batch, num_classes), f.device, generator), -1.0)
        top_scores, top_classes = class_scores.topk(min(self.topk, num_classes), dim=1)
        chosen = top_scores >= 0
        rows = torch.arange(batch, device=f.device).unsqueeze(1).expand_as(top_classes)[chosen]
        cols = top_classes[chosen]
        quad_scores = torch.where(other[rows, cols], _uniform((rows.numel(), NUM_QUADRANTS), f.device, generator), -1.0)
        proto = self.prototypes[ids[cols], quad_scores.argmax(dim=-1)].to(f.dtype)
        b = beta.to(f.dtype)
        f_blend = f.index_put((rows, cols), b * f[rows, cols] + (1 - b) * proto)
        targets_blend = targets.index_put((rows, cols), soft.to(targets.dtype).expand(rows.numel()))
        known_blend = known.index_put((rows, cols), torch.ones_like(rows, dtype=torch.bool))
        return f_blend, targets_blend, known_blend


class PrototypeBank:
    """Collects known-positive features per (class, quadrant) over one pass, then writes prototypes.

    Sampling is a seeded reservoir: every known positive gets a U[0, 1) key from the bank's own
    generator (seeded with ``seed``; keys drawn per ``update`` call in row-major (image, class)
    order), and each cell keeps the ``max_samples`` entries with the smallest keys. That is a
    uniform sample of the whole pass whatever the loader order (first-come would keep only
    the first images of an unshuffled loader) and is reproducible. Storage is
    ``C·4·max_samples·D`` floats on the device of the first features seen. Use one bank per pass.

    Two rules reproduce the reference code when asked (``model.blending``): ``zero_row=True``
    averages a cell over a zero row plus its n samples (``sum / (n + 1)``, the reference's
    placeholder row; a bug that shrinks sparse cells towards 0), and ``empty_cells="class_mean"``
    gives a cell without a sample the mean of all the class's kept samples and makes it valid,
    so PPRB draws it like any other (``"skip"``: the cell stays invalid and is never drawn).
    A class without any sample has no prototype under either rule.
    """

    def __init__(
        self,
        num_classes: int,
        feat_dim: int,
        num_prototypes: int = NUM_QUADRANTS,
        max_samples: int = 100,
        seed: int = 0,
        class_names: Optional[Sequence[str]] = None,
        zero_row: bool = False,
        empty_cells: str = "skip",
    ) -> None:
        _check_counts(num_classes, feat_dim, num_prototypes, max_samples)
        if empty_cells not in EMPTY_CELL_RULES:
            raise ConfigError(f"model.blending.empty_cells must be one of {EMPTY_CELL_RULES}; got {empty_cells!r}")
        self.zero_row = zero_row
        self.empty_cells = empty_cells
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"class_names must have {num_classes} entries; got {len(class_names)}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.max_samples = max_samples
        self.class_names = list(class_names) if class_names is not None else None
        self._generator = torch.Generator().manual_seed(seed)
        cells = num_classes * NUM_QUADRANTS
        self._seen = torch.zeros(cells, dtype=torch.long)
        self._keys = torch.full((cells, max_samples), float("inf"))
        self._features: Optional[torch.Tensor] = None  # [cells, max_samples, D], allocated lazily

    @torch.no_grad()
    def update(
        self,
        f: torch.Tensor,
        attention: torch.Tensor,
        grid: Tuple[int, int],
        targets: torch.Tensor,
        known: torch.Tensor,
    ) -> None:
        """Offer this batch's known positives to their (class, peak quadrant) cells."""
        _check_inputs(f, targets, known, self.num_classes, self.feat_dim)
        _check_attention(attention, f)
        if self._features is None:
            self._features = torch.zeros(self._keys.shape + (self.feat_dim,), device=f.device)
            self._keys = self._keys.to(f.device)
            self._seen = self._seen.to(f.device)
        device = self._features.device
        img, cls = _known_positive(targets, known).nonzero(as_tuple=True)
        if img.numel() == 0:
            return
        keys = torch.rand(img.numel(), generator=self._generator).to(device)
        cells = (cls * NUM_QUADRANTS + quadrant(attention, grid)[img, cls]).to(device)
        self._seen += torch.bincount(cells, minlength=self._seen.numel())
        self._admit(cells, keys, f.detach()[img, cls].to(device=device, dtype=torch.float32))

    def _admit(self, cells: torch.Tensor, keys: torch.Tensor, feats: torch.Tensor) -> None:
        """Per touched cell, keep the smallest keys among stored and new; new winners take freed slots."""
        m = self.max_samples
        uniq, inv = torch.unique(cells, return_inverse=True)
        n = cells.numel()
        candidates = torch.full((uniq.numel(), n), float("inf"), device=keys.device)
        candidates[inv, torch.arange(n, device=keys.device)] = keys
        pool = torch.cat([self._keys[uniq], candidates], dim=1)  # [U, m + n]
        best_keys, best = pool.topk(m, dim=1, largest=False)
        real = torch.isfinite(best_keys)
        stays = torch.zeros_like(pool, dtype=torch.bool).scatter_(1, best, real)[:, :m]
        incoming = real & (best >= m)  # [U, m]: new entries that made it
        freed = ~stays  # at least as many freed slots as incoming entries in every row
        slot_of = torch.empty_like(best)
        free_rows, free_cols = freed.nonzero(as_tuple=True)
        slot_of[free_rows, (freed.cumsum(1) - 1)[freed]] = free_cols
        in_rows = incoming.nonzero(as_tuple=True)[0]
        slots = slot_of[in_rows, (incoming.cumsum(1) - 1)[incoming]]
        new_index = best[incoming] - m
        self._keys[uniq[in_rows], slots] = keys[new_index]
        self._features[uniq[in_rows], slots] = feats[new_index]

    def finalize(self, blending: RepresentationBlending) -> Dict[str, object]:
        """Write means into ``blending.prototypes`` and their validity into ``prototype_valid``.

        Returns ``seen`` and ``kept`` (LongTensor [C, 4]: known positives offered / averaged),
        ``valid_cells``, ``class_mean_cells`` (cells given their class's mean) and
        ``classes_without_positive`` (indices); the latter are logged.
        """
        if (blending.num_classes, blending.feat_dim) != (self.num_classes, self.feat_dim):
            raise ValueError(
                f"bank is for {self.num_classes} classes x {self.feat_dim} dims; blending module has "
                f"{blending.num_classes} x {blending.feat_dim}"
            )
        blending._require("prototype")
        shape = (self.num_classes, NUM_QUADRANTS)
        kept = torch.isfinite(self._keys).sum(dim=1).view(shape)
        if self._features is None:
            sums = torch.zeros(shape + (self.feat_dim,))
        else:
            sums = self._features.sum(dim=1).view(shape + (self.feat_dim,))
        kept = kept.to(sums.device)
        divisor = kept + 1 if self.zero_row else kept.clamp(min=1)
        means = sums / divisor.unsqueeze(-1)
        valid = kept > 0
        filled = torch.zeros_like(valid)
        if self.empty_cells == "class_mean":
            per_class = kept.sum(dim=1)
            class_mean = sums.sum(dim=1) / per_class.clamp(min=1).unsqueeze(-1)  # the samples' own mean, no zero row
            filled = ~valid & (per_class > 0).unsqueeze(1)
            means = torch.where(filled.unsqueeze(-1), class_mean.unsqueeze(1), means)
            valid = valid | filled
        blending.prototypes.copy_(means)
        blending.prototype_valid.copy_(valid)
        seen = self._seen.view(shape).cpu()
        missing = (seen.sum(dim=1) == 0).nonzero().flatten().tolist()
        if missing:
            names = [self.class_names[c] for c in missing] if self.class_names else missing
            logger.warning(
                "%d of %d classes have no known positive in this pass, so no prototype and no "
                "prototype blending: %s", len(missing), self.num_classes, names,
            )
        return {
            "seen": seen,
            "kept": kept.cpu(),
            "valid_cells": int(valid.sum()),
            "class_mean_cells": int(filled.sum()),
            "classes_without_positive": missing,
        }
