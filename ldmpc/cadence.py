"""When periodic work is due: evaluations and checkpoints at exact multiples of their period.

Shared by the online loop (`actors.online`) and the offline one (`ldmpc.offline`); TD-MPC2
evaluates and checkpoints at exact step multiples, and a resumed run must keep that grid.
"""

from __future__ import annotations

from collections.abc import Callable


class Every:
    """Fires once each time the step reaches the next multiple of `every` (never if 0)."""

    NEVER = 1 << 62

    def __init__(self, every: int, start: int, fire_at_start: bool) -> None:
        self.every = every
        if every <= 0:
            self.next_at = self.NEVER
        else:
            self.next_at = start if fire_at_start else (start // every + 1) * every

    def due(self, step: int) -> bool:
        if step < self.next_at:
            return False
        self.next_at = (step // self.every + 1) * self.every
        return True


def eval_cadence(every: int, start: int, missing_eval_since: Callable[[int], bool]) -> Every:
    """When a run evaluates: each multiple of `every`, step 0 included (as TD-MPC2).

    A resumed run evaluates first when the log has no evaluation since the last multiple of
    `every` at or before its start: a stop before or during that evaluation (or a checkpoint
    written at the eval step before the eval) would otherwise leave a hole in the curve. The
    run's step may have passed the multiple (a vector step of several envs), so the check is
    "none since", not "none at".
    """
    owed = every > 0 and start > 0 and missing_eval_since(start - start % every)
    return Every(every, start, fire_at_start=start == 0 or owed)
