rule train:
    """One run: a grid entry at one sparsity on one task (or one multi-task group) with one seed.

    metrics.json is written last, so its presence means the run finished; a killed run
    rerun by Snakemake resumes from its last checkpoint in the same folder.
    """
    input:
        data=train_data,
        params=best_params,
        prototype=prototype_run,
    output:
        results(f"{layout.run_dir('{task}', '{label}', '{sparsity}', '{seed}')}/{layout.METRICS}"),
    params:
        flags=train_flags,
        tuned=lambda wildcards, input: f"--params {input.params}" if input.params else "",
        prepared=lambda wildcards, input: " ".join(f"--prepared {path}" for path in input.data),
        prototype=lambda wildcards, input: f"--prototype {os.path.dirname(input.prototype)}/{layout.ARTIFACT}" if input.prototype else "",
        run_dir=lambda wildcards, output: os.path.dirname(output[0]),
    log:
        results(layout.job_file(layout.LOGS, "train", layout.run_name('{task}', '{label}', '{sparsity}', '{seed}'))),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "train", layout.run_name('{task}', '{label}', '{sparsity}', '{seed}')))
    conda:
        "../envs/propetl.yaml"
    threads: resource("train", "threads")
    resources:
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        gpu=resource("train", "gpu"),
    shell:
        "propetl train {params.flags} --threads {threads} {params.prepared}"
        " {params.tuned} {params.prototype} --out {params.run_dir} > {log} 2>&1"
