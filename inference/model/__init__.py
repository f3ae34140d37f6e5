"""The model itself: loading it and the bundled weights (loading.py), the engine factory (factory.py),
the KV cache's interface across transformers versions (kv_cache.py), attention maps (attention_map.py)."""
