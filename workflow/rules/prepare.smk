rule prepare:
    output:
        images=prepared("images.npy"),
        index=prepared("index.csv"),
        classes=prepared("classes.json"),
        skipped=prepared("skipped.csv"),
    wildcard_constraints:
        dataset=one_of(config["datasets"]),
    params:
        dataset=dataset_spec,
    log:
        f"{LOGS}/prepare/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare/{{dataset}}.tsv"
    threads: 8  # decoding threads (OpenCV releases the GIL); capped by --cores
    group:
        prepare_group
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/prepare.py"


rule prepare_masks:
    input:
        index=prepared("index.csv"),
    output:
        masks=prepared("masks.npy"),
    wildcard_constraints:
        dataset=one_of(config["datasets"]),
    params:
        dataset=dataset_spec,
    log:
        f"{LOGS}/prepare_masks/{{dataset}}.log",
    benchmark:
        f"{BENCH}/prepare_masks/{{dataset}}.tsv"
    threads: 8  # decoding threads, as prepare's
    group:
        prepare_group
    conda:
        "../../envs/proxyattention.yaml"
    script:
        "../scripts/prepare_masks.py"
