rule prepare:
    """Tokenise a task once for every run (and tuning trial) of it."""
    input:
        task_file,
    output:
        directory(results("data/{task}")),
    params:
        flags=prepare_flags,
    log:
        results(layout.job_file(layout.LOGS, "prepare", "{task}")),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "prepare", "{task}"))
    conda:
        "../envs/propetl.yaml"
    threads: resource("prepare", "threads")
    resources:
        mem_mb=resource("prepare", "mem_mb"),
        runtime=resource("prepare", "runtime"),
    shell:
        "propetl prepare {params.flags} --out {output} > {log} 2>&1"
