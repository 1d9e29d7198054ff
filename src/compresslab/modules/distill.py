"""Knowledge distillation (Hinton et al. 2015): a student learns from a frozen teacher's soft targets.

Convention (docs/conventions.md): `soft_weight` = alpha weights the soft term,

    loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE(y, z_s)

so alpha = 1 is pure distillation and alpha = 0 plain cross-entropy. torchdistill's KDLoss uses the
opposite convention (its alpha weights the hard term). The T^2 factor keeps the soft term's gradients
on the scale of the hard term's when T changes (Hinton et al., section 2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from compresslab.modules.classifier import Classifier


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch."""
    student_log_p = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_log_p = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(student_log_p, teacher_log_p, log_target=True, reduction="batchmean")
    return kl * temperature ** 2


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      targets: torch.Tensor, temperature: float, soft_weight: float) -> torch.Tensor:
    """soft_weight * soft_target_loss + (1 - soft_weight) * cross-entropy with the labels.

    A term whose weight is 0 is not computed, so alpha = 0 is exactly cross-entropy and alpha = 1
    exactly the soft term (no 0 * inf when a logit overflows in the unused term)."""
    loss = student_logits.new_zeros(())
    if soft_weight > 0:
        loss = loss + soft_weight * soft_target_loss(student_logits, teacher_logits, temperature)
    if soft_weight < 1:
        loss = loss + (1 - soft_weight) * F.cross_entropy(student_logits, targets)
    return loss


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Logits of `model` in eval mode for every row of `x`, on x's device; the model's mode is kept."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.cat([model(x[i:i + batch_size].to(device)).to(x.device)
                     for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


class Distiller(Classifier):
    """A Classifier whose training loss is `distillation_loss` against a frozen teacher.

    The teacher is a registered submodule (so it moves with the student between devices) but is
    frozen: no parameter requires grad, it is not in the optimiser (which sees `self.model` only),
    and `train()` keeps it in eval mode, so its dropout never fires. Training batches may carry a
    third tensor, the teacher's logits precomputed for those inputs (valid only without
    augmentation); otherwise the teacher runs on each batch.
    """

    def __init__(self, model: nn.Module, teacher: nn.Module, num_classes: int, optimizer: dict,
                 scheduler: dict | None = None, epochs: int = 1, temperature: float = 4.0,
                 soft_weight: float = 0.9):
        super().__init__(model, num_classes, optimizer, scheduler, epochs)
        self.teacher = teacher.eval()
        self.teacher.requires_grad_(False)
        self.temperature, self.soft_weight = float(temperature), float(soft_weight)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def training_loss(self, batch):
        if len(batch) == 3:
            x, y, teacher_logits = batch
        else:
            x, y = batch
            with torch.no_grad():
                teacher_logits = self.teacher(x)
        return distillation_loss(self(x), teacher_logits, y, self.temperature, self.soft_weight)
