"""The page's Gradio code: the server's state (state.py) and a module per tab (live.py,
experiments.py, classroom.py); app.py lays them out and launches."""
