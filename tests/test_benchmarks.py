"""Benchmark harness pieces that can be checked cheaply."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.common import KNOWN_SHAPES
from benchmarks.diffusion_ab import STUDY_VARIANTS
from ldmpc.config import load


@pytest.mark.parametrize("task", sorted(KNOWN_SHAPES))
def test_known_shapes_match_the_real_env(task: str, tmp_path) -> None:
    cfg = load([f"task={task}", f"work_dir={tmp_path}"])
    assert (tuple(cfg.obs_shape), cfg.action_dim) == KNOWN_SHAPES[task]


def test_step_cost_batch_spans_the_variants_window_and_trains() -> None:
    """step_cost times act + update; its batch must be one the update takes (a multi-scale
    window is horizon x max(scales) steps), or it would time a skipped or failing step."""
    from benchmarks.common import make_agent, replay_batch

    cfg, agent = make_agent(
        ["task=cartpole-swingup", "model_size=1", "batch_size=4", "num_samples=64",
         "num_elites=4", "num_pi_trajs=2", "iterations=1", "dynamics=diffusion",
         "proposal=both", "scales=[1,2]"]
    )  # fmt: skip
    batch = replay_batch(cfg, agent.device)
    assert batch["obs"].shape[0] == cfg.window + 1 == 2 * cfg.horizon + 1
    assert agent.update(batch)["skipped"] == 0.0


def test_plan_budget_pairs_the_baseline_checkpoint_of_the_same_step(tmp_path, monkeypatch) -> None:
    """`baseline-full` must play the baseline agent trained exactly as long as the proposals one:
    the newest step both runs checkpointed, and no baseline row when they share none."""
    from benchmarks import plan_budget

    runs = {"proposals": tmp_path / "p", "baseline": tmp_path / "b"}
    for name, steps in (("proposals", (25_000, 27_500, 30_000)), ("baseline", (20_000, 27_500))):
        (runs[name] / "checkpoints").mkdir(parents=True)
        for step in steps:
            (runs[name] / "checkpoints" / f"step_{step}.pt").touch()

    def run_dir(args: list[str]):
        exp = next(a.split("=", 1)[1] for a in args if a.startswith("exp_name="))
        return runs[exp.rstrip("0123456789")]

    monkeypatch.setattr(plan_budget, "run_dir", run_dir)
    monkeypatch.delenv("PB_CHECKPOINT", raising=False)
    monkeypatch.delenv("PB_STEP", raising=False)
    ckpt, args, base_ckpt, base_args = plan_budget.checkpoint_and_args()
    assert ckpt == runs["proposals"] / "checkpoints" / "step_27500.pt"
    assert base_ckpt == runs["baseline"] / "checkpoints" / "step_27500.pt"
    assert "proposal=both" in args and "proposal=both" not in base_args
    assert "seed=1" in args and "seed=1" in base_args
    monkeypatch.setenv("PB_STEP", "30000")
    monkeypatch.setenv("PB_SEED", "2")
    ckpt, args, base_ckpt, base_args = plan_budget.checkpoint_and_args()
    assert ckpt == runs["proposals"] / "checkpoints" / "latest.pt" and base_ckpt is None
    assert "seed=2" in args and "seed=2" in base_args


def test_ab_summary_scores_the_late_evals_and_checks_the_targets() -> None:
    """The A/B verdict: the score averages the evals of the last third only, is normalized like
    TD-MPC2's (return / 10; success x 100 for success tasks), and a variant meets the target only
    with mean >= 1.05 x baseline and no task below 0.95 x."""
    from benchmarks.diffusion_ab import late_score, summarize

    evals = [{"step": s, "episode_reward": r} for s, r in ((0, 0.0), (10, 900.0), (20, 500.0))]
    evals += [{"step": 30, "episode_reward": 700.0}]
    assert late_score("cartpole-swingup", evals, 30) == pytest.approx(60.0)  # (500 + 700) / 2 / 10
    assert (
        late_score("mw-reach", [{"step": 30, "episode_reward": 5.0, "episode_success": 0.5}], 30)
        == 50.0
    )
    assert late_score("cup-catch", evals[:2], 30) != late_score("cup-catch", evals[:2], 30)  # nan

    def row(task: str, variant: str, score: float) -> dict:
        return {"task": task, "variant": variant, "seed": 1, "score": score}

    rows = [row("a", "baseline", 50.0), row("b", "baseline", 80.0)]
    rows += [row("a", "up", 60.0), row("b", "up", 80.0)]  # mean 70 vs 65: +7.7 %, no task worse
    rows += [row("a", "mixed", 75.0), row("b", "mixed", 72.0)]  # mean +13 %, but b at 0.90
    rows += [row("a", "half", 60.0), row("b", "half", float("nan"))]  # b still running
    rows += [row("c", "orphan", 10.0)]  # no baseline for c
    lines = {
        ln.split(" | ")[0][2:]: ln for ln in summarize(rows).splitlines() if ln.startswith("| ")
    }
    assert "| 1.08 | met |" in lines["up"]
    assert "b 0.90 (s1)" in lines["mixed"] and lines["mixed"].endswith("| missed |")
    assert "b/s1: no score yet" in lines["half"] and lines["half"].endswith("| met (partial) |")
    assert lines["orphan"].endswith("| not measured |")


def test_ab_summary_reads_the_baselines_it_did_not_run(tmp_path, monkeypatch) -> None:
    """`AB_VARIANTS=proposals` still compares with the baseline run already on disk."""
    from benchmarks import diffusion_ab

    (tmp_path / "eval.csv").write_text("step,episode_reward\n0,10\n20,600\n30,800\n")
    monkeypatch.setattr(diffusion_ab, "run_dir", lambda args: tmp_path)
    rows = [{"task": "cartpole-swingup", "variant": "proposals", "seed": 1, "score": 77.0}]
    (base,) = diffusion_ab.baselines_on_disk(rows, 30)
    assert base["variant"] == "baseline" and base["score"] == pytest.approx(70.0)
    assert "| 1.10 | met |" in diffusion_ab.summarize([*rows, base])
    assert diffusion_ab.baselines_on_disk([*rows, base], 30) == []


def test_ab_summary_pools_seeds_per_task() -> None:
    """With several seeds a task's ratio is its mean over the seeds that both the variant and the
    baseline finished, and the per-task floor applies to that mean, not to each seed."""
    from benchmarks.diffusion_ab import summarize

    def row(task: str, variant: str, seed: int, score: float) -> dict:
        return {"task": task, "variant": variant, "seed": seed, "score": score}

    rows = [row("a", "baseline", 1, 50.0), row("a", "baseline", 2, 70.0)]
    rows += [row("b", "baseline", 1, 80.0), row("b", "baseline", 2, 80.0)]
    rows += [row("a", "up", 1, 45.0), row("a", "up", 2, 90.0)]  # a: 67.5 / 60, seed 1 at 0.90
    rows += [row("b", "up", 1, 84.0), row("b", "up", 2, float("nan"))]  # b: seed 2 running
    (line,) = [ln for ln in summarize(rows).splitlines() if ln.startswith("| up ")]
    assert "a 1.12 (s1,2)" in line and "b 1.05 (s1)" in line and "b/s2: no score yet" in line
    assert "| 75.8 | 70.0 | 1.08 | met (partial) |" in line  # (67.5 + 84) / 2 vs (60 + 80) / 2


def test_ab_summary_says_how_many_seeds_the_noise_needs() -> None:
    """Per-seed ratios 0.84, 1.14, 0.85, 1.06 (what cartpole-swingup and cup-catch gave for
    proposals over two seeds): sd 0.15, so ~37 pairs before 5 % stands 2 standard errors out."""
    from benchmarks.diffusion_ab import seed_noise, summarize

    score = {}
    for (task, seed), (base, var) in {
        ("a", 1): (100.0, 84.0), ("a", 2): (100.0, 114.0),
        ("b", 1): (50.0, 42.5), ("b", 2): (50.0, 53.0), ("b", 3): (50.0, float("nan")),
    }.items():  # fmt: skip
        score[task, "baseline", seed], score[task, "up", seed] = base, var
    line = seed_noise(score, "up")
    assert line == (
        "- up: 4 pairs, ratios 0.84-1.14, sd 0.15; mean 0.97 +- 0.08 (1 SE); telling a 5% gain "
        "from none at 2 SE takes ~37 pairs"
    )
    assert seed_noise(score, "baseline") is None
    one = {k: v for k, v in score.items() if k[0] == "a" and k[2] == 1}
    assert seed_noise(one, "up") is None  # a single pair has no spread
    rows = [{"task": t, "variant": v, "seed": s, "score": x} for (t, v, s), x in score.items()]
    assert line in summarize(rows)


def test_ab_report_only_reads_the_runs_on_disk(tmp_path, monkeypatch) -> None:
    """AB_TRAIN=0 trains nothing: the table and summary come from the eval.csv files on disk,
    and a run that is not there is reported as not finished."""
    from benchmarks import diffusion_ab

    monkeypatch.setattr(diffusion_ab, "ROOT", tmp_path)
    monkeypatch.setattr(diffusion_ab, "train", lambda args: pytest.fail("AB_TRAIN=0 trained"))
    monkeypatch.setattr(diffusion_ab, "append_rows", lambda name, rows: None)
    for variant, text in (("baseline", "0,10\n20,600\n30,800\n"), ("proposals", "30,770\n")):
        rdir = diffusion_ab.run_dir(diffusion_ab.run_args("cartpole-swingup", variant, 1, 30))
        rdir.mkdir(parents=True)
        (rdir / "eval.csv").write_text("step,episode_reward\n" + text)
    for var, value in (("AB_TRAIN", "0"), ("AB_STEPS", "30"), ("AB_TASKS", "cartpole-swingup")):
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("AB_VARIANTS", "proposals,diffusion")
    diffusion_ab.main()
    summary = (tmp_path / "ab_summary.md").read_text()
    assert "| proposals | cartpole-swingup 1.10 (s1) | 77.0 | 70.0 | 1.10 | met |" in summary
    assert "cartpole-swingup/s1: no score yet" in summary and "| not measured |" in summary
    assert (tmp_path / "ab_curves.png").stat().st_size > 0


def test_ab_prediction_errors_are_measured_once_per_checkpoint(tmp_path, monkeypatch) -> None:
    """The report reuses a run's measured prediction errors until its checkpoint changes."""
    from benchmarks import diffusion_ab

    measured: list = []

    def measure(args, ckpt):
        measured.append(ckpt)
        return {"pred_err_1step": float(len(measured)), "pred_err_Hstep": 2e-5}

    monkeypatch.setattr(diffusion_ab, "measure_prediction_error", measure)
    rdir = tmp_path / "run"
    assert diffusion_ab.evaluate_run([], rdir) == {} and not measured  # no checkpoint: nothing
    ckpt = rdir / "checkpoints" / "latest.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"weights at 27.5k")
    first = diffusion_ab.evaluate_run([], rdir)
    assert diffusion_ab.evaluate_run([], rdir) == first and len(measured) == 1
    ckpt.write_bytes(b"weights at 30k, trained on")  # the run resumed: measure again
    second = diffusion_ab.evaluate_run([], rdir)
    assert len(measured) == 2 and second["pred_err_1step"] == 2.0
    (rdir / diffusion_ab.PRED_ERR_FILE).write_text("{not json")  # a torn cache is remeasured
    assert diffusion_ab.evaluate_run([], rdir)["pred_err_1step"] == 3.0


