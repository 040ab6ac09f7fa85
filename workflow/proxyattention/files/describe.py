"""The report's description of a run, in words, from the config that ran: how each model started,
what each arm added and how it painted it, which question the figures can speak to. Written by
``aggregate`` beside the answers (``tables/compared.md``) and shown on the report's front page, so
no sentence there describes another run than the one made.
"""

from __future__ import annotations

from ..settings.arms import erasing_of, proxy_settings


def _count(k: int, noun: str) -> str:
    return f"{k} {noun}{'' if k == 1 else 's'}"


def model_start(spec: dict) -> str:
    """How a model's cycle 0 starts, from its ``weights``."""
    weights = spec["weights"]
    if weights in ("bundled", "hub"):
        source = "the bundled file" if weights == "bundled" else "timm's hub"
        return f"finetuned from ImageNet weights ({source})"
    if weights == "none":
        return "trained from random initialisation (weights: none, no pretraining)"
    return f"finetuned from the weights in {weights}"


def selection_words(selection: dict) -> str:
    """Which training images a cycle selects, in words."""
    below = selection.get("confidence_below", 0.5)
    rule = {"misclassified": "the training images the previous model got wrong",
            "low_confidence": f"the training images whose true class the previous model gave a probability below "
                              f"{below:g}",
            "both": f"the training images the previous model got wrong or gave their true class a probability below "
                    f"{below:g}",
            "hardest": "the training images with the highest loss under the previous model (its misclassified "
                       "first, then the least confident right ones)"}[selection.get("rule", "misclassified")]
    caps = []
    if selection.get("max_fraction") is not None:
        caps.append(f"{100 * selection['max_fraction']:g}% of "
                    + ("the training images" if selection.get("rule") == "hardest" else "them"))
    if selection.get("max_count") is not None:
        caps.append(f"at most {selection['max_count']}")
    if caps:
        first = "the first met" if selection.get("order") == "met" else "the highest loss first"
        rule += f" ({', '.join(caps)}, {first})"
    if selection.get("source") == "training_pass":
        rule += ", as the previous training job's last epoch saw them (its recorded pass, no extra one)"
    return rule


def painting_words(settings: dict) -> str:
    """Which pixels a proxy arm changes and how."""
    threshold, fill = settings["threshold"], settings["fill"]
    where = {"quantile": f"the pixels above the {threshold['value']:g} quantile of each map (the top "
                         f"{100 * (1 - threshold['value']):g}%)",
             "value": f"the pixels whose normalised map value is above {threshold['value']:g}",
             "topk_area": f"the {100 * (1 - threshold['value']):g}% of pixels with the highest map values"}[
        threshold["mode"]]
    how = {"black": "painted black", "mean": "painted the image's mean colour", "blur": "blurred",
           "noise": "replaced by noise",
           "blend": f"dimmed to (1 - {fill.get('blend_lambda', 0.4):g} x map) of their value"}[fill["mode"]]
    target = "the predicted class" if settings.get("target") == "prediction" else "the true class"
    source = " (the previous training job's recorded maps)" if settings.get("maps_source") == "training_pass" else ""
    return f"{where} of the {settings['cam_method']} map of {target}{source} {how}"


def arm_words(config: dict, name: str) -> str:
    """One list item's text for arm ``name``."""
    arm = config["arms"][name]
    kind = arm["kind"]
    settings = proxy_settings(config, name)
    if kind == "baseline":
        return "the original training images only"
    if kind == "erasing":
        e = erasing_of(config, name)
        return (f"the original training images only, each randomly erased in every epoch of the cycles with "
                f"probability {e['p']:g} (a rectangle of {e['scale'][0]:.0%} to {e['scale'][1]:.0%} of the image, "
                f"height/width {e['ratio'][0]:g} to {e['ratio'][1]:g}, set to the model's mean colour), as "
                "torchvision's RandomErasing does: a positive control")
    selected = selection_words(settings["selection"])
    if kind == "duplicate":
        return f"{selected}, added unchanged (more training on those images, nothing erased)"
    if kind == "proxy":
        return f"{selected}, with {painting_words(settings)}, added to the originals"
    shape = "the map's own mask shape" if settings.get("random_erase", {}).get("shape") == "cam_shape" \
        else "a rectangle of the same area"
    fill = settings["fill"]["mode"]
    return f"{selected}, with {shape} changed at a random place ({fill} fill), added to the originals"


def compared(config: dict) -> str:
    """The front page's "What was compared" paragraph and arm list (reStructuredText that reads as
    Markdown too), from ``config``."""
    from ..models.build import transformer

    models = config["models"]
    starts = "; ".join(f"{name} {model_start(spec)}" for name, spec in models.items())
    lines = [f"**What was compared.** Each dataset and model trains once per seed as cycle 0 ({starts}), then "
             f"{_count(config['cycles'], 'more cycle')} under each arm, seeds "
             f"{', '.join(map(str, config['seeds']))}. The arms:", ""]
    for name, arm in config["arms"].items():
        label = arm["kind"] + (f", control of {arm['matches']}" if arm.get("matches") else "")
        lines += [f"- **{name}** ({label}): {arm_words(config, name)}.", ""]
    vits = [name for name, spec in models.items() if transformer(spec["timm_name"])]
    cnns = [name for name in models if name not in vits]
    if vits and cnns:
        question2 = (f"Question 2 (does it give a CNN some of what attention gives a ViT?) reads the CNNs "
                     f"({', '.join(cnns)}) beside the ViT ({', '.join(vits)}).")
    elif vits:
        question2 = "Every model here is a ViT: question 2 needs a CNN beside it."
    else:
        question2 = ("This run has no ViT: question 2's measures describe the CNNs, with no attention model to "
                     "compare them with.")
    lines += [question2, ""]
    return "\n".join(lines)
