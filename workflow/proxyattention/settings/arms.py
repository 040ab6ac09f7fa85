"""Arms: the named variants a run compares, what kind each is, and which work they share.

``arms:`` is a list of kinds (``[baseline, duplicate, proxy, random_erase]``, the
controls matching the one ``proxy`` arm) or a mapping from an arm's name to its kind
and any ``proxy:`` keys it overrides::

    arms:
      baseline: {kind: baseline}
      gradcam: {kind: proxy}
      eigencam: {kind: proxy, cam_method: eigencam}
      gradcam_random: {kind: random_erase, matches: gradcam}
      erasing: {kind: erasing, erasing: {p: 0.5}}

A control (``duplicate``, ``random_erase``) that ``matches`` a proxy arm uses that
arm's settings (selection, CAMs, threshold, fill), with its own overrides on top;
without ``matches`` it uses the ``proxy:`` section. An ``erasing`` arm adds no images: it trains on
the originals as baseline does, each randomly erased in every epoch of its cycles as torchvision's
``RandomErasing`` does (data/random_erasing.py): a positive control for the erasing arms.

Which arm's job a shared stage is (its *owner*) is decided from the stages' settings:
see ``stage_settings.owner``.

Work that does not differ is done once: cycle 1 of every arm starts from the one
shared finetune, so arms whose selection settings are equal share one
``find_misclassified`` job, and arms whose selection and CAM settings are equal
share one ``compute_cams`` job. The shared job runs in the folder of the first
such arm (proxy arms first, then the config's order): its *owner*.
"""

from __future__ import annotations

import copy

KINDS = ("baseline", "duplicate", "proxy", "random_erase", "erasing")
ADDING_KINDS = ("duplicate", "proxy", "random_erase")  # kinds that add the selected images to training
CONTROLS = {"proxy": None, "random_erase": "random", "duplicate": "duplicate"}  # mask_and_save's control
PROXY_KEYS = ("cam_method", "fast_path", "target", "empty_maps", "selection", "threshold", "fill", "random_erase",
              "maps_source")
TRAINING_PASS = "training_pass"


def normalise(arms) -> dict:
    """The mapping form of ``arms``: the list form names kinds, its controls match the proxy arm."""
    if isinstance(arms, dict):
        return {name: dict(spec) for name, spec in arms.items()}
    return {kind: ({"kind": kind, "matches": "proxy"} if kind in ("duplicate", "random_erase") and "proxy" in arms
                   else {"kind": kind}) for kind in arms}


def erasing_of(config: dict, arm: str | None) -> dict | None:
    """The random erasing an ``erasing`` arm applies to every training image in every epoch of its
    cycles (torchvision's defaults filled in), None for every other arm."""
    from ..data.random_erasing import settings_of

    spec = config["arms"].get(arm) if arm else None
    return settings_of(spec.get("erasing", {})) if spec and spec["kind"] == "erasing" else None


def kind_of(config: dict, arm: str) -> str:
    return "finetune" if arm == "finetune" else config["arms"][arm]["kind"]


def names_of_kind(config: dict, *kinds: str) -> list[str]:
    return [name for name, spec in config["arms"].items() if spec["kind"] in kinds]


def overrides(config: dict, arm: str) -> dict:
    """The proxy keys an arm sets: a control's matched arm's first, then its own."""
    spec = config["arms"].get(arm, {})
    own = {k: v for k, v in spec.items() if k in PROXY_KEYS}
    matched = spec.get("matches")
    return _merge(overrides(config, matched), own) if matched else own


def proxy_settings(config: dict, arm: str | None) -> dict:
    """The whole ``proxy`` section as the arm sees it (the global one for baseline and finetune)."""
    merged = copy.deepcopy(config["proxy"])
    if arm and arm in config["arms"]:
        merged = _merge(merged, overrides(config, arm))
    return merged


