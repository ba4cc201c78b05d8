"""Layers: SimNorm, fast Mish, two-hot round trip, batched Q-ensemble == per-head loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldmpc.math_utils import soft_ce, symexp, symlog, two_hot, two_hot_inv
from ldmpc.nets import NormedLinear, QEnsemble, SimNorm, mish, mlp


def test_simnorm_sums_to_one_per_group() -> None:
    x = torch.randn(3, 4, 64) * 5
    y = SimNorm(8)(x)
    assert y.shape == x.shape
    groups = y.view(3, 4, 8, 8)
    torch.testing.assert_close(groups.sum(-1), torch.ones(3, 4, 8))
    assert (y >= 0).all()
    torch.testing.assert_close(y, F.softmax(x.view(3, 4, 8, 8), dim=-1).view(3, 4, 64))


def test_fast_mish_matches_aten_forward_and_backward() -> None:
    x = torch.cat([torch.randn(1000) * 6, torch.tensor([-100.0, -30.0, 0.0, 19.9, 20.1, 80.0])])
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    y1, y2 = F.mish(x1), mish(x2)
    torch.testing.assert_close(y2, y1, atol=1e-6, rtol=1e-5)
    g = torch.randn_like(x)
    (y1 * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, atol=1e-6, rtol=1e-5)


def test_symlog_symexp_inverse() -> None:
    x = torch.linspace(-1000, 1000, 101)
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("num_bins", [2, 11, 101])
def test_two_hot_round_trip(num_bins: int) -> None:
    x = torch.tensor([[-50.0], [-3.3], [-0.01], [0.0], [0.7], [12.0], [1e6]])
    target = two_hot(x, num_bins, -10.0, 10.0)
    assert target.shape == (7, num_bins)
    torch.testing.assert_close(target.sum(-1), torch.ones(7))
    assert ((target > 0).sum(-1) <= 2).all()
    # Decoding the target's probabilities (as logits via log) recovers x (clipped to the range).
    decoded = two_hot_inv(torch.log(target + 1e-30), num_bins, -10.0, 10.0)
    expected = symexp(symlog(x).clamp(-10, 10))
    torch.testing.assert_close(decoded, expected, rtol=1e-4, atol=1e-4)


def test_soft_ce_is_minimal_at_the_target() -> None:
    x = torch.tensor([[1.5], [-4.0]])
    target = two_hot(x, 101, -10, 10)
    good = soft_ce(torch.log(target + 1e-9), x, 101, -10, 10)
    bad = soft_ce(torch.zeros(2, 101), x, 101, -10, 10)
    assert (good < bad).all() and good.shape == (2, 1)


def test_mlp_structure() -> None:
    net = mlp(10, [32, 32], 16, act=SimNorm(8), dropout=0.1)
    assert isinstance(net[0], NormedLinear) and net[0].dropout is not None
    assert net[1].dropout is None and isinstance(net[-1].act, SimNorm)
    assert isinstance(mlp(10, [32], 3)[-1], torch.nn.Linear)
    assert net(torch.randn(5, 10)).shape == (5, 16)


def _head(ens: QEnsemble, q: int, x: torch.Tensor) -> torch.Tensor:
    """Reference: head q as an ordinary per-head MLP."""
    h = x
    for i in range(ens.num_hidden + 1):
        h = h @ getattr(ens, f"w{i}")[q] + getattr(ens, f"b{i}")[q]
        if i < ens.num_hidden:
            h = F.layer_norm(h, h.shape[-1:], getattr(ens, f"g{i}")[q], getattr(ens, f"beta{i}")[q])
            h = F.mish(h)
    return h


def test_q_ensemble_batched_equals_per_head_loop() -> None:
    torch.manual_seed(0)
    ens = QEnsemble(5, 12, [32, 32], 7, dropout=0.0).eval()
    with torch.no_grad():
        for p in ens.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # non-trivial LN affine and output weights
    x = torch.randn(3, 4, 12)
    out = ens(x)
    assert out.shape == (5, 3, 4, 7)
    for q in range(5):
        torch.testing.assert_close(out[q], _head(ens, q, x), atol=1e-5, rtol=1e-4)
    heads = torch.tensor([3, 1])
    torch.testing.assert_close(ens(x, heads=heads), out[heads], atol=1e-6, rtol=1e-5)
    detached = {k: v.detach() for k, v in ens.named_parameters()}
    assert not ens(x, params=detached).requires_grad


def test_q_ensemble_dropout_only_in_training() -> None:
    ens = QEnsemble(2, 8, [16, 16], 3, dropout=0.5)
    x = torch.randn(64, 8)
    torch.testing.assert_close(ens(x, training=False), ens.eval()(x))
    ens.train()
    assert not torch.equal(ens(x), ens(x, training=False))


def test_two_hot_of_nan_is_nan_not_a_crash() -> None:
    target = two_hot(torch.tensor([[float("nan")], [1.0]]), 101, -10.0, 10.0)
    assert target[0].isnan().any() and torch.isfinite(target[1]).all()


def test_cpu_dropout_rate_and_scale() -> None:
    from ldmpc.nets import dropout

    torch.manual_seed(0)
    x = torch.ones(400, 500)
    y = dropout(x, 0.1)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - 0.1) < 0.005
    torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))


def test_mish_without_grad_matches_aten() -> None:
    x = torch.randn(64, 32) * 8
    with torch.no_grad():
        torch.testing.assert_close(mish(x), F.mish(x), atol=1e-6, rtol=1e-5)


def test_compiled_dropout_draws_eagers_mask_and_fresh_masks() -> None:
    """The CPU dropout: drop rate p, kept values scaled by 1/(1-p), a new mask per call, no
    correlation between neighbouring elements, and under torch.compile (LOSS_OPTIONS) the
    very mask eager code draws from the same generator state."""
    from ldmpc.compile import LOSS_OPTIONS
    from ldmpc.nets import dropout

    fn = lambda x: dropout(x, 0.1)  # noqa: E731
    compiled = torch.compile(fn, dynamic=False, options=LOSS_OPTIONS)
    x = torch.ones(400, 500)
    torch.manual_seed(0)
    first, second = fn(x), fn(x)
    torch.manual_seed(0)
    assert torch.equal(compiled(x), first) and torch.equal(compiled(x), second)
    for y in (first, second):
        dropped = (y == 0).float().flatten()
        assert abs(dropped.mean().item() - 0.1) < 0.005
        torch.testing.assert_close(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
        assert abs(torch.corrcoef(torch.stack([dropped[:-1], dropped[1:]]))[0, 1].item()) < 0.02
    overlap = ((first == 0) & (second == 0)).float().mean().item()
    assert overlap < 0.02  # independent masks overlap on ~p^2 = 1 %, the same mask on 10 %
