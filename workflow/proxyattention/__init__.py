"""Proxy Attention: saliency maps as a cheap proxy for attention in CNNs.

Each stage of the workflow is one module with one function taking plain
arguments (paths and a settings mapping) and writing files; the Snakemake
rules and the ``proxyattention`` command line both call those functions.
"""

__version__ = "0.1.0"
