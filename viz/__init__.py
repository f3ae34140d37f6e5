"""Pure functions from a trace to Plotly figures (no torch, no gradio): the same trace always
gives the same figure, in the page, in a test or in a notebook."""
