"""Distillation maths and module, in-process on hand-made tensors (no training runs here)."""

from __future__ import annotations

import math

import pytest
import torch

from compresslab.data import TensorBatches
from compresslab.metrics import prediction_agreement
from compresslab.models import build_model
from compresslab.modules.distill import Distiller, distillation_loss, predict_logits, soft_target_loss

STUDENT = torch.tensor([[2.0, 0.0, -1.0], [0.5, 1.5, 0.0], [-1.0, 0.0, 3.0]])
TEACHER = torch.tensor([[1.0, 1.0, 0.0], [0.0, 4.0, -2.0], [0.0, -1.0, 1.0]])
TARGETS = torch.tensor([0, 1, 1])


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    return [v / sum(e) for v in e]


def closed_form_soft(student, teacher, t):
    """T^2 * mean over rows of sum_k p_t,k * log(p_t,k / p_s,k), written out by hand."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_s, p_t = softmax(s_row, t), softmax(t_row, t)
        total += sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return t * t * total / len(student)


def closed_form_ce(student, targets):
    rows = student.tolist()
    return -sum(math.log(softmax(r, 1.0)[k]) for r, k in zip(rows, targets.tolist())) / len(rows)


@pytest.mark.parametrize("t", [1.0, 2.0, 20.0])
def test_soft_term_equals_closed_form_with_t_squared(t):
    assert soft_target_loss(STUDENT, TEACHER, t).item() == pytest.approx(closed_form_soft(STUDENT, TEACHER, t),
                                                                        rel=1e-5)


def test_t_squared_factor_is_applied():
    # Without T^2 the KL at T=20 is ~400x smaller than what the loss returns.
    kl_only = closed_form_soft(STUDENT, TEACHER, 20.0) / 400.0
    assert soft_target_loss(STUDENT, TEACHER, 20.0).item() == pytest.approx(400.0 * kl_only, rel=1e-5)
    assert soft_target_loss(STUDENT, TEACHER, 20.0).item() > 100 * kl_only


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_weights_soft_term_by_alpha(alpha):
    t = 4.0
    expected = alpha * closed_form_soft(STUDENT, TEACHER, t) + (1 - alpha) * closed_form_ce(STUDENT, TARGETS)
    got = distillation_loss(STUDENT, TEACHER, TARGETS, t, alpha).item()
    assert got == pytest.approx(expected, rel=1e-5)


def test_alpha_extremes_are_pure_terms():
    assert distillation_loss(STUDENT, TEACHER, TARGETS, 3.0, 0.0).item() == pytest.approx(
        closed_form_ce(STUDENT, TARGETS), rel=1e-6)
    # alpha = 1 ignores the labels entirely.
    other_targets = torch.tensor([2, 2, 0])
    assert distillation_loss(STUDENT, TEACHER, TARGETS, 3.0, 1.0).item() == pytest.approx(
        distillation_loss(STUDENT, TEACHER, other_targets, 3.0, 1.0).item())


def test_soft_term_vanishes_when_student_matches_teacher():
    assert soft_target_loss(TEACHER, TEACHER, 5.0).item() == pytest.approx(0.0, abs=1e-6)


def make_distiller(soft_weight=0.5):
    torch.manual_seed(0)
    student = build_model({"arch": "mlp", "hidden": [6]}, (1, 3, 3), 3)
    teacher = build_model({"arch": "mlp", "hidden": [8], "dropout": 0.5}, (1, 3, 3), 3)
    return Distiller(student, teacher, 3, {"name": "sgd", "lr": 0.1}, temperature=2.0,
                     soft_weight=soft_weight)



def test_no_gradient_reaches_the_frozen_teacher():
    module = make_distiller()
    module.train()
    assert not module.teacher.training and all(not m.training for m in module.teacher.modules())
    x, y = torch.randn(5, 1, 3, 3), torch.tensor([0, 1, 2, 0, 1])
    module.training_loss((x, y)).backward()
    assert all(p.grad is None and not p.requires_grad for p in module.teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in module.model.parameters()}


def test_precomputed_teacher_logits_are_used_and_match_the_live_teacher():
    module = make_distiller(soft_weight=1.0)
    module.train()
    x, y = torch.randn(5, 1, 3, 3), torch.tensor([0, 1, 2, 0, 1])
    cached = predict_logits(module.teacher, x)
    live = module.training_loss((x, y))
    assert module.training_loss((x, y, cached)).item() == pytest.approx(live.item(), rel=1e-6)
    assert module.training_loss((x, y, torch.zeros(5, 3))).item() != pytest.approx(live.item())


def test_batches_carry_the_extra_tensor_aligned_with_x():
    x = torch.arange(20.0).reshape(10, 2)
    extra = x[:, :1] * 10
    batches = list(TensorBatches(x, torch.arange(10), 4, shuffle=True, seed=1, extra=extra))
    assert all(len(b) == 3 for b in batches)
    assert all(torch.equal(bx[:, :1] * 10, be) for bx, _, be in batches)
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == list(range(10))
    assert all(len(b) == 2 for b in TensorBatches(x, torch.arange(10), 4, shuffle=True, seed=1))


def test_prediction_agreement_counts_same_argmax():
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert prediction_agreement(a, b) == pytest.approx(1 / 3)
    assert prediction_agreement(b, b) == 1.0
