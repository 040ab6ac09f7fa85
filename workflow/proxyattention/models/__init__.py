"""Models and CAMs: timm models with their weights and checkpoints, the CAM methods and
batched prediction.
"""
