"""Proxy Attention: saliency maps as a cheap proxy for attention in CNNs.

Each stage of the workflow is one module of ``stages/`` with one function taking
plain arguments (paths and a settings mapping) and writing files; the Snakemake
rules and the ``proxyattention`` command line both call those functions. The
helpers they call sit beside it, by what they hold: ``settings`` (the config),
``sources``, ``data``, ``models`` (and CAMs), ``training``, ``analysis``,
``runtime`` and ``files``; imports run one way (tests/test_imports.py).
"""

__version__ = "0.1.0"
