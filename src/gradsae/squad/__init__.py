"""The GradSAE experiments on SQuAD (Shu et al. 2025, §3 and appendix D), one concept per module:

    data.py     loading, prompts, answer extraction, official EM/F1
    config.py   the command configs (perturb, steer, stats, experiment), fingerprints, validation
    records.py  typed per-example records, the one examples.jsonl reader (rank shards), merging
    phases.py   the run context; answer / perturb / steer; ``run_variants`` (also used by explain)
    summary.py  confidence intervals, cells, latent statistics, verdicts -> summary.json
    tables.py   table.md (Markdown)
    run.py      the driver: ``run_perturb``, ``run_steer``, ``run_stats``, ``run_all``

Nothing is imported here, so importing one module does not pull in the others.
"""
