"""The Ray layer, learning side: the RLlib TorchLearner that owns the optimizers and runs the
core's one update (`ldmpc.update.Update`). Imports the core only (docs/design.md §5)."""
