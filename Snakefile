# diffmem: audit a diffusion model for memorization of its training data.
# The stages live in rules/*.smk; each rule calls one script in workflow/scripts (named like the
# rule), which calls one function of the matching stage module, src/diffmem/stages/<file>.py.


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/dpm.smk"
include: "rules/fingerprint.smk"
include: "rules/quality.smk"
include: "rules/side.smk"
include: "rules/copies.smk"
include: "rules/scores.smk"
include: "rules/models.smk"
include: "rules/generated.smk"
include: "rules/study.smk"
include: "rules/membership.smk"
include: "rules/verdict.smk"
include: "rules/trend.smk"
include: "rules/report.smk"
include: "rules/bench.smk"


report: "workflow/report/workflow.rst"


rule all:
    default_target: True
    input:
        all_run_outputs(),
        "results/report.md",
