"""The machine a run meets: the device and its roofs (device.py, roofs.py, gpus.py), the CPU share
and memory a container grants (cpu_quota.py), time spent waiting for a core (cpu_wait.py), and the
weight format that suits it (dtype_choice.py)."""
