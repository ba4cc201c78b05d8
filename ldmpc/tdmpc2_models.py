"""TD-MPC2's own model files (written by its `TDMPC2.save`) read into ldmpc's world model.

TD-MPC2 has published single-task and multitask (mt30, mt80) models; its users cannot finetune
them (no code was released) and its own loader breaks across tensordict versions and checkpoint
layouts. The networks are the same as ldmpc's (docs/design.md §3.1), so a file converts by
renaming keys: no weights change. Three layouts are read:

- `current`: the Q ensemble as stacked tensors `_Qs.params.<layer>.{weight,bias,ln.weight,
  ln.bias}`, its EMA copy `_target_Qs_params.*` (and a duplicate `_detach_Qs_params.*`),
  `log_std_min/dif`, and `_action_masks` when multitask;
- `current` saved under tensordict 0.8 (TD-MPC2's own pin): the same plus `*.__batch_size` and
  `*.__device` entries, which carry no weights;
- `2023` (the public checkpoints): the ensemble as a numbered list `_Qs.params.<n>`, n = 4 *
  layer + {0: weight, 1: bias, 2: ln.weight, 3: ln.bias} (the last layer: weight, bias only),
  `_target_Qs.params.<n>`; no `log_std_*` and no action masks (rebuilt from the task set).

TD-MPC2 stores a linear weight as [out, in] and each Q layer as [heads, out, in]; ldmpc's
`QEnsemble` keeps [heads, in, out] (`torch.addmm` takes it as is), so Q weights are transposed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ldmpc.checkpoint import load_weights_only
from ldmpc.config import MODEL_SIZES
from ldmpc.errors import UserError

if TYPE_CHECKING:
    from ldmpc.config import Config

SUPPORTED = "TD-MPC2's current layout (any tensordict version) and its 2023 release layout"
_Q_PARTS = ("weight", "bias", "ln.weight", "ln.bias")  # per hidden layer, in file order
_Q_NAMES = {"weight": "w", "bias": "b", "ln.weight": "g", "ln.bias": "beta"}  # ldmpc's names


@dataclass(frozen=True)
class Tdmpc2Shapes:
    """What a TD-MPC2 model file says about its config (inferred from tensor shapes)."""

    layout: str
    model_size: int | None  # the preset whose dims match, None if none does
    obs_dim: int  # encoder input without the task embedding (multitask: the padded width)
    action_dim: int
    latent_dim: int
    enc_dim: int
    mlp_dim: int
    num_enc_layers: int
    num_q: int
    num_bins: int
    num_tasks: int  # 0: single task
    task_dim: int

    def describe(self) -> str:
        size = f"model_size={self.model_size}" if self.model_size else "no model_size preset"
        tasks = f"{self.num_tasks} tasks (task_dim {self.task_dim})" if self.num_tasks else "1 task"
        return (
            f"TD-MPC2 model ({self.layout} layout): {size}, {tasks}, obs {self.obs_dim}, "
            f"action {self.action_dim}, latent {self.latent_dim}, {self.num_q} Q heads"
        )


def is_tdmpc2_state(state: Any) -> bool:
    """True for a TD-MPC2 `{"model": state_dict}` payload (or its bare state dict)."""
    model = state.get("model", state) if isinstance(state, dict) else None
    return (
        isinstance(model, dict)
        and any(isinstance(k, str) and k.startswith("_encoder.") for k in model)
        and any(isinstance(k, str) and k.startswith("_Qs.") for k in model)
    )


def model_state(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights of a TD-MPC2 file's payload, without tensordict's metadata entries."""
    model = payload.get("model", payload)
    return {
        k: v
        for k, v in model.items()
        if isinstance(v, torch.Tensor) and not k.rsplit(".", 1)[-1].startswith("__")
    }


def detect_layout(model: dict[str, torch.Tensor]) -> str:
    """'current' or '2023'; anything else is a UserError naming the supported layouts."""
    if any(k.startswith("_dynamics.0.0.") for k in model):
        raise UserError(
            "this TD-MPC2 checkpoint uses an older single-task layout (`_dynamics.0.0.weight`), "
            f"which ldmpc does not read; supported: {SUPPORTED}"
        )
    if "_Qs.params.0.weight" in model:
        return "current"
    if "_Qs.params.0" in model:
        return "2023"
    raise UserError(f"not a TD-MPC2 model this version reads (supported: {SUPPORTED})")


