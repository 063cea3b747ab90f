# Checkpoints are fetched on the submit host (localrules): cluster compute
# nodes are often offline. Each file is sha256-checked and renamed into place
# only when complete.

localrules:
    download_weights,


rule download_weights:
    output:
        weights=f"{WEIGHTS_DIR}/{{model}}/{{filename}}",
    params:
        overrides=lambda wildcards: model_overrides(wildcards.model),
        # <weights_dir>/<model>/<filename>
        weights_dir=lambda wildcards, output: os.path.dirname(os.path.dirname(output.weights)),
    log:
        f"logs/weights/{{model}}/{{filename}}.log",
    retries: 2
    conda:
        "../envs/torch.yaml"
    script:
        "../scripts/download_weights.py"


rule weights:
    input:
        weights_files(),