def cam_method(config: dict, model: str, arm: str | None = None) -> str:
    """The arm's own cam_method, else the model's (unless inherit), else the proxy section's."""
    if arm and arm in config["arms"] and "cam_method" in overrides(config, arm):
        return overrides(config, arm)["cam_method"]
    method = config["models"][model].get("cam_method", "inherit")
    return config["proxy"]["cam_method"] if method == "inherit" else method


# What a control may set differently from the arm whose images it shares: how it paints them.
OWN_CONTROL_KEYS = ("fill", "random_erase")


def shares_images(config: dict, control: str, arm: str) -> bool:
    """Whether the duplicate or random_erase arm ``control`` adds the images ``arm`` adds: it
    ``matches`` that arm, or matches none and selects and explains as it does (the proxy settings
    but fill equal). Without the config's proxy section (a summary read alone) a control that
    matches none is taken to share them, as before this check."""
    matched = config["arms"][control].get("matches")
    if matched is not None:
        return matched == arm
    if "proxy" not in config:
        return True
    strip = lambda s: {k: v for k, v in s.items() if k not in OWN_CONTROL_KEYS}  # noqa: E731
    return strip(proxy_settings(config, control)) == strip(proxy_settings(config, arm))


def comparisons(config: dict) -> list[tuple[str, str]]:
    """(arm, other) pairs whose paired differences the tables report: every arm against each
    baseline arm, and each proxy arm against the controls that add its images (shares_images); and
    the pairs ``report.comparisons`` asks for by name. A control is never judged against a proxy
    arm that adds other images (unmatched_pairs lists those)."""
    arms = config["arms"]
    pairs = [(a, b) for b in names_of_kind(config, "baseline") for a in arms if a != b]
    for p in names_of_kind(config, "proxy"):
        for kind in ("duplicate", "random_erase"):
            pairs += [(p, c) for c in names_of_kind(config, kind) if shares_images(config, c, p)]
    for arm, other in config.get("report", {}).get("comparisons", []):  # report.comparisons: asked for by name
        if (arm, other) not in pairs:
            pairs.append((arm, other))
    return pairs


def unmatched_pairs(config: dict) -> list[tuple[str, str]]:
    """(proxy arm, control) pairs left out of comparisons because a control that matches no arm
    adds other images than that arm (another selection, CAM or threshold), unless
    report.comparisons asks for them by name. (A control that matches another arm is that arm's.)"""
    asked = {tuple(p) for p in config.get("report", {}).get("comparisons", [])}
    return [(p, c) for p in names_of_kind(config, "proxy") for kind in ("duplicate", "random_erase")
            for c in names_of_kind(config, kind) if config["arms"][c].get("matches") is None
            and not shares_images(config, c, p) and (p, c) not in asked]


def random_control(config: dict, arm: str) -> str | None:
    """The random_erase arm that is ``arm``'s control (matches it, or matches nothing while
    ``arm`` is the proxy section's own arm ``proxy``), if the config has one."""
    for name in names_of_kind(config, "random_erase"):
        matched = config["arms"][name].get("matches")
        if matched == arm or (matched is None and arm == "proxy"):
            return name
    return None


def selects_from_record(config: dict, arm: str) -> bool:
    """Whether ``arm`` selects its images from the previous training job's record."""
    return config["arms"][arm]["kind"] in ADDING_KINDS and \
        proxy_settings(config, arm)["selection"].get("source") == TRAINING_PASS


def maps_from_record(config: dict, arm: str) -> bool:
    """Whether ``arm`` takes its maps from the previous training job's record."""
    return config["arms"][arm]["kind"] in ADDING_KINDS and proxy_settings(config, arm).get("maps_source") == TRAINING_PASS


def reads_record(config: dict, arm: str) -> bool:
    return selects_from_record(config, arm) or maps_from_record(config, arm)


