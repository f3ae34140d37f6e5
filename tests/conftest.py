"""Shared fixtures: tiny models built from configs (no weights to fetch) and the bundled real model.

Everything here is offline: the hub is switched off before transformers is imported.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import pytest
import torch
from hypothesis import settings

# No test may depend on how fast the machine is: Hypothesis's per-example deadline (200 ms) fails
# on a loaded one.
settings.register_profile("phasescope", deadline=None)
settings.load_profile("phasescope")

from inference.engine import Engine
from inference.model.loading import LoadedModel, model_info
from inference.trace import DeviceInfo, Trace, read_trace

# The recorded trace the figures, exports and verdicts are tested on (also the page's example).
EXAMPLE_TRACE = Path(__file__).resolve().parent.parent / "assets" / "example-trace.json"

# Fixed roofs for tests: the microbenchmark has its own tests (test_roofs.py), not every fixture.
TEST_DEVICE = DeviceInfo(type="cpu", name="test cpu", peak_flops=100e9, peak_bytes_per_s=20e9, source="fixed for tests")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cuda: needs an NVIDIA GPU (skipped without one)")
    config.addinivalue_line("markers", "browser: drives headless Chromium")
    config.addinivalue_line("markers", "remote: needs a real serving engine (`make test-remote` starts one)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


class DigitTokenizer:
    """A stand-in tokenizer for tiny models: token i decodes to ' t<i>' (EOS decodes to nothing)."""

    eos_token_id = 2
    chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(f" t{i}" for i in ids if not (skip_special_tokens and i == self.eos_token_id))


def tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=3, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, vocab_size=128, max_position_embeddings=256,
                         eos_token_id=2, bos_token_id=1, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def tiny_gpt2() -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128, n_positions=256,
                        eos_token_id=2, bos_token_id=1, pad_token_id=0)
    return GPT2LMHeadModel(config).eval()


def engine_for(model: torch.nn.Module, name: str, fast_kernels: bool = True) -> Engine:
    """An engine for a tiny model; `fast_kernels=False`: as on a machine where the kernel did not build."""
    loaded = LoadedModel(model=model, tokenizer=DigitTokenizer(), info=model_info(model, name),
                         device=torch.device("cpu"))
    return Engine(loaded, TEST_DEVICE, fast_kernels=fast_kernels)


@pytest.fixture
def example_trace() -> Trace:
    return read_trace(EXAMPLE_TRACE.read_text())


@pytest.fixture(scope="session", params=["llama", "gpt2"])
def tiny_engine(request: pytest.FixtureRequest) -> Engine:
    """A tiny Llama (grouped-query attention) and a tiny GPT-2 (full multi-head attention)."""
    return engine_for(tiny_llama() if request.param == "llama" else tiny_gpt2(), f"tiny-{request.param}")


@pytest.fixture(scope="session")
def real_engine() -> Engine:
    """The bundled SmolLM2-135M-Instruct in float32 on CPU (dequantized and cached on first use)."""
    from inference.model.loading import load_model

    return Engine(load_model(dtype=torch.float32), TEST_DEVICE)


@pytest.fixture(scope="session")
def app_url(real_engine: Engine) -> Iterator[str]:
    """The page served in this process on a free port, on the real model."""
    import app

    app.server.engine = real_engine
    yield app.launch_on_free_port()
    app.demo.close()