@pytest.mark.parametrize(
    ("name", "var"),
    [("diffusion_ab", "AB_STEPS"), ("diffusion_ab", "AB_SEEDS"), ("multitask", "MT_SEED")],
)
def test_a_bad_benchmark_knob_is_one_line_and_exit_2(name: str, var: str, monkeypatch, capsys):
    from benchmarks.__main__ import main

    monkeypatch.setenv(var, "30k")
    assert main([name]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{name}: {var}='30k': expected an integer") and err.count("\n") == 1


def test_an_unknown_ab_variant_is_one_line_and_exit_2(monkeypatch, capsys) -> None:
    from benchmarks.__main__ import main

    monkeypatch.setenv("AB_VARIANTS", "baseline,proposal")
    assert main(["diffusion_ab"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffusion_ab: AB_VARIANTS: unknown proposal (known: baseline,")
    assert err.count("\n") == 1


@pytest.mark.parametrize("variant", sorted(STUDY_VARIANTS))
def test_ab_study_variants_are_valid_configs(variant: str, tmp_path) -> None:
    """Each follow-up variant is one `ldmpc train` config that validates (bad switches would
    only fail an hour into an A/B queue otherwise)."""
    from benchmarks import diffusion_ab

    cfg = load([*diffusion_ab.run_args("cup-catch", variant, 1, 30_000), f"work_dir={tmp_path}"])
    assert cfg.exp_name == f"{variant}30000"


def test_train_speed_rates_the_learning_phase_only(tmp_path) -> None:
    """Steps/s from the first episode after the seed phase (1,000 steps) and its catch-up
    updates to the last episode, read from the run's own train.csv: the fast random seed
    phase, the one-off catch-up and Ray's start-up are left out."""
    from benchmarks.train_speed import MAKE_TRAIN, learning_rate

    csv_path = tmp_path / "train.csv"
    rows = [(500, 30.0), (1000, 31.0), (1500, 81.0), (2000, 131.0), (2500, 181.0)]
    csv_path.write_text(
        "step,episode,elapsed_s\n" + "".join(f"{s},{i},{t}\n" for i, (s, t) in enumerate(rows))
    )
    assert learning_rate(csv_path) == pytest.approx(1000 / 100.0)
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    budget = makefile.split("TRAIN_ARGS ?=")[1].split("\nARGS")[0]
    assert all(
        arg in budget.split() for arg in MAKE_TRAIN
    )  # the benchmark runs make train's budget


def test_train_speed_pins_make_train_as_it_was_before_the_speed_work(tmp_path) -> None:
    """The "pinned" variant unpacks commit PINNED and runs that commit's own `make train`
    budget: its Makefile's TRAIN_ARGS are exactly PINNED_ARGS (plus steps)."""
    import subprocess

    from benchmarks.train_speed import PINNED, PINNED_ARGS, unpack

    repo = Path(__file__).resolve().parents[1]
    known = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{PINNED}^{{commit}}"])
    if known.returncode != 0:
        pytest.skip(f"commit {PINNED} is not in this clone (shallow?)")
    src = unpack(PINNED, tmp_path / "src")
    assert (src / "ldmpc" / "cli.py").exists() and not (src / "ldmpc" / "precision.py").exists()
    budget = (src / "Makefile").read_text().split("TRAIN_ARGS ?=")[1].split("\nARGS")[0]
    assert sorted(budget.replace("\\", " ").split()) == sorted([*PINNED_ARGS, "steps=100000"])


def test_precision_ab_scores_the_late_evals_and_checks_the_seed_spread(tmp_path) -> None:
    """Synthetic eval.csv files in: per-seed scores over [from, steps], the fp32 mean and
    whether the fast mean lies inside fp32's seed spread out; an unfinished run has no score."""
    from benchmarks.precision_ab import run_dir, summary_rows

    returns = {("fp32-eager", 1): 800.0, ("fp32-eager", 2): 700.0, ("bf16-compile", 1): 760.0}
    for (variant, seed), value in returns.items():
        path = run_dir(tmp_path, "cartpole-swingup", seed, variant)
        path.mkdir(parents=True)
        rows = [(0, 0.0), (1000, 10.0), (2000, value), (3000, value + 20)]
        path.joinpath("eval.csv").write_text(
            "step,episode_reward\n" + "".join(f"{s},{r}\n" for s, r in rows)
        )
    half = run_dir(tmp_path, "cartpole-swingup", 2, "bf16-compile")  # not at its last eval yet
    half.mkdir(parents=True)
    half.joinpath("eval.csv").write_text("step,episode_reward\n0,0\n2000,900\n")
    ref, fast = summary_rows(tmp_path, ["cartpole-swingup"], [1, 2], 2000, 3000)
    assert ref["mean"] == pytest.approx(760.0)  # (810 + 710) / 2
    assert fast["per_seed"] == "770.0 nan" and fast["mean"] == pytest.approx(770.0)
    assert fast["within_fp32_spread"] == "yes" and fast["vs_fp32"] == pytest.approx(770 / 760)


def _soak_samples(rss: list[float], fds: list[int], step_files: int = 3) -> list[dict]:
    return [
        {"elapsed_s": 60.0 * i, "rss_mb": r, "fds": f, "threads": 50, "processes": 8,
         "step_files": step_files, "run_dir_mb": 10.0, "checkpoints_mb": 6.0, "replay_mb": 4.0}
        for i, (r, f) in enumerate(zip(rss, fds, strict=True))
    ]  # fmt: skip


def test_soak_verdicts_judge_the_run_after_its_warm_up() -> None:
    from benchmarks.soak import verdicts

    def passed(samples: list[dict]) -> dict[str, bool]:
        return {r["check"]: r["pass"] for r in verdicts(samples, slack=8)}

    # the first 10 % (warm-up) may grow freely; after it, 1000 -> 1040 MB is +4 %: a pass
    flat = passed(_soak_samples([100, *[1000] * 9, 1040], [10, *[30] * 10]))
    assert flat["RSS growth after warm-up"] and flat["fds flat"]
    creep = passed(_soak_samples([1000] * 10 + [1060], [30] * 10 + [39]))
    assert not creep["RSS growth after warm-up"] and not creep["fds flat"]
    assert not passed(_soak_samples([1000] * 5, [30] * 5, step_files=4))["checkpoint retention"]


def test_fractions_of_the_gemm_rate_count_matmul_flops_and_measure_a_rate() -> None:
    """update_rate / planner_batch divide counted FLOPs by time and by a GEMM rate measured in
    the same run: the counter gives 2mkn per matmul, the rate is a positive GFLOP/s."""
    import torch

    from benchmarks.common import counted_flops, gemm_gflops

    a, b = torch.randn(64, 32), torch.randn(32, 16)
    assert counted_flops(lambda: (a @ b).relu()) == 2 * 64 * 32 * 16
    assert gemm_gflops(64, 32, torch.device("cpu"), torch.float32, repeats=2) > 0
