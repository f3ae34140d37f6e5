"""How runs are served: the front door that fits and routes each one (door.py), a run followed in
the background (background.py), the class's shared decode batch (batching.py, scheduler.py,
plain_batch.py), the server's configuration (server_config.py) and ZeroGPU's budget (gpu_budget.py).

Empty on purpose: parsing the configuration imports no torch."""
