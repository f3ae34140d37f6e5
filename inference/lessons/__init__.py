"""The experiments that prove each claim (experiments.py), the verdicts read from their traces
(verdicts.py), what-if estimates for other machines (whatif.py), and the guided lesson's steps
(lesson.py) with the runs behind them (lesson_runs.py)."""
