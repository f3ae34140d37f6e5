"""The page's streaming API, driven with gradio_client as a script would."""
from __future__ import annotations

import re

import gradio as gr
import pytest
from gradio_client import Client


@pytest.fixture(scope="module")
def client(app_url: str) -> Client:
    return Client(app_url, verbose=False)


def test_run_streams_updates_then_the_text_and_headline(client: Client) -> None:
    job = client.submit("What is the capital of France?", 24, 0, 1, 0, True, 1, api_name="/run")
    updates = list(job)
    final = job.result()
    assert len(updates) >= 3, f"expected several intermediate updates, got {len(updates)}"
    dashboard, status, headline, text = final[:4]
    assert "Paris" in text
    for label in ("TTFT", "decode", "KV cache", "bandwidth"):
        assert label in headline, f"headline lacks {label}"
    assert re.search(r"[\d,.]+ ms", headline)
    assert "Done" in status
    assert '"kind": "full"' in dashboard


def test_bad_settings_give_a_message_and_the_next_run_works(client: Client) -> None:
    with pytest.raises(Exception, match="less than minimum value 1"):
        client.predict("Hello", 0, 0, 1, 0, True, 1, api_name="/run")
    with pytest.raises(Exception, match="prompt is empty"):
        client.predict("   ", 8, 0, 1, 0, True, 1, api_name="/run")
    final = client.predict("What is the capital of France?", 12, 0, 1, 0, True, 1, api_name="/run")
    assert "Paris" in final[3]


def test_a_conversation_on_the_page_reuses_its_cache_turn_after_turn(app_url: str) -> None:
    client = Client(app_url, verbose=False)
    turn = lambda prompt, forget=False: client.predict(prompt, 16, 0, 1, 0, True, 1, "fast", True, forget,
                                                       api_name="/run")
    first = turn("What is the capital of France?")
    assert "Paris" in first[3] and "turn 1:" in first[1]
    second = turn("And of Japan?")
    assert "Tokyo" in second[3], second[3]
    reused, prompt_tokens = (int(n.replace(",", "")) for n in re.search(r"turn 2: ([\d,]+) of ([\d,]+) prompt", second[1]).groups())
    assert 0 < reused < prompt_tokens, second[1]
    third = turn("And of Italy?", forget=True)
    assert "turn 3: 0 of" in third[1], "forgetting the cache must prefill everything"
    client.predict(api_name="/new_conversation")
    assert "turn 1:" in turn("What is 2 + 2?")[1]


def test_recording_attention_on_the_page_fills_its_chart(client: Client) -> None:
    dashboard, status, headline, text = client.predict("What is the capital of France?", 12, 0, 1, 0, True, 1, "fast",
                                                       False, False, "", True, api_name="/run")[:4]
    assert "Paris" in text and "Done" in status
    assert "of them hold half" in dashboard


def test_the_chunked_prefill_experiment_runs_from_the_page(client: Client) -> None:
    _, verdict, panel = client.predict(512, 64, 2, api_name="/chunks")
    assert "chunks of 64" in verdict and "stream smooth, at its own" in panel


def test_a_quiet_run_streams_its_text_and_draws_the_charts_once_it_has_ended(real_engine) -> None:
    import json

    import app

    app.server.engine = real_engine
    updates = list(app.live.run_generation("What is the capital of France?", 8, 0, 1, 0, True, 1, app.CancelFlag(),
                                           quiet=True))
    kinds = [json.loads(u[0])["kind"] for u in updates if isinstance(u[0], str)]
    assert kinds == ["full"], kinds               # the charts drawn once: the whole run, once it has ended
    texts = [u[3] for u in updates[:-1] if isinstance(u[3], str)]
    assert texts and texts[-1] and "quiet run" in updates[-1][1]


