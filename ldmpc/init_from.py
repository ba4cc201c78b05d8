"""`init_from=<file>`: start a run's world model from another model (ldmpc's or TD-MPC2's).

Finetuning is what TD-MPC2's users ask for most and what it never released code for. The rule
is simple and printed at start: every tensor of this run's world model whose name and shape
the source also has is copied (TD-MPC2 files are renamed first, `ldmpc.tdmpc2_models`); every
other tensor keeps this run's fresh initialisation. So the same task loads everything; a
related task with other observation or action sizes starts its encoder's first layer (other
observation width) or the layers that read or write actions (other action width) fresh and
keeps the rest. The EMA target Q is taken from the source when it is copied, else from the
loaded live Q. Replay, optimizer state, the Q scale and the step counter start fresh: this is
a new run, not a resume. A multitask source and target must have the same task set (its task
embedding and action masks index tasks); a new task for a multitask model is not supported yet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ldmpc.errors import UserError

if TYPE_CHECKING:
    from ldmpc.config import Config


def source_weights(path: str, cfg: Config) -> tuple[dict[str, torch.Tensor], str]:
    """(ldmpc-named world-model tensors, what the file is) of an ldmpc checkpoint or a
    TD-MPC2 model file; unreadable or foreign files are one UserError."""
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.tasks import TASK_SETS
    from ldmpc.tdmpc2_models import infer_shapes, read_tdmpc2_file, to_ldmpc_state

    tdmpc2 = read_tdmpc2_file(path)
    if tdmpc2 is not None:
        shapes = infer_shapes(tdmpc2)
        tasks = len(cfg.tasks) if cfg.multitask else 0
        if shapes.num_tasks != tasks:
            have = f"a {shapes.num_tasks}-task" if shapes.num_tasks else "a single-task"
            raise UserError(
                f"init_from={path}: {have} TD-MPC2 model cannot start a task={cfg.task} run "
                "(multitask models start runs of their own task set only)"
            )
        actions = list(cfg.action_dims) if shapes.num_tasks else None
        return to_ldmpc_state(tdmpc2, actions), shapes.describe()
    ckpt = load_checkpoint(path)  # corrupt, unsafe or foreign files: one line from here
    saved_task = ckpt["fingerprint"].get("task")
    if saved_task != cfg.task and (cfg.multitask or saved_task in TASK_SETS):
        raise UserError(
            f"init_from={path}: a model of task={saved_task} cannot start a task={cfg.task} "
            "run (multitask models start runs of their own task set only)"
        )
    return ckpt["payload"]["agent"]["model"], f"ldmpc checkpoint of task={saved_task}"


def load_init_weights(model: torch.nn.Module, cfg: Config) -> str:
    """Copy what fits from `cfg.init_from` into `model` (see the module docstring); returns
    one line saying what was loaded and what starts fresh."""
    source, what = source_weights(str(cfg.init_from), cfg)
    return load_matching(model, source, what, str(cfg.init_from))


def load_matching(
    model: torch.nn.Module, source: dict[str, torch.Tensor], what: str, path: str
) -> str:
    """Copy the tensors of `source` (read by `source_weights` from `path`) that fit `model` by
    name and shape; the line saying what was loaded and what starts fresh."""
    own = model.state_dict()
    loaded = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
    if not loaded:
        raise UserError(f"init_from={path}: no tensor of it fits this model ({what})")
    # the target Q follows the live Q where the source has none for a copied head layer
    for key in list(loaded):
        if key.startswith("_Qs."):
            target = "_target_Qs_" + key[len("_Qs.") :]
            if target in own and target not in loaded:
                loaded[target] = loaded[key]
    own.update({k: v.to(own[k].dtype) for k, v in loaded.items()})
    model.load_state_dict(own)
    fresh = sorted({_part(k) for k in own if k not in loaded and not k.startswith("_target")})
    kept = f"{len(loaded)} of {len(own)} tensors"
    return f"init_from: {what}: loaded {kept}" + (f"; fresh: {', '.join(fresh)}" if fresh else "")


def _part(key: str) -> str:
    """A readable name of the layer a state-dict key belongs to (`_encoder.0`, `_Qs.w0`)."""
    head, _, rest = key.partition(".")
    if head == "_Qs":
        return f"_Qs.layer{rest.lstrip('wbgeta')}"
    return f"{head}.{rest.split('.')[0]}" if rest else head
