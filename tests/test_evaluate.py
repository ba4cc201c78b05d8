"""Batched evaluation on a real env: returns and TD-MPC2's success metric (at the final step)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from ldmpc.config import load
from ldmpc.evaluate import evaluate


class ScriptedAgent:
    """Stands in for `Agent` in `evaluate`: acts with Meta-World's scripted reach policy, or
    stops trying after `give_up_at` steps (success then holds mid-episode but not at its end)."""

    device = torch.device("cpu")

    def __init__(self, give_up_at: int | None = None) -> None:
        from metaworld.policies.sawyer_reach_v3_policy import SawyerReachV3Policy

        self.policy = SawyerReachV3Policy()
        self.give_up_at = give_up_at
        self.t = 0

    def act(self, obs: torch.Tensor, state: Any, is_first: Any, eval_mode: bool) -> Any:
        self.t += 1
        actions = np.stack([self.policy.get_action(o) for o in obs.numpy()])
        if self.give_up_at is not None and self.t > self.give_up_at:
            actions[:, :3] = 1.0  # drive the hand away from the goal
        return torch.as_tensor(np.clip(actions, -1, 1)), state


@pytest.mark.filterwarnings("ignore:Constant:UserWarning")  # the scripted policy's own warning
def test_success_is_scored_at_the_final_step_like_tdmpc2(tmp_path: Any) -> None:
    cfg = load(["task=mw-reach", f"work_dir={tmp_path}"])
    solved = evaluate(ScriptedAgent(), cfg, episodes=3, seed=0)
    assert solved["episode_success"] == 1.0
    assert np.isfinite(solved["episode_reward"]) and solved["episode_reward"] > 0
    # reaches the goal by ~step 22 (success 1 then), then leaves it: not a success at the end
    left = evaluate(ScriptedAgent(give_up_at=60), cfg, episodes=3, seed=0)
    assert left["episode_success"] == 0.0
    assert left["episode_reward"] < solved["episode_reward"]
