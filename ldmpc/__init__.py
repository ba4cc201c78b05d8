"""ldmpc"""
