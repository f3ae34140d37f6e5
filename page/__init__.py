"""The page's Gradio code: the server's state (state.py) and a module per tab (live.py,
experiments.py, classroom.py); app.py lays them out and launches."""

# Gradio's status tracker on each output of a running event counts the seconds on every animation
# frame until the event's first update, even with show_progress="hidden": on 2 cores those frames took
# about a third of the machine from a short prefill. The page's own status line says what a run is
# doing, so these events show Gradio's progress on no component (show_progress_on=[]).
NO_PROGRESS = dict(show_progress="hidden", show_progress_on=[])


def progress_on(chart) -> dict:
    """An experiment's progress: Gradio's small timer on its chart alone. Its full overlay on every
    output (spinner, timer and bar over each) took a quarter to a half of a core from the runs
    measured under it on 2 cores (and those runs took a third longer); this one about a tenth."""
    return dict(show_progress="minimal", show_progress_on=[chart])