def record_spec(config: dict, model: str, arm: str, cycle: int) -> dict | None:
    """What the training job of (``model``, ``arm``, ``cycle``) records in its last epoch for the
    arms whose next cycle reads it (the finetune's for every arm that reads a record; a retrain's
    for its own arm), or None when nothing reads it (the last cycle's, or no such arm)."""
    if int(cycle) >= config["cycles"]:
        return None
    readers = [a for a in config["arms"] if reads_record(config, a)] if arm == "finetune" else \
        ([arm] if arm in config["arms"] and reads_record(config, arm) else [])
    if not readers:
        return None
    mapping = [a for a in readers if maps_from_record(config, a)]
    if not mapping:
        return {"maps": None, "layer": None, "target": "label"}
    method = cam_method(config, model, mapping[0])
    return {"maps": method, "layer": config["models"][model]["target_layer"] if method == "gradcam_loss" else None,
            "target": proxy_settings(config, mapping[0])["target"]}


def check_training_pass(config: dict) -> None:
    """Refuse training-pass settings that cannot be recorded, naming the arm and what is supported."""
    from ..models.cams import TRAINING_PASS_METHODS
    from .schema import ConfigError

    for name in config["arms"]:
        proxy = proxy_settings(config, name)
        sel = proxy["selection"]
        if sel.get("rule") == "hardest" and sel.get("max_fraction") is None and sel.get("max_count") is None \
                and config["arms"][name]["kind"] in ADDING_KINDS:
            key = f"arms.{name}.selection" if "selection" in overrides(config, name) else "proxy.selection"
            raise ConfigError(f"{key}.rule: hardest keeps the highest-loss training images up to a cap, and it has "
                              "none: set max_fraction (e.g. 0.1, of the training images) or max_count")
        if sel.get("order") == "met" and sel.get("source") != TRAINING_PASS:
            raise ConfigError(f"arms.{name}: selection.order: met is the order a training epoch met the images; it "
                              "needs selection.source: training_pass (a separate pass meets them in file order)")
        if proxy.get("maps_source") != TRAINING_PASS or config["arms"][name]["kind"] not in ADDING_KINDS:
            continue
        for model in config["models"]:
            method = cam_method(config, model, name)
            if method not in TRAINING_PASS_METHODS:
                raise ConfigError(f"arms.{name}: maps_source: training_pass records only the methods "
                                  f"{', '.join(TRAINING_PASS_METHODS)}; cam_method for model {model} is '{method}' "
                                  "(set cam_method: cam or gradcam_loss, or maps_source: separate_pass)")
            if method == "gradcam_loss" and proxy["target"] != "label":
                raise ConfigError(f"arms.{name}: gradcam_loss from the training pass explains the label (its loss); "
                                  "set target: label")
        if proxy["empty_maps"] == "explain_prediction":
            raise ConfigError(f"arms.{name}: empty_maps: explain_prediction needs a second map the training pass "
                              "did not record; with maps_source: training_pass use skip or keep")
    for model in config["models"]:
        specs = {(cam_method(config, model, a), proxy_settings(config, a)["target"]): a
                 for a in config["arms"] if maps_from_record(config, a)}
        if len(specs) > 1:
            listed = "; ".join(f"{a}: {m}, target {t}" for (m, t), a in specs.items())
            raise ConfigError(f"arms: the shared finetune of model {model} records one kind of map, but the arms "
                              f"that read it ask for different ones ({listed}); give them the same cam_method "
                              "and target")


