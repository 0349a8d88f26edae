rule tables:
    """runs.csv, per-cell means, the paper-style table and the comparison table.

    Only this grid's runs enter (--runs): runs of an earlier grid left in the same
    results root stay on disk but out of the tables.
    """
    input:
        runs=run_metrics(),
        published=published_table(),
    output:
        runs=report(results("tables/runs.csv"), caption="../report/runs.rst", category="Tables"),
        cells=results("tables/cells.csv"),
        paper=report(results("tables/paper_table.csv"), caption="../report/paper_table.rst", category="Tables"),
        markdown=results("tables/paper_table.md"),
        latex=results("tables/paper_table.tex"),
        # each ProPETL cell against its baseline and every cell at most as large: paired bootstrap intervals
        comparison=report(results("tables/comparison.csv"), caption="../report/comparison.rst", category="Tables"),
        comparison_md=results("tables/comparison.md"),
        # written whenever the published numbers are there (header only if nothing overlaps)
        **({"published": results("tables/published_vs_ours.csv")} if published_table() else {}),
    params:
        root=lambda wildcards, output: Path(output.runs).parent.parent,
        out=lambda wildcards, output: Path(output.runs).parent,
    log:
        results(layout.job_file(layout.LOGS, "tables")),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "tables"))
    conda:
        "../envs/propetl.yaml"
    threads: resource("aggregate", "threads")
    resources:
        mem_mb=resource("aggregate", "mem_mb"),
        runtime=resource("aggregate", "runtime"),
    shell:
        "propetl tables --results {params.root} --out {params.out} --runs {input.runs:q} > {log} 2>&1"


rule figures:
    """Score vs storage (always), score vs sparsity and mask overlap (when there are ProPETL runs)."""
    input:
        runs=run_metrics(),
    output:
        report(
            directory(results("figures")),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        root=lambda wildcards, output: Path(output[0]).parent,
    log:
        results(layout.job_file(layout.LOGS, "figures")),
    benchmark:
        results(layout.job_file(layout.BENCHMARKS, "figures"))
    conda:
        "../envs/propetl.yaml"
    threads: resource("aggregate", "threads")
    resources:
        mem_mb=resource("aggregate", "mem_mb"),
        runtime=resource("aggregate", "runtime"),
    shell:
        "propetl figures --results {params.root} --out {output} --runs {input.runs:q} > {log} 2>&1"


rule job_time:
    """Where the study's job-slot time went: every job's benchmark split by the phases its run
    or tuning trials recorded. Runs last, so every other job's benchmark file is there."""
    input:
        rules.tables.output,
        rules.figures.output,
    output:
        csv=results("tables/job_time.csv"),
        markdown=results("tables/job_time.md"),
    params:
        root=lambda wildcards, output: Path(output.csv).parent.parent,
        out=lambda wildcards, output: Path(output.csv).parent,
    log:
        results(layout.job_file(layout.LOGS, "job_time")),
    conda:
        "../envs/propetl.yaml"
    threads: resource("aggregate", "threads")
    resources:
        mem_mb=resource("aggregate", "mem_mb"),
        runtime=resource("aggregate", "runtime"),
    shell:
        "propetl job-time --results {params.root} --out {params.out} > {log} 2>&1"
