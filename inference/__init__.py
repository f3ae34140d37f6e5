"""PhaseScope's inference side: load a causal LM, run it step by step with per-layer timing,
and describe each step (time, KV-cache bytes, FLOPs, bytes moved) as typed records."""
