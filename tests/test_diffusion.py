"""ldmpc.diffusion: EDM schedule, few-step samplers, transformer denoiser, denoising loss."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from ldmpc.diffusion import (
    TARGETS,
    DenoiserSize,
    EDMSchedule,
    TransformerDenoiser,
    action_tokens,
    denoiser_size,
    denoising_loss,
    sample,
)

SIGMAS = [0.002, 0.05, 0.5, 3.0, 80.0]


# ----------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 18])
def test_sampling_grid_from_sigma_max_to_zero(steps: int) -> None:
    sched = EDMSchedule()
    sigmas = sched.sampling_sigmas(steps)
    assert sigmas.shape == (steps + 1,)
    assert sigmas[0].item() == pytest.approx(sched.sigma_max)
    assert sigmas[-1].item() == 0.0
    assert (sigmas[1:] < sigmas[:-1]).all()
    ramp = sched.karras_ramp(steps + 1)  # the grid is this ramp with its sigma_min set to 0
    assert ramp[-1].item() == pytest.approx(sched.sigma_min)
    torch.testing.assert_close(sigmas[:-1], ramp[:-1])


def test_sampling_grid_rejects_zero_steps_and_bad_schedules() -> None:
    with pytest.raises(ValueError, match="steps=0"):
        EDMSchedule().sampling_sigmas(0)
    with pytest.raises(ValueError, match="target='eps'"):
        EDMSchedule(target="eps")
    with pytest.raises(ValueError, match="sigma_min"):
        EDMSchedule(sigma_min=1.0, sigma_max=0.5)


@pytest.mark.parametrize("target", TARGETS)
def test_preconditioning_matches_closed_forms(target: str) -> None:
    sd = 0.7
    sched = EDMSchedule(sigma_data=sd, target=target)
    for s in SIGMAS:
        c = sched.precondition(torch.tensor(s, dtype=torch.float64))
        total = s * s + sd * sd
        if target == "v":
            skip, out = sd * sd / total, s * sd / math.sqrt(total)
        else:
            skip, out = 0.0, sd
        assert c.c_skip.item() == pytest.approx(skip, rel=1e-12)
        assert c.c_out.item() == pytest.approx(out, rel=1e-12)
        assert c.c_in.item() == pytest.approx(1 / math.sqrt(total), rel=1e-12)
        assert c.c_noise.item() == pytest.approx(math.log(s) / 4, rel=1e-12)
        weight = sched.loss_weight(torch.tensor(s, dtype=torch.float64)).item()
        assert weight == pytest.approx(1 / out**2, rel=1e-12)


@pytest.mark.parametrize("target", TARGETS)
def test_network_input_and_target_have_unit_scale(target: str) -> None:
    """The point of preconditioning: for data of RMS sigma_data, F's input c_in x and its
    regression target (x0 - c_skip x) / c_out have unit variance at every noise level."""
    g = torch.Generator().manual_seed(0)
    sched = EDMSchedule(sigma_data=0.3, target=target)
    x0 = 0.3 * torch.randn(200_000, generator=g, dtype=torch.float64)
    n = torch.randn(200_000, generator=g, dtype=torch.float64)
    for s in SIGMAS:
        c = sched.precondition(torch.tensor(s, dtype=torch.float64))
        x = x0 + s * n
        assert (c.c_in * x).var().item() == pytest.approx(1.0, abs=0.02)
        assert ((x0 - c.c_skip * x) / c.c_out).var().item() == pytest.approx(1.0, abs=0.02)


def test_train_sigmas_mix_lognormal_and_grid_levels() -> None:
    sched = EDMSchedule(grid_frac=0.5, grid_steps=3)
    a = sched.train_sigmas((40_000,), torch.Generator().manual_seed(1))
    b = sched.train_sigmas((40_000,), torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert a.min() >= sched.sigma_min and a.max() <= sched.sigma_max
    # grids of 1, 2, 3 steps visit 6 levels, 3 of them sigma_max: a quarter of all draws.
    at_max = (a == sched.sigma_max).float().mean().item()
    assert at_max == pytest.approx(0.25, abs=0.01)
    lognormal = a[~torch.isin(a, sched.grid_levels().float())]
    assert lognormal.log().mean().item() == pytest.approx(sched.p_mean, abs=0.05)


# ----------------------------------------------------------------------------- sampler
def _oracle(sched: EDMSchedule, x0: torch.Tensor) -> Callable[..., torch.Tensor]:
    """A network whose preconditioned denoiser returns exactly x0 (inverts c_in, c_skip, c_out)."""

    def net(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        c = sched.precondition((4 * c_noise).exp())
        x = x_in / c.c_in
        return (x0 - c.c_skip * x) / c.c_out

    return net


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("steps", [1, 2, 3])
def test_oracle_denoiser_recovers_x0(target: str, method: str, steps: int) -> None:
    sched = EDMSchedule(target=target)
    g = torch.Generator().manual_seed(steps)
    x0 = torch.randn(5, 3, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(5, 3, 8, generator=g, dtype=torch.float64)
    net = _oracle(sched, x0)
    sigmas = sched.sampling_sigmas(steps, dtype=torch.float64)
    out = sample(lambda x, s: sched.denoise(net, x, s), noise, sigmas, method)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-9)


def _gaussian_denoiser(mu: float, std: float) -> Callable[..., torch.Tensor]:
    """Exact D(x; sigma) = E[x0 | x] for data N(mu, std^2) per feature."""
    return lambda x, s: mu + std**2 / (std**2 + s**2) * (x - mu)


def test_one_step_on_a_gaussian_gives_the_data_mean() -> None:
    sched = EDMSchedule()
    noise = torch.randn(1000, 1, 4, generator=torch.Generator().manual_seed(0))
    out = sample(_gaussian_denoiser(1.5, 0.2), noise, sched.sampling_sigmas(1))
    torch.testing.assert_close(out, torch.full_like(out, 1.5), rtol=0, atol=5e-3)


@pytest.mark.parametrize("method,steps", [("euler", 200), ("heun", 40)])
def test_many_steps_transport_noise_to_the_data_distribution(method: str, steps: int) -> None:
    """The probability-flow ODE maps N(0, sigma_max^2) onto the data: mean and std match.

    Coarse grids get the spread wrong (std 0.2: 8 Euler steps give 0.14, 12 Heun steps 0.23),
    which matters little for near-deterministic latent dynamics, where the planner wants the
    conditional mean anyway."""
    sched = EDMSchedule()
    noise = torch.randn(20_000, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample(_gaussian_denoiser(1.5, 0.2), noise, sched.sampling_sigmas(steps), method)
    assert out.mean().item() == pytest.approx(1.5, abs=0.01)
    assert out.std().item() == pytest.approx(0.2, rel=0.04)


@pytest.mark.parametrize(
    "sigma_max,steps,lo,hi",
    [(80.0, 1, 0.0, 0.0), (80.0, 2, 0.0, 0.01), (10.0, 2, 0.5, 1.0), (3.0, 2, 0.9, 1.0)],
)
def test_modes_need_steps_and_a_moderate_sigma_max(
    sigma_max: float, steps: int, lo: float, hi: float
) -> None:
    """Data +-1 (exact denoiser tanh(x / sigma^2)): one step returns the mean 0 for every noise
    draw; a few steps reach the modes only when sigma_max is a few times the data scale. This is
    why action proposals (multimodal) want 2-3 steps and sigma_max ~ 3-10 sigma_data, while
    latent dynamics (near-deterministic) is served by 1 step."""
    sched = EDMSchedule(sigma_max=sigma_max)
    noise = torch.randn(20_000, 1, 1, generator=torch.Generator().manual_seed(0))
    out = sample(lambda x, s: torch.tanh(x / s**2), noise, sched.sampling_sigmas(steps))
    near_mode = ((out.abs() - 1).abs() < 0.1).float().mean().item()
    assert lo <= near_mode <= hi


def _random_net(**kw: int) -> TransformerDenoiser:
    """A denoiser with random (not zero-initialised) output layers, so outputs depend on inputs."""
    torch.manual_seed(0)
    net = TransformerDenoiser(size=DenoiserSize(width=32, depth=2, heads=2), **kw)
    with torch.no_grad():
        for layer in (net.ada, net.out):
            layer.weight.normal_(0, 0.1)
    return net.eval()


@torch.no_grad()
def test_batched_sampling_equals_per_item_and_is_deterministic() -> None:
    sched = EDMSchedule()
    net = _random_net(x_dim=6, cond_dim=5, token_dim=2, max_scale=4)
    g = torch.Generator().manual_seed(3)
    cond, tokens = torch.randn(4, 5, generator=g), torch.randn(4, 3, 2, generator=g)
    scale, noise = torch.tensor([1, 2, 4, 2]), torch.randn(4, 3, 6, generator=g)
    sigmas = sched.sampling_sigmas(3)

    def run(sl: slice) -> torch.Tensor:
        kw = {"cond": cond[sl], "tokens": tokens[sl], "scale": scale[sl]}
        return sample(lambda x, s: sched.denoise(net, x, s, **kw), noise[sl], sigmas, "heun")

    batched = run(slice(None))
    assert torch.equal(batched, run(slice(None)))
    per_item = torch.cat([run(slice(i, i + 1)) for i in range(4)])
    torch.testing.assert_close(batched, per_item, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_shared_noise_broadcasts_over_candidates() -> None:
    """Planner shapes: z_0 [E, 1, C] and one noise draw [E, 1, T, D] per env, N action sequences."""
    sched = EDMSchedule()
    net = _random_net(x_dim=6, cond_dim=5, token_dim=2)
    E, N, T = 3, 7, 3
    cond, tokens = torch.randn(E, 1, 5), torch.randn(E, N, T, 2)
    noise = torch.randn(E, 1, T, 6)
    for steps in (1, 2):
        sigmas = sched.sampling_sigmas(steps)
        fn = lambda x, s: sched.denoise(net, x, s, cond=cond, tokens=tokens)  # noqa: E731
        shared = sample(fn, noise, sigmas)
        full = sample(fn, noise.expand(E, N, T, 6), sigmas)
        assert shared.shape == (E, N, T, 6)
        torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- denoiser
@torch.no_grad()
def test_denoiser_shapes_with_leading_dims_and_per_item_scale() -> None:
    net = _random_net(x_dim=6, cond_dim=5, token_dim=2, out_dim=4, max_scale=4)
    E, N, T = 2, 5, 3
    x, cond, tokens = torch.randn(E, N, T, 6), torch.randn(E, 1, 5), torch.randn(E, N, T, 2)
    scale = torch.randint(1, 5, (E, N), generator=torch.Generator().manual_seed(0))
    c_noise = torch.rand(E, N)
    out = net(x, c_noise, cond=cond, tokens=tokens, scale=scale)
    assert out.shape == (E, N, T, 4)
    one = net(x[1, 3], c_noise[1, 3], cond[1, 0], tokens[1, 3], scale[1, 3])
    torch.testing.assert_close(out[1, 3], one, rtol=1e-5, atol=1e-6)
    other = net(x[1, 3], c_noise[1, 3], cond[1, 0], tokens[1, 3], scale[1, 3] % 4 + 1)
    assert not torch.allclose(one, other)  # the scale embedding reaches the output
    # scale=None means s = 1
    torch.testing.assert_close(net(x, c_noise, cond, tokens), net(x, c_noise, cond, tokens, 1))


@torch.no_grad()
def test_causal_denoiser_ignores_later_tokens() -> None:
    net = _random_net(x_dim=6, token_dim=2, causal=True)
    x, tokens = torch.randn(4, 3, 6), torch.randn(4, 3, 2)
    out = net(x, torch.zeros(()), tokens=tokens)
    changed = tokens.clone()
    changed[:, 2] += 1.0
    out2 = net(x, torch.zeros(()), tokens=changed)
    torch.testing.assert_close(out[:, :2], out2[:, :2])
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_zero_initialised_output_and_sizes() -> None:
    net = TransformerDenoiser(x_dim=6, cond_dim=5)
    assert torch.equal(
        net(torch.randn(2, 3, 6), torch.zeros(2), torch.randn(2, 5)), torch.zeros(2, 3, 6)
    )
    assert denoiser_size(384) == DenoiserSize(width=128, depth=2, heads=2)
    assert denoiser_size(512).width == 192 and denoiser_size(4096).width == 1024
    assert denoiser_size(1024).depth == 4


def test_action_tokens_span_scale_steps() -> None:
    actions = torch.arange(24.0).view(1, 12, 2)  # a_i = (2i, 2i + 1)
    tok = action_tokens(actions, 2, num_tokens=3, max_scale=4)
    assert tok.shape == (1, 3, 8)
    assert tok[0, 1].tolist() == [4.0, 5.0, 6.0, 7.0, 0.0, 0.0, 0.0, 0.0]  # a_2, a_3, padding
    mixed = action_tokens(actions.expand(3, 12, 2), torch.tensor([1, 2, 4]), 3, 4)
    for i, s in enumerate([1, 2, 4]):
        torch.testing.assert_close(mixed[i], action_tokens(actions, s, 3, 4)[0])
    assert mixed[2, 2].tolist() == list(range(16, 24))  # s=4: token 2 spans a_8..a_11


# ----------------------------------------------------------------------------- training
def _toy_batch(
    n: int, g: torch.Generator, w: torch.Tensor, u: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """x0_t = tanh(cond W_t + a_t U) + small noise: a conditional distribution with T=3 tokens."""
    cond, acts = torch.randn(n, 4, generator=g), torch.randn(n, 3, 2, generator=g)
    mean = torch.tanh(torch.einsum("bc,tcd->btd", cond, w) + acts @ u)
    return cond, acts, mean, mean + 0.05 * torch.randn(mean.shape, generator=g)


@pytest.mark.parametrize("target", TARGETS)
def test_denoiser_learns_a_conditional_distribution(target: str) -> None:
    g = torch.Generator().manual_seed(0)
    w, u = torch.randn(3, 4, 4, generator=g), torch.randn(2, 4, generator=g)
    sched = EDMSchedule(sigma_data=0.6, target=target)
    torch.manual_seed(0)
    net = TransformerDenoiser(4, cond_dim=4, token_dim=2, max_tokens=3, size=DenoiserSize(64, 2, 2))
    test_cond, test_acts, test_mean, _ = _toy_batch(512, g, w, u)
    test_noise = torch.randn(test_mean.shape, generator=g)

    @torch.no_grad()
    def errors() -> list[float]:
        fn = lambda x, s: sched.denoise(net, x, s, cond=test_cond, tokens=test_acts)  # noqa: E731
        return [
            (sample(fn, test_noise, sched.sampling_sigmas(k)) - test_mean)
            .square()
            .mean()
            .sqrt()
            .item()
            for k in (1, 2)
        ]

    before = errors()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):
        cond, acts, _, x0 = _toy_batch(128, g, w, u)
        loss, _ = denoising_loss(sched, net, x0, generator=g, cond=cond, tokens=acts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = errors()
    for b, a in zip(before, after):
        assert a < 0.3 * b, (before, after)


def test_denoiser_overfits_a_fixed_batch() -> None:
    g = torch.Generator().manual_seed(0)
    sched = EDMSchedule(sigma_data=1.0)
    torch.manual_seed(0)
    net = TransformerDenoiser(4, cond_dim=3, max_tokens=3, size=DenoiserSize(64, 2, 2))
    x0, cond = torch.randn(16, 3, 4, generator=g), torch.randn(16, 3, generator=g)
    sigma, noise = sched.train_sigmas((16,), g), torch.randn(16, 3, 4, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss, denoised = denoising_loss(sched, net, x0, sigma=sigma, noise=noise, cond=cond)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert denoised.shape == x0.shape
    assert losses[-1] < losses[0] / 10, losses[::30]


def test_loss_token_weight_and_leading_dims() -> None:
    sched = EDMSchedule()
    net = _random_net(x_dim=6, cond_dim=5).train()
    x0, cond = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 5)
    g = torch.Generator().manual_seed(0)
    sigma, noise = sched.train_sigmas((2, 3), g), torch.randn(2, 3, 4, 6, generator=g)
    full, d = denoising_loss(sched, net, x0, sigma=sigma, noise=noise, cond=cond)
    assert full.shape == () and d.shape == x0.shape
    w = torch.tensor([1.0, 0.5, 0.25, 0.0])
    weighted, _ = denoising_loss(
        sched, net, x0, sigma=sigma, noise=noise, cond=cond, token_weight=w
    )
    per_token = sched.loss_weight(sigma)[..., None] * (d - x0).square().mean(-1)
    torch.testing.assert_close(weighted, (per_token * w).mean())


# ----------------------------------------------------------------------------- host syncs
def test_no_host_sync_calls_in_the_hot_path() -> None:
    """Sampling and the denoiser must not read tensor values on the host (a device sync)."""
    src = Path(__file__).parents[1] / "ldmpc" / "diffusion"
    pattern = re.compile(r"\.item\(|\.cpu\(|\.tolist\(|\.numpy\(|\bbool\(|\.nonzero\(|print\(")
    for name in ("sampler.py", "denoiser.py", "schedule.py", "losses.py", "tokens.py"):
        hits = [ln for ln in (src / name).read_text().splitlines() if pattern.search(ln)]
        assert not hits, (name, hits)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sampling_and_loss_never_sync() -> None:
    sched = EDMSchedule()
    net = _random_net(x_dim=6, cond_dim=5, token_dim=2, max_scale=4).cuda()
    cond, tokens = torch.randn(3, 1, 5, device="cuda"), torch.randn(3, 8, 3, 2, device="cuda")
    noise, scale = torch.randn(3, 1, 3, 6, device="cuda"), torch.full((3, 1), 2, device="cuda")
    sigmas = sched.sampling_sigmas(3, device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn = lambda x, s: sched.denoise(net, x, s, cond=cond, tokens=tokens, scale=scale)  # noqa: E731
        with torch.no_grad():
            out = sample(fn, noise, sigmas, "heun")
        loss, _ = denoising_loss(sched, net, out, generator=g, cond=cond, tokens=tokens)
        action_tokens(torch.randn(3, 8, 12, 2, device="cuda"), scale, 3, 4)
        action_tokens(torch.randn(3, 8, 12, 2, device="cuda"), 4, 3, 4)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (3, 8, 3, 6) and torch.isfinite(loss).item()


def test_sampler_and_loss_trace_as_one_graph() -> None:
    """fullgraph=True fails on any graph break, i.e. on data-dependent Python control flow or a
    host read; the eager backend only traces (no inductor, which fails on this CPU)."""
    sched = EDMSchedule()
    net = _random_net(x_dim=6, cond_dim=5, token_dim=2, max_scale=4)
    cond, tokens, noise = torch.randn(3, 1, 5), torch.randn(3, 8, 3, 2), torch.randn(3, 1, 3, 6)

    def plan_sample(noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        fn = lambda x, s: sched.denoise(net, x, s, cond=cond, tokens=tokens, scale=2)  # noqa: E731
        return sample(fn, noise, sigmas, "heun")

    def loss(x0: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return denoising_loss(sched, net, x0, cond=cond[:, 0], tokens=tokens[:, 0], scale=scale)[0]

    sigmas = sched.sampling_sigmas(3)
    with torch.no_grad():
        compiled = torch.compile(plan_sample, fullgraph=True, backend="eager")(noise, sigmas)
        torch.testing.assert_close(compiled, plan_sample(noise, sigmas))
    out = torch.compile(loss, fullgraph=True, backend="eager")(
        torch.randn(3, 3, 6), torch.full((3,), 4)
    )
    assert out.shape == ()
