"""The Ray layer, acting side: the RLlib Algorithm (the training loop), env runners with the
planner RLModule, sharded replay actors, Ray start-up and Tune sweeps. Imports the core
(`ldmpc`) and `learner`; nothing below imports it (docs/design.md §5)."""