def infer_shapes(model: dict[str, torch.Tensor]) -> Tdmpc2Shapes:
    """Dims of a TD-MPC2 model from its tensors, and the model_size preset they match."""
    try:
        return _infer_shapes(model)
    except (KeyError, IndexError) as err:
        raise UserError(f"a TD-MPC2 model without {err} is incomplete; {SUPPORTED}") from None


def _infer_shapes(model: dict[str, torch.Tensor]) -> Tdmpc2Shapes:
    layout = detect_layout(model)
    enc = sorted(
        int(m.group(1)) for k in model if (m := re.fullmatch(r"_encoder\.state\.(\d+)\.weight", k))
    )
    if not enc:
        raise UserError(f"TD-MPC2 model without a state encoder (`_encoder.state.*`); {SUPPORTED}")
    emb = model.get("_task_emb.weight")
    num_tasks, task_dim = (int(emb.shape[0]), int(emb.shape[1])) if emb is not None else (0, 0)
    latent_dim, mlp_dim = (
        int(model["_dynamics.2.weight"].shape[0]),
        int(model["_pi.0.weight"].shape[0]),
    )
    first_q = model["_Qs.params.0.weight" if layout == "current" else "_Qs.params.0"]
    enc_dim = int(model["_encoder.state.0.weight"].shape[0])
    shapes = dict(
        obs_dim=int(model["_encoder.state.0.weight"].shape[1]) - task_dim,
        action_dim=int(model["_pi.2.weight"].shape[0]) // 2,
        latent_dim=latent_dim,
        enc_dim=enc_dim,
        mlp_dim=mlp_dim,
        num_enc_layers=len(enc),
        num_q=int(first_q.shape[0]),
        num_bins=int(model["_reward.2.weight"].shape[0]),
    )
    preset = next(
        (
            size
            for size, dims in MODEL_SIZES.items()
            if all(shapes[k] == v for k, v in dims.items() if k in shapes)
        ),
        None,
    )
    return Tdmpc2Shapes(layout, preset, **shapes, num_tasks=num_tasks, task_dim=task_dim)


def _q_tensors(model: dict[str, torch.Tensor], prefix: str, layout: str, layers: int) -> dict:
    """{(layer, part): tensor} of one Q ensemble ('live' or 'target') in either layout."""
    out = {}
    for layer in range(layers):
        parts = _Q_PARTS if layer < layers - 1 else _Q_PARTS[:2]
        for j, part in enumerate(parts):
            if layout == "current":
                name = f"{'_Qs.params' if prefix == 'live' else '_target_Qs_params'}.{layer}.{part}"
            else:
                name = f"{'_Qs' if prefix == 'live' else '_target_Qs'}.params.{4 * layer + j}"
            out[(layer, part)] = model[name]
    return out


def to_ldmpc_state(
    model: dict[str, torch.Tensor], action_dims: list[int] | None = None
) -> dict[str, torch.Tensor]:
    """ldmpc `WorldModel.state_dict()` entries for a TD-MPC2 model's weights.

    `action_dims` (per task, multitask only) rebuilds `_action_masks` where the file has none
    (2023 layout)."""
    shapes = infer_shapes(model)
    layout = shapes.layout
    out: dict[str, torch.Tensor] = {}
    for key, value in model.items():
        if key.startswith("_encoder.state."):
            out["_encoder." + key[len("_encoder.state.") :]] = value
        elif key.split(".", 1)[0] in ("_dynamics", "_reward", "_pi", "_task_emb"):
            out[key] = value
    layers = 3  # TD-MPC2's Q: two NormedLinear layers and a Linear output
    for prefix, dest in (("live", "_Qs."), ("target", "_target_Qs_")):
        for (layer, part), value in _q_tensors(model, prefix, layout, layers).items():
            tensor = value.transpose(1, 2) if part == "weight" else value
            out[f"{dest}{_Q_NAMES[part]}{layer}"] = tensor.contiguous()
    if shapes.num_tasks:
        masks = model.get("_action_masks")
        if masks is None:
            if action_dims is None or len(action_dims) != shapes.num_tasks:
                raise UserError(
                    f"this TD-MPC2 multitask model ({shapes.num_tasks} tasks) has no action "
                    "masks: give a task set of that many tasks (e.g. task=mt30)"
                )
            masks = torch.zeros(shapes.num_tasks, shapes.action_dim)
            for i, d in enumerate(action_dims):
                masks[i, : int(d)] = 1.0
        out["_action_masks"] = masks.float()
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def log_std_range(model: dict[str, torch.Tensor]) -> tuple[float, float] | None:
    """(log_std_min, log_std_max) stored in a current-layout file, None in the 2023 layout."""
    if "log_std_min" not in model:
        return None
    low = float(model["log_std_min"])
    return low, low + float(model["log_std_dif"])


