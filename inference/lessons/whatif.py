"""What-if: large models on large GPUs, estimated from public configs and datasheet roofs.

Everything here is an estimate: the roofline's time (the larger of FLOPs / peak FLOP/s and bytes /
peak bytes/s), divided by an efficiency that can be calibrated from what this machine measured.
"""
from __future__ import annotations

from dataclasses import dataclass

from inference.cost_model import compute_bound_batch, step_cost
from inference.hardware.gpus import GPUS_BY_NAME, Gpu
from inference.trace import DeviceInfo, ModelInfo, Trace


@dataclass(frozen=True)
class Preset:
    """The parts of a public model config that set its size and its KV cache."""
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    max_context: int
    tied_embeddings: bool = False

    @property
    def layer_params(self) -> int:
        attention = self.hidden * self.heads * self.head_dim * 2 + self.hidden * self.kv_heads * self.head_dim * 2
        mlp = 3 * self.hidden * self.intermediate          # gate, up, down (SwiGLU)
        return attention + mlp + 2 * self.hidden           # + two RMSNorm weights

    @property
    def params(self) -> int:
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * self.layer_params + embeddings + self.hidden

    def model_info(self, dtype: str = "bfloat16") -> ModelInfo:
        from inference.trace import dtype_itemsize

        matmul = self.layers * (self.layer_params - 2 * self.hidden) + self.vocab * self.hidden
        return ModelInfo(name=self.name, params=self.params, weight_bytes=self.params * dtype_itemsize(dtype),
                         dtype=dtype, layers=self.layers, heads=self.heads, kv_heads=self.kv_heads,
                         head_dim=self.head_dim, hidden=self.hidden, intermediate=self.intermediate, vocab=self.vocab,
                         max_context=self.max_context, matmul_params=matmul)


# From each model's published config.json.
PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("Llama-3.1-8B", 32, 4096, 32, 8, 128, 14336, 128256, 131072),
    Preset("Llama-3.1-70B", 80, 8192, 64, 8, 128, 28672, 128256, 131072),
    Preset("Qwen2.5-7B", 28, 3584, 28, 4, 128, 18944, 152064, 131072),
    Preset("Mistral-7B-v0.3", 32, 4096, 32, 8, 128, 14336, 32768, 32768),
    Preset("SmolLM2-135M", 30, 576, 9, 3, 64, 1536, 49152, 8192, tied_embeddings=True),
)}


GPUS = GPUS_BY_NAME        # the datasheet table, by name


@dataclass(frozen=True)
class Estimate:
    model: str
    gpu: str
    weight_bytes: float
    kv_bytes_per_token: float
    kv_bytes_at_context: float
    ttft_ms: float
    decode_ms_per_token: float
    compute_bound_batch: float
    fits: bool


def estimate(preset: Preset, gpu: Gpu, prompt_tokens: int, context: int, batch: int = 1,
             prefill_efficiency: float = 1.0, decode_efficiency: float = 1.0) -> Estimate:
    """Roofline times for a `prompt_tokens` prefill and a decode step at `context` tokens, in bf16."""
    info = preset.model_info("bfloat16")
    prefill = step_cost(info, batch, prompt_tokens, 0)
    decode = step_cost(info, batch, 1, context - 1)
    roof_s = lambda cost: max(cost.flops / gpu.bf16_flops, cost.bytes / gpu.bytes_per_s)
    kv_at_context = info.kv_bytes_per_token * context * batch
    return Estimate(model=preset.name, gpu=gpu.name, weight_bytes=info.weight_bytes,
                    kv_bytes_per_token=info.kv_bytes_per_token, kv_bytes_at_context=kv_at_context,
                    ttft_ms=roof_s(prefill) / prefill_efficiency * 1e3,
                    decode_ms_per_token=roof_s(decode) / decode_efficiency * 1e3,
                    compute_bound_batch=compute_bound_batch(info, gpu.bf16_flops / gpu.bytes_per_s, context),
                    fits=info.weight_bytes + kv_at_context <= gpu.memory_bytes)


@dataclass(frozen=True)
class Efficiency:
    """The share of the roofs an estimate assumes: prefill of the compute roof, decode of the memory roof."""
    prefill: float = 1.0
    decode: float = 1.0
    note: str = "roofline times at 100% of datasheet peaks (bf16, dense)"


def measured_efficiency(trace: Trace) -> Efficiency:
    """What this machine reached of its own roofs in `trace` (at most 100% each)."""
    if not trace.steps:
        return Efficiency()
    prefill = min(1.0, trace.steps[0].achieved_flops / trace.device.peak_flops)
    decode = min(1.0, trace.decode_bytes_per_s / trace.device.peak_bytes_per_s) if trace.decode_steps else 1.0
    return Efficiency(prefill, decode, f"roofline times scaled by this machine's measured efficiency (prefill "
                                       f"{prefill:.0%} of its compute roof, decode {decode:.0%} of its memory roof), bf16")


def device_as_gpu(name: str, device: DeviceInfo, memory_bytes: float) -> Gpu:
    """This machine's measured roofs in the datasheet table's shape, so it can sit beside the GPUs."""
    return Gpu(name, "", device.peak_flops, device.peak_flops, device.peak_bytes_per_s, memory_bytes)
