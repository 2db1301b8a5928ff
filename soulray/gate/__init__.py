"""The quality gate: an LLM judge rates every rewritten dialogue on a versioned rubric, a dialogue under
the threshold gets one revision that receives the judge's critique, and a revision still under it is
rejected with the judge's reason. `settings` (its config), `core` (pure: prompts, verdicts, one row's
path through the gate, its facts) and `stage` (the pipeline stage on the rewrite's LLM session). Its part
of the run report is in soulray/report.py.
"""
