"""The configuration's JSON schema, its one-line errors and ``ConfigError``: the bottom of
``settings`` (it imports nothing of the package).
"""

from __future__ import annotations

import os
from pathlib import Path

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """A configuration mistake; the message names the key and what is allowed."""


def expand_home(config: dict) -> None:
    """``~`` in the results folder and in dataset, mask and weights paths means the home folder,
    as in a shell (it would otherwise become a folder named ``~`` in the working folder)."""
    config["results"] = os.path.expanduser(config["results"])
    for ds in config["datasets"].values():
        for key in ("path", "masks"):
            if isinstance(ds.get(key), str):
                ds[key] = os.path.expanduser(ds[key])
    for model in config["models"].values():
        if model.get("weights") not in (None, "hub", "none", "bundled"):
            model["weights"] = os.path.expanduser(model["weights"])


def explain(error) -> str:
    """One line for a jsonschema ValidationError: the key, the problem, what is allowed."""
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = ""
    if "enum" in schema:
        allowed = f"; allowed: {', '.join(map(str, schema['enum']))}"
    elif error.validator == "additionalProperties":
        allowed = f"; allowed keys here: {', '.join(sorted(schema.get('properties', {})))}"
    elif error.validator == "required" and not error.absolute_path:
        # a partial file: nothing is merged from the demo's config.yaml, whatever the defaults say
        return (f"invalid config at '(top level)': {error.message}. A config file holds every dataset and model "
                "of its run itself: nothing is taken from the demo's config.yaml (defaults fill only the other "
                "options). Add the section; README's 'Your own data and models' has an example")
    elif "description" in schema:
        allowed = f" ({schema['description'].strip()})"
    return f"invalid config at '{key}': {error.message}{allowed}"
