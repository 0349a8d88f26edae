rule tune_worker:
    """One of tuning.workers concurrent workers of an Optuna study: runs trials until the study
    has n_trials finished or running (the journal is shared, trials are handed out under a lock)."""
    input:
        data=rules.prepare.output,
    output:
        touch(results(layout.worker_marker('{task}', '{label}', '{sparsity}', '{worker}'))),
    params:
        flags=tune_flags,
        journal=results(f"{layout.tuning_dir('{task}', '{label}', '{sparsity}')}/{layout.JOURNAL}"),
    log:
        results(layout.job_file(layout.LOGS, "tune", layout.worker_name(layout.study_name('{task}', '{label}', '{sparsity}'), '{worker}'))),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "tune", layout.worker_name(layout.study_name('{task}', '{label}', '{sparsity}'), '{worker}')))
    conda:
        "../envs/propetl.yaml"
    threads: resource("tune", "threads")
    resources:
        mem_mb=resource("tune", "mem_mb"),
        runtime=resource("tune", "runtime"),
        gpu=resource("tune", "gpu"),
    shell:
        "propetl tune {params.flags} --threads {threads} --prepared {input.data}"
        " --storage {params.journal} > {log} 2>&1"


rule tune:
    """An Optuna study of a grid entry's learning rates on a task's validation split: its trials
    (or, with tuning.workers > 1, those of its workers), then best_params.json.

    The journal is deliberately not an output: Snakemake would delete it before a rerun,
    and an interrupted study resumes with the trials it has. Delete it to start afresh.
    """
    input:
        data=rules.prepare.output,
        workers=tune_workers,
    output:
        results(f"{layout.tuning_dir('{task}', '{label}', '{sparsity}')}/{layout.BEST_PARAMS}"),
    params:
        flags=tune_flags,
        journal=results(f"{layout.tuning_dir('{task}', '{label}', '{sparsity}')}/{layout.JOURNAL}"),
    log:
        results(layout.job_file(layout.LOGS, "tune", layout.study_name('{task}', '{label}', '{sparsity}'))),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "tune", layout.study_name('{task}', '{label}', '{sparsity}')))
    conda:
        "../envs/propetl.yaml"
    threads: resource("tune", "threads")
    resources:
        mem_mb=resource("tune", "mem_mb"),
        runtime=resource("tune", "runtime"),
        gpu=resource("tune", "gpu"),
    shell:
        "propetl tune {params.flags} --threads {threads} --prepared {input.data}"
        " --storage {params.journal} --out {output} > {log} 2>&1"
