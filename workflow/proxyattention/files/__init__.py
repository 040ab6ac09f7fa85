"""Files: atomic writes, where every file lives, the arrays stages hand each other, what made
a result, and a study's packed per-image results.
"""
