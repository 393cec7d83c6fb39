"""One module per ``rules/*.smk``, holding its ``*_stage`` functions: the only code that reads
and writes the workflow's files. ``config`` (the checks before any job) and ``runner`` (the
rule scripts' glue) sit here too."""