def read_tdmpc2_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor] | None:
    """The weights of a TD-MPC2 model file (weights_only load), or None when `path` is not
    one, including unreadable files (an ldmpc checkpoint's loader reports those)."""
    try:
        payload = load_weights_only(Path(path), "model file")
    except UserError:
        return None
    return model_state(payload) if is_tdmpc2_state(payload) else None


def import_tdmpc2(src: str, dst: str, cfg: Config) -> str:
    """`ldmpc import tdmpc2`: write an ldmpc checkpoint holding a TD-MPC2 model's weights.

    Nothing is written unless the file is a TD-MPC2 model that fits `cfg` and `dst` is new.
    The running Q scale starts at 1 (TD-MPC2 does not save it either)."""
    from ldmpc.agent import Agent
    from ldmpc.checkpoint import save_checkpoint
    from ldmpc.config import fingerprint

    source, target = Path(src), Path(dst)
    if target.exists():
        raise UserError(f"dst={dst} exists: give a new file (nothing was written)")
    payload = load_weights_only(source, "model file")
    if not is_tdmpc2_state(payload):
        raise UserError(
            f"src={src} is not a TD-MPC2 model file (TD-MPC2 writes {{'model': state_dict}} "
            f"with _encoder.* and _Qs.* keys); ldmpc reads {SUPPORTED}"
        )
    agent = Agent(cfg, "cpu", learn=False)
    what = load_into(agent.model, model_state(payload), cfg)
    try:
        save_checkpoint(
            target,
            {"agent": agent.state_dict()},
            fingerprint=fingerprint(cfg),
            counters={"env_steps": 0, "imported_from": f"TD-MPC2 {source.name}"},
        )
    except OSError as e:
        raise UserError(f"dst={dst}: cannot write it ({e.strerror or e})") from None
    return f"{what}\nwrote {target} (task={cfg.task}, model_size={cfg.model_size})"


def check_fits(shapes: Tdmpc2Shapes, cfg: Config, model: dict[str, torch.Tensor]) -> None:
    """One UserError naming both sides when a TD-MPC2 model cannot serve this config."""
    if cfg.dynamics != "mlp" or cfg.proposal != "policy" or cfg.obs != "state":
        raise UserError(
            "a TD-MPC2 model is a state-observation model with mlp dynamics and a policy prior: "
            f"use dynamics=mlp proposal=policy obs=state (got dynamics={cfg.dynamics} "
            f"proposal={cfg.proposal} obs={cfg.obs})"
        )
    tasks = len(cfg.tasks) if cfg.multitask else 0
    want = {
        "tasks": tasks,
        "obs": int(cfg.obs_shape[0]),
        "action": cfg.action_dim,
        "latent_dim": cfg.latent_dim,
        "enc_dim": cfg.enc_dim,
        "mlp_dim": cfg.mlp_dim,
        "num_enc_layers": cfg.num_enc_layers,
        "num_q": cfg.num_q,
        "num_bins": cfg.num_bins,
        "task_dim": cfg.task_dim if cfg.multitask else 0,
    }
    have = {
        "tasks": shapes.num_tasks,
        "obs": shapes.obs_dim,
        "action": shapes.action_dim,
        "latent_dim": shapes.latent_dim,
        "enc_dim": shapes.enc_dim,
        "mlp_dim": shapes.mlp_dim,
        "num_enc_layers": shapes.num_enc_layers,
        "num_q": shapes.num_q,
        "num_bins": shapes.num_bins,
        "task_dim": shapes.task_dim,
    }
    wrong = [k for k in want if want[k] != have[k]]
    if wrong:
        pairs = ", ".join(f"{k} {have[k]} vs {want[k]}" for k in wrong)
        size = f"model_size={shapes.model_size}" if shapes.model_size else "no size preset"
        raise UserError(
            f"this TD-MPC2 model ({size}) does not fit task={cfg.task} "
            f"model_size={cfg.model_size}: {pairs} (file vs config)"
        )
    stored = log_std_range(model)
    if stored is not None and stored != (cfg.log_std_min, cfg.log_std_max):
        raise UserError(
            f"this TD-MPC2 model bounds log_std to {list(stored)}, the config to "
            f"[{cfg.log_std_min}, {cfg.log_std_max}]: set log_std_min/log_std_max to match"
        )


