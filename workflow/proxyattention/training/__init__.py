"""Training helpers: the epoch loop, learning-rate schedules and the optimizer's saved state.
"""
