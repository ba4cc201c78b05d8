"""ldmpc/envs"""