def check(config: dict) -> None:
    """Refuse a wrong kind, key or ``matches`` in ``arms``, naming the arm; and settings the
    ``proxy`` schema would refuse, as the arm merges them."""
    from .schema import SCHEMA, ConfigError, explain

    for name, spec in config["arms"].items():
        if name == "finetune":
            raise ConfigError("arms: 'finetune' is the shared cycle 0 of every arm; name the arm otherwise")
        if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
            raise ConfigError(f"arms.{name}.kind: give one of {', '.join(KINDS)} (e.g. {{kind: proxy}})")
        if spec["kind"] == "erasing":
            _check_erasing(name, spec)
            continue
        unknown = sorted(set(spec) - {"kind", "matches", *PROXY_KEYS})
        if unknown:
            raise ConfigError(f"arms.{name}: unknown key(s) {', '.join(unknown)}; allowed: kind, matches, "
                              f"and the proxy keys {', '.join(PROXY_KEYS)}"
                              + (" (erasing belongs to an arm of kind erasing)" if "erasing" in unknown else ""))
        if spec["kind"] == "baseline" and set(spec) - {"kind"}:
            raise ConfigError(f"arms.{name}: a baseline arm adds no images, so it takes no settings but kind")
        matched = spec.get("matches")
        if matched is not None:
            if spec["kind"] not in ("duplicate", "random_erase"):
                raise ConfigError(f"arms.{name}.matches: only duplicate and random_erase arms match a proxy arm")
            if config["arms"].get(matched, {}).get("kind") != "proxy":
                proxies = names_of_kind(config, "proxy")
                raise ConfigError(f"arms.{name}.matches: '{matched}' is not a proxy arm of this config "
                                  f"(its proxy arms: {', '.join(proxies) or 'none'})")
    import jsonschema
    import yaml

    schema = yaml.safe_load(SCHEMA.read_text())["properties"]["proxy"]
    validator = jsonschema.Draft202012Validator(schema)
    for name in names_of_kind(config, *ADDING_KINDS):
        error = jsonschema.exceptions.best_match(validator.iter_errors(proxy_settings(config, name)))
        if error is not None:
            raise ConfigError(f"arms.{name}: {explain(error).replace('invalid config at ', 'setting ')}")
    check_training_pass(config)
    for i, pair in enumerate(config.get("report", {}).get("comparisons", [])):
        for name in pair:
            if name not in config["arms"]:
                raise ConfigError(f"report.comparisons[{i}]: '{name}' is not an arm of this config (its arms: "
                                  f"{', '.join(config['arms'])})")
        if pair[0] == pair[1]:
            raise ConfigError(f"report.comparisons[{i}]: compares {pair[0]} with itself; name two arms")


def _check_erasing(name: str, spec: dict) -> None:
    """An ``erasing`` arm: only ``erasing: {p, scale, ratio}``, each as torchvision accepts it."""
    from .schema import ConfigError

    unknown = sorted(set(spec) - {"kind", "erasing"})
    if unknown:
        raise ConfigError(f"arms.{name}: an erasing arm adds no images; it takes only kind and erasing "
                          f"(p, scale, ratio), not {', '.join(unknown)}")
    erasing = spec.get("erasing", {})
    if not isinstance(erasing, dict) or set(erasing) - {"p", "scale", "ratio"}:
        raise ConfigError(f"arms.{name}.erasing: give a mapping of p, scale and ratio (torchvision RandomErasing's "
                          "defaults: {p: 0.5, scale: [0.02, 0.33], ratio: [0.3, 3.3]})")
    from ..data.random_erasing import DEFAULTS

    p = erasing.get("p", DEFAULTS["p"])
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ConfigError(f"arms.{name}.erasing.p: a probability from 0 to 1 (got {p!r})")
    for key, low, high in (("scale", 0, 1), ("ratio", 0, None)):
        pair = erasing.get(key, DEFAULTS[key])
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
                and low < pair[0] <= pair[1] and (high is None or pair[1] < high)):
            bounds = "0 < a <= b < 1 (fractions of the image's area)" if key == "scale" else \
                "0 < a <= b (height over width)"
            raise ConfigError(f"arms.{name}.erasing.{key}: a pair [a, b] with {bounds} (got {pair!r})")


def _merge(base: dict, extra: dict) -> dict:
    """``base`` updated by ``extra``, nested mappings merged key by key."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out
