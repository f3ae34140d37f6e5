"""The experiments that prove each claim (experiments.py), the verdicts read from their traces
(verdicts.py), and what-if estimates for other machines (whatif.py)."""
