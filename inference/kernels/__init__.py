"""The CPU fast path: the C++ decode kernel (cpp/), its build (build.py), the model's forwards routed
through it (fast_path.py), and the weight blocks it reads (quantize.py)."""