def load_into(world_model: torch.nn.Module, model: dict[str, torch.Tensor], cfg: Config) -> str:
    """Load a TD-MPC2 model's weights into an ldmpc WorldModel built from `cfg` (checked to
    fit first); returns the one-line description of what was read."""
    shapes = infer_shapes(model)
    check_fits(shapes, cfg, model)
    actions = list(cfg.action_dims) if cfg.multitask else None
    world_model.load_state_dict(to_ldmpc_state(model, actions), strict=True)
    return shapes.describe()


def from_ldmpc_state(state: dict[str, torch.Tensor], cfg: Config) -> dict[str, torch.Tensor]:
    """TD-MPC2's current layout of an ldmpc `WorldModel.state_dict()` (the inverse of
    `to_ldmpc_state`): what TD-MPC2's own `load` takes. TD-MPC2 has no diffusion parts and
    names its pixel encoder differently, so only state-observation TD-MPC2 models export."""
    if cfg.dynamics != "mlp" or cfg.proposal != "policy" or cfg.obs != "state":
        raise UserError(
            "only a TD-MPC2 model (dynamics=mlp proposal=policy obs=state) can be written in "
            f"TD-MPC2's layout; this one has dynamics={cfg.dynamics} proposal={cfg.proposal} "
            f"obs={cfg.obs}"
        )
    out: dict[str, torch.Tensor] = {}
    if cfg.multitask:
        out["_action_masks"] = state["_action_masks"]
    for name, value in (
        ("log_std_min", cfg.log_std_min),
        ("log_std_dif", cfg.log_std_max - cfg.log_std_min),
    ):
        out[name] = torch.tensor(int(value) if float(value).is_integer() else float(value))
    if cfg.multitask:
        out["_task_emb.weight"] = state["_task_emb.weight"]
    for key, value in state.items():
        if key.startswith("_encoder."):
            out["_encoder.state." + key[len("_encoder.") :]] = value
    for net in ("_dynamics", "_reward", "_pi"):
        out.update({k: v for k, v in state.items() if k.split(".", 1)[0] == net})
    names = {v: k for k, v in _Q_NAMES.items()}
    for source, dest in (
        ("_Qs.", "_Qs.params"),
        ("_Qs.", "_detach_Qs_params"),
        ("_target_Qs_", "_target_Qs_params"),
    ):
        for key, value in state.items():
            m = re.fullmatch(re.escape(source) + r"(w|b|g|beta)(\d+)", key)
            if m:
                part = names[m.group(1)]
                tensor = value.transpose(1, 2).contiguous() if part == "weight" else value
                out[f"{dest}.{m.group(2)}.{part}"] = tensor
    return out


def export_tdmpc2(src: str, dst: str, cfg: Config) -> str:
    """`ldmpc export tdmpc2`: write an ldmpc checkpoint's world model as a TD-MPC2 model file
    (`{"model": state_dict}` in its current layout); nothing is written on bad input."""
    from ldmpc.atomic import atomic_writer
    from ldmpc.checkpoint import load_checkpoint
    from ldmpc.config import fingerprint

    target = Path(dst)
    if target.exists():
        raise UserError(f"dst={dst} exists: give a new file (nothing was written)")
    ckpt = load_checkpoint(src, expected_fingerprint=fingerprint(cfg))
    model = from_ldmpc_state(ckpt["payload"]["agent"]["model"], cfg)
    try:
        with atomic_writer(target) as f:
            torch.save({"model": model}, f)
    except OSError as e:
        raise UserError(f"dst={dst}: cannot write it ({e.strerror or e})") from None
    return f"wrote {target}: {infer_shapes(model).describe()}"
