"""`python -m benchmarks [name ...]`: run the named benchmarks (all when none is named)."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path

SKIP = {"common", "topology", "__main__"}


def available() -> list[str]:
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in SKIP)


def main(argv: list[str]) -> int:
    names = [n for a in argv for n in a.split(",") if n] or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(
            f"unknown benchmark: {', '.join(unknown)} (available: {', '.join(available())})",
            file=sys.stderr,
        )
        return 2
    from ldmpc.errors import UserError
    from ldmpc.mujoco_gl import configure_mujoco_gl

    configure_mujoco_gl()  # at process start, before a benchmark imports dm_control
    for name in names:
        print(f"=== benchmark {name} ===", flush=True)
        try:
            importlib.import_module(f"benchmarks.{name}").main()
        except UserError as err:  # a bad knob (e.g. AB_STEPS=abc): one line, exit 2
            print(f"{name}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