def test_a_speculative_run_from_the_page_colours_its_drafts_and_says_what_the_checks_cost(real_engine) -> None:
    import app
    from inference.trace import read_trace

    app.server.engine = real_engine
    prompt = "Copy this list exactly: red, green, blue, red, green, blue, red, green, blue"
    *_, final = app.live.run_generation(prompt, 32, 0, 1, 0, True, 1, app.CancelFlag(), speculate="lookup",
                                        draft_tokens=4)
    trace = read_trace(final[4])
    assert trace.settings.speculate == "lookup" and trace.serving == "solo"
    assert "speculative decoding runs alone" in trace.serving_why
    checks = [s for s in trace.steps if s.drafted]
    kept = sum(s.accepted for s in checks)
    assert checks and kept > 0
    headline = final[2]
    assert headline.count('class="ps-kept"') >= 1 + sum(1 for s in checks if s.accepted)
    assert f"of {sum(s.drafted for s in checks)} drafted" in headline
    assert f"Done: {len(trace.output_ids)} tokens in {len(trace.steps)} steps" in final[1]


def test_a_bad_draft_count_from_the_page_gets_a_clear_message(real_engine) -> None:
    import gradio as gr

    import app

    app.server.engine = real_engine
    with pytest.raises(gr.Error, match="draft_tokens must be between 1 and 16"):
        list(app.live.run_generation("Hi", 8, 0, 1, 0, True, 1, app.CancelFlag(), speculate="lookup", draft_tokens=99))


def test_the_speculation_experiment_runs_from_the_page(client: Client) -> None:
    _, verdict, panel = client.predict([1, 3], api_name="/speculate")
    assert "k=1:" in verdict and "k=3:" in verdict and "repeats its input" in verdict
    assert "Every speculative run wrote exactly plain decode's tokens." in verdict
    assert "Checking k guessed tokens" in panel


def test_the_lessons_steps_give_a_message_for_bad_input_and_the_next_step_works(app_url: str) -> None:
    client = Client(app_url, verbose=False)            # a session of its own: no step 1 run yet
    with pytest.raises(Exception, match="Do step 1 first"):
        client.predict(api_name="/lesson_roofline")
    with pytest.raises(Exception, match="prompt is empty"):
        client.predict("  ", api_name="/lesson_run")
    with pytest.raises(Exception, match="shorten it for this step"):
        client.predict("word " * 3000, api_name="/lesson_sweep")
    text, headline, said, *_ = client.predict("What is the capital of France?", api_name="/lesson_run")
    assert "Paris" in text and "the pause (TTFT)" in headline and "prefill" in said
    assert "FLOPs per byte" in client.predict(api_name="/lesson_roofline")[0]


def test_a_runs_first_chart_update_redraws_the_charts_for_it(real_engine) -> None:
    """Nothing goes to the browser during a prefill's first quarter-second (the browser shares the
    cores), so a run's first chart update is a whole redraw: its first token with its time's parts
    (a short prefill), or its empty charts (a long one, whose block then grows); never an extend of
    the last run's charts."""
    import json

    import app

    app.server.engine = real_engine
    runs = app.live.run_generation("Hi", 4, 0, 1, 0, True, 1, app.CancelFlag())
    messages = [json.loads(u[0]) for u in runs if isinstance(u[0], str)]
    first = messages[0]
    assert first["kind"] == "full", first["kind"]
    assert first["lazy"] if first["steps"] == 0 else "ttft_parts" in first, first.keys()
    assert sum("ttft_parts" in m for m in messages) == 1, "the first token's time is sent once"


def test_what_the_page_measures_runs_under_no_progress_animation_but_its_chart_s_timer() -> None:
    """Gradio's progress overlay (spinner, timer, bar over every output) drew all the while a run or an
    experiment ran, on the cores it was measuring: a run's events show none, an experiment's shows
    the small timer on its chart alone."""
    import app

    ids = {block._id: block for block in app.demo.blocks.values()}
    measuring = {"run", "replay", "lesson_run", "lesson_sweep", "lesson_race", "lesson_batch", "lesson_formats",
                 "sweep", "race", "batch", "dtype", "chunks", "speculate", "prefix"}
    events = {d["api_name"]: d for d in app.demo.config["dependencies"] if d["api_name"] in measuring}
    assert set(events) == measuring, f"events not found: {measuring - set(events)}"
    for name, event in events.items():
        shown = [ids[i] for i in event["show_progress_on"]]
        if name in ("run", "replay", "lesson_run"):
            assert event["show_progress"] == "hidden" and shown == [], (name, event["show_progress"], shown)
        else:
            assert event["show_progress"] == "minimal" and len(shown) == 1 and isinstance(shown[0], gr.Plot), \
                (name, event["show_progress"], shown)
