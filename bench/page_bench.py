"""Page benchmark: a run driven through the page's own event handler (live deltas built and
yielded at the page's rate on a server thread, the engine on the main thread as in `python app.py`),
against the engine alone on the main thread, interleaved in one process on the same engine."""
from __future__ import annotations

import threading

import app
from bench.common import interleaved_medians, row
from inference.background import ENGINE_THREAD
from inference.engine import Engine
from inference.prompts import chat_prompt_ids
from inference.settings import GenerationSettings
from inference.trace import Trace

PROMPT = "Explain in three sentences why the sky is blue."
NEW_TOKENS = 48


def through_page() -> float:
    """Consume the handler on another thread (as Gradio does) while this thread serves the engine."""
    finals: list[tuple] = []
    done = threading.Event()

    def consume() -> None:
        try:
            *_, final = app.run_generation(PROMPT, NEW_TOKENS, 0, 1, 0, True, 1, app.CancelFlag())
            finals.append(final)
        finally:
            done.set()

    threading.Thread(target=consume).start()
    ENGINE_THREAD.serve_forever(stop=done)
    return Trace.from_json(finals[0][4]).summary.decode_tokens_per_s


def engine_alone(engine: Engine) -> float:
    ids = chat_prompt_ids(engine.loaded.tokenizer, PROMPT)
    return engine.generate(ids, GenerationSettings(max_new_tokens=NEW_TOKENS)).run_to_end().summary.decode_tokens_per_s


def main(repeats: int = 5) -> list[str]:
    engine = app.get_engine(progress=lambda _: None)
    rates = interleaved_medians({"page": through_page, "engine": lambda: engine_alone(engine)}, repeats)
    return ["| page figure | value | note |", "|---|---|---|",
            row("decode tokens/s through the page's handler / engine alone", f"{rates['page'] / rates['engine']:.2f}",
                f"{rates['page']:.1f} vs {rates['engine']:.1f} tok/s, {app.UPDATES_PER_S} live updates/s "
                f"(goal >= 0.95)")]


if __name__ == "__main__":
    print("\n".join(main()))
