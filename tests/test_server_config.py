"""What a server offers: from the environment, overridden whole, and the model list a visitor may load."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from inference.model.loading import DEFAULT_MODEL
from inference.serving.server_config import ServerConfig


def test_the_environment_sets_the_model_the_list_and_the_limits() -> None:
    config = ServerConfig.from_env({"PHASESCOPE_MODEL": "org/a", "PHASESCOPE_ALLOWED_MODELS": " org/b, ,org/a ",
                                    "PHASESCOPE_MAX_RUN_SECONDS": "30", "PHASESCOPE_QUEUE_SIZE": "8"})
    assert config.allowed_models == ["org/a", DEFAULT_MODEL, "org/b"]
    assert (config.max_run_seconds, config.queue_size, config.allow_any_model) == (30.0, 8, False)


def test_only_listed_models_may_load_unless_any_is_allowed() -> None:
    config = ServerConfig.from_env({})
    assert config.may_load(DEFAULT_MODEL) and not config.may_load("someone/else")
    assert ServerConfig.from_env({"PHASESCOPE_ALLOW_ANY_MODEL": "1"}).may_load("someone/else")


def test_a_switch_makes_a_new_config_and_keeps_the_old_one() -> None:
    config = ServerConfig.from_env({})
    switched = config.replace(model="org/c")
    assert switched.allowed_models[0] == "org/c" and config.model == DEFAULT_MODEL


def test_a_limit_that_is_not_a_number_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="PHASESCOPE_MAX_RUN_SECONDS must be a number, got 'two minutes'"):
        ServerConfig.from_env({"PHASESCOPE_MAX_RUN_SECONDS": "two minutes"})
    with pytest.raises(ValueError, match="PHASESCOPE_API_MAX_CONCURRENT must be a whole number"):
        ServerConfig.from_env({"PHASESCOPE_API_MAX_CONCURRENT": "8.5"})


def test_solo_mode_is_a_server_switch() -> None:
    assert not ServerConfig.from_env({}).solo and ServerConfig.from_env({"PHASESCOPE_SOLO": "1"}).solo


def test_chunked_prefill_is_off_by_default_and_never_negative() -> None:
    assert ServerConfig.from_env({}).prefill_chunk == 0
    assert ServerConfig.from_env({"PHASESCOPE_PREFILL_CHUNK": "256"}).prefill_chunk == 256
    with pytest.raises(ValueError, match="PHASESCOPE_PREFILL_CHUNK must be at least 0, got '-5'"):
        ServerConfig.from_env({"PHASESCOPE_PREFILL_CHUNK": "-5"})


def test_reading_the_configuration_loads_no_model_library() -> None:
    probe = ("import sys; from inference.serving.server_config import ServerConfig; "
             "ServerConfig.from_env({'PHASESCOPE_REMOTE': 'gpu=http://10.0.0.5:8000'}); "
             "print(sorted({'torch', 'transformers', 'gradio'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout.strip() == "[]"
