"""The workflow's stages, one module per Snakemake rule (``finetune`` and ``retrain`` share
``train``; ``examples`` is drawn by ``figures``). Each is a recipe: one function taking plain
arguments (paths and a settings mapping) that reads its inputs, calls the helpers of the other
subpackages and writes its outputs atomically. The rules' scripts and the command line call
these functions and nothing else.

In the order the pipeline runs them: prepare, prepare_masks, train (finetune), find_misclassified,
compute_cams, mask_and_save, train (retrain), evaluate, decide_cycle, aggregate, figures.
"""
