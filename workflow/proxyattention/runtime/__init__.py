"""Where a stage runs: device and precision, the warm-start server, the glue of Snakemake's
scripts, and the stage's own time.
"""
