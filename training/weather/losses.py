"""Losses of two-stage knowledge learning (Chen et al., CVPR 2022), as in the authors' code.

* Collaborative knowledge transfer (CKT, stage 1): for each distilled feature level, one
  projector per teacher maps its features into a common space, an inverse projector maps them
  back (``reconstruction`` keeps the common space informative, so it cannot collapse to zero),
  and a student projector maps the student's features into the same space (``projected``). The
  student's output also matches the teachers' outputs (``output``). The authors' projectors are
  two 3x3 convs with a ReLU between, no bias, the common space half as wide as the features.
* Soft contrastive regularization (SCR, stage 1): in a frozen feature network's space,
  ``L1(f(restored), f(clean)) / L1(f(restored), f(degraded))`` summed over five depths with
  weights 1/32 .. 1: pull towards the clean image, push from the restored image's own input.
* Hard contrastive regularization (HCR, stage 2): the same ratio, but the negatives are the
  degraded inputs of every image in the batch (every weather type), not just its own.

Feature network: the paper uses ImageNet VGG19 (relu1_1 .. relu5_1). It cannot be downloaded here,
so ``VGGFeatures`` takes the VGG16 trunk of the HED weights (``models.hed``; trained from ImageNet
VGG16 on BSDS500 edges) at relu1_1 .. relu5_1, frozen. The model card says so.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.hed import HED, HEDForInference

__all__ = [
    "CR_WEIGHTS", "VGGFeatures", "contrastive_ratio", "SCRLoss", "HCRLoss",
    "TeacherProjectors", "StudentProjector", "CKTLoss",
]

#: Weights of the five feature depths (shallow to deep), the authors' values.
CR_WEIGHTS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)
EPS = 1e-7


class VGGFeatures(nn.Module):
    """relu{k}_1 of a frozen VGG trunk (HED's), from RGB in ``[0, 1]``.

    The trunk is cut after the first conv of stage 5: deeper layers feed no loss term.
    """

    def __init__(self, hed: HED) -> None:
        super().__init__()
        slices = []
        for index, stage in enumerate(hed.stages):
            layers = list(stage.children())
            if index == 0:
                slices.append(nn.Sequential(*layers[:2]))  # conv1_1, relu1_1
            else:
                # rest of the previous stage, then pool, conv_k_1, relu_k_1 of this one
                previous = list(hed.stages[index - 1].children())
                start = 2 if index == 1 else 3
                slices.append(nn.Sequential(*previous[start:], *layers[:3]))
        self.slices = nn.ModuleList(slices)
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # frozen: never in training mode

    def forward(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        x = HEDForInference.preprocess(rgb)
        features = []
        for block in self.slices:
            x = block(x)
            features.append(x)
        return features


def contrastive_ratio(
    anchor: Sequence[torch.Tensor],
    positive: Sequence[torch.Tensor],
    negative: Sequence[torch.Tensor],
    weights: Sequence[float] = CR_WEIGHTS,
    hard: bool = False,
) -> torch.Tensor:
    """``sum_k w_k L1(a_k, p_k) / L1(a_k, n_k)``; ``hard``: every anchor against every negative.

    Positives and negatives carry no gradient (the authors detach them): only the restored image
    is pushed.
    """
    total = anchor[0].new_zeros(())
    for weight, a, p, n in zip(weights, anchor, positive, negative):
        d_ap = F.l1_loss(a, p.detach())
        if hard:
            # (B, 1, ...) - (1, B, ...): anchor i against the degraded input of every image j
            d_an = (a.unsqueeze(1) - n.detach().unsqueeze(0)).abs().mean()
        else:
            d_an = F.l1_loss(a, n.detach())
        total = total + weight * d_ap / (d_an + EPS)
    return total


class _ContrastiveLoss(nn.Module):
    hard = False

    def __init__(self, features: VGGFeatures, weights: Sequence[float] = CR_WEIGHTS) -> None:
        super().__init__()
        self.features = features
        self.weights = tuple(weights)

    def forward(
        self, restored: torch.Tensor, clean: torch.Tensor, degraded: torch.Tensor
    ) -> torch.Tensor:
        with torch.no_grad():
            positive = self.features(clean)
            negative = self.features(degraded)
        anchor = self.features(restored)
        return contrastive_ratio(anchor, positive, negative, self.weights, hard=self.hard)


class SCRLoss(_ContrastiveLoss):
    """Soft contrastive regularization: each restored image against its own degraded input."""


class HCRLoss(_ContrastiveLoss):
    """Hard contrastive regularization: against the degraded inputs of the whole batch."""

    hard = True


# ------------------------------------------------------------------------------------------- CKT
def _projector(cin: int, cout: int) -> nn.Sequential:
    block = nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
    )
    for module in block:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return block


class TeacherProjectors(nn.Module):
    """Per teacher: projector into the common space and inverse projector back."""

    def __init__(self, channels: int, hidden: int, teachers: int) -> None:
        super().__init__()
        self.project = nn.ModuleList(_projector(channels, hidden) for _ in range(teachers))
        self.inverse = nn.ModuleList(_projector(hidden, channels) for _ in range(teachers))

    def forward(
        self, features: Sequence[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        projected = [p(f) for p, f in zip(self.project, features)]
        return projected, [q(p) for q, p in zip(self.inverse, projected)]


class StudentProjector(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.project = _projector(channels, hidden)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.project(feature)


class CKTLoss(nn.Module):
    """Collaborative knowledge transfer over the distilled feature levels.

    The batch is the concatenation of one block per teacher (block ``t`` holds the images of
    teacher ``t``'s weather); teacher ``t`` has seen only its own block. Returns the three terms
    separately so the trainer logs them.
    """

    def __init__(self, channels: Sequence[int], teachers: int) -> None:
        super().__init__()
        self.teachers = teachers
        self.teacher_projectors = nn.ModuleList(
            TeacherProjectors(c, c // 2, teachers) for c in channels
        )
        self.student_projectors = nn.ModuleList(StudentProjector(c, c // 2) for c in channels)

    def forward(
        self,
        student_output: torch.Tensor,
        student_features: Sequence[torch.Tensor],
        teacher_outputs: Sequence[torch.Tensor],
        teacher_features: Sequence[Sequence[torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """``teacher_features[t][level]``: teacher ``t``'s features of its own block."""
        output = F.l1_loss(student_output, torch.cat(list(teacher_outputs)))
        projected = student_output.new_zeros(())
        reconstruction = student_output.new_zeros(())
        for level, (t_proj, s_proj) in enumerate(
            zip(self.teacher_projectors, self.student_projectors)
        ):
            features = [teacher_features[t][level].detach() for t in range(self.teachers)]
            common, rebuilt = t_proj(features)
            projected = projected + F.l1_loss(s_proj(student_features[level]), torch.cat(common))
            reconstruction = reconstruction + sum(
                F.l1_loss(r, f) for r, f in zip(rebuilt, features)
            )
        return {"output": output, "projected": projected, "reconstruction": reconstruction}
