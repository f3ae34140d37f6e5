"""The command line: `python -m inference run|sweep|chat|race|batch|dtype|chunks|speculate|whatif ...` (README, "Command line").

Bad arguments end with one line on stderr and exit status 2; never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn, Sequence

from inference import defaults as D
from inference.cli.report import format_remote_summary, format_summary
from inference.settings import DEFAULT_MODEL, DEVICES, DTYPES, KERNELS, GenerationSettings
from inference.trace import Trace, sweep_to_json


# Why a command's run goes alone, for its trace: the command line is one process, one run.
ALONE = "the command line runs one prompt at a time"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m inference", description="Run a language model step by step and "
                     "measure its two phases: prefill (the prompt, at once) and decode (one token a step).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = commands.add_parser("run", help="generate from one prompt and print what each phase cost")
    run.add_argument("prompt", nargs="?", help="the prompt (goes through the chat template when the model has one)")
    _common(run, default_new_tokens=64)
    run.add_argument("--no-kv-cache", action="store_true", help="recompute the whole sequence every step")
    run.add_argument("--batch-size", type=int, default=1, help="B identical sequences stepping together")
    run.add_argument("--prompt-tokens", type=int, help="use a fixed text of exactly T tokens as the prompt")
    run.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--attention-map", action="store_true",
                     help="record each step's attention over the sequence (in the --json trace; runs eager attention)")
    run.add_argument("--perfetto", type=Path, metavar="OUT.json",
                     help="also write the run as Chrome trace-event JSON (open it in ui.perfetto.dev)")
    _remote(run)
    run.add_argument("--speculate", choices=("lookup", "draft"),
                     help="speculative decoding: drafts from the text so far (lookup) or from --draft-model, "
                     "checked in one forward pass")
    run.add_argument("--draft-tokens", type=int, default=4, metavar="K", help="tokens drafted per check (default 4)")
    run.add_argument("--draft-model", metavar="MODEL", help="hub id or local folder of a small model with the same "
                     "tokenizer, for --speculate draft")
    sweep = commands.add_parser("sweep", help="one short run per prompt length (prefill grows, decode stays flat)")
    sweep.add_argument("--prompt-tokens", required=True, type=_int_list, help="comma-separated, e.g. 16,128,512,1024")
    _common(sweep, default_new_tokens=D.SWEEP_NEW_TOKENS)
    _remote(sweep)
    race = commands.add_parser("race", help="the same prompt with and without the KV cache")
    race.add_argument("--prompt-tokens", type=int, default=D.RACE_PROMPT_TOKENS)
    _common(race, default_new_tokens=D.RACE_NEW_TOKENS)
    batch = commands.add_parser("batch", help="decode step time and throughput against batch size")
    batch.add_argument("--batch-sizes", type=_int_list, default=list(D.BATCH_SIZES), help="comma-separated")
    batch.add_argument("--prompt-tokens", type=int, default=D.BATCH_PROMPT_TOKENS)
    _common(batch, default_new_tokens=D.BATCH_NEW_TOKENS)
    dtypes = commands.add_parser("dtype", help="the same prompt at 4, 2, 1 and about 0.6 bytes per weight")
    dtypes.add_argument("--prompt-tokens", type=int, default=D.DTYPE_PROMPT_TOKENS)
    dtypes.add_argument("--dtypes", type=lambda text: [d.strip() for d in text.split(",") if d.strip()],
                        default=list(D.DTYPES_COMPARED), help="comma-separated, widest first")
    _common(dtypes, default_new_tokens=D.DTYPE_NEW_TOKENS)
    chunks = commands.add_parser("chunks", help="a long prompt joins streaming runs: its prefill whole, then in chunks")
    chunks.add_argument("--prompt-tokens", type=int, default=D.CHUNK_LONG_PROMPT, help="the long prompt")
    chunks.add_argument("--chunk", type=int, default=D.CHUNK_SIZE, help="prompt tokens per prefill chunk")
    chunks.add_argument("--streams", type=int, default=D.CHUNK_STREAMS, help="runs streaming when it joins")
    _common(chunks, default_new_tokens=64)
    prefix = commands.add_parser("prefix", help="a class's questions after one shared context: prefix caching off, "
                                                "then on")
    prefix.add_argument("--students", type=int, default=D.PREFIX_STUDENTS, help="runs asked for at once")
    prefix.add_argument("--context-tokens", type=int, default=D.PREFIX_CONTEXT_TOKENS, help="the shared context")
    _common(prefix, default_new_tokens=D.PREFIX_NEW_TOKENS)
    speculate = commands.add_parser("speculate", help="speculative decoding against plain decode: what a check of "
                                    "k drafted tokens costs, how many are kept, the speedup")
    speculate.add_argument("--draft-tokens", type=_int_list, default=list(D.SPECULATE_DRAFT_TOKENS),
                           help="comma-separated k to try (default 1,3,7,15)")
    speculate.add_argument("--method", choices=("lookup", "draft"), default="lookup")
    speculate.add_argument("--draft-model", metavar="MODEL", help="for --method draft")
    _common(speculate, default_new_tokens=D.SPECULATE_NEW_TOKENS)
    chat = commands.add_parser("chat", help="a conversation whose turns reuse the KV cache of the turns before")
    chat.add_argument("--turn", action="append", required=True, metavar="TEXT", help="one user message (repeat it)")
    chat.add_argument("--no-reuse", action="store_true", help="forget the cache between turns, to compare")
    _common(chat, default_new_tokens=48)
    serve = commands.add_parser("serve", help="the embedded engine behind an OpenAI-compatible API (/v1) and "
                                "Prometheus /metrics, without the page")
    serve.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: the bundled {DEFAULT_MODEL})")
    serve.add_argument("--device", default="auto", choices=DEVICES)
    serve.add_argument("--dtype", default="auto", choices=DTYPES)
    serve.add_argument("--max-concurrent", type=int, metavar="N",
                       help="API requests under way at once (default 8, or PHASESCOPE_API_MAX_CONCURRENT)")
    serve.add_argument("--max-tokens", type=int, metavar="N",
                       help="the most tokens one request may ask for (default 512, or PHASESCOPE_API_MAX_TOKENS)")
    serve.add_argument("--solo", action="store_true", help="one request at a time (no shared batch)")
    whatif = commands.add_parser("whatif", help="estimates for large models on large GPUs (roofline, no model run)")
    whatif.add_argument("--prompt-tokens", type=int, default=1024)
    whatif.add_argument("--context", type=int, default=4096, help="tokens in the sequence for the decode estimate")
    whatif.add_argument("--json", type=Path, metavar="OUT.json")
    return parser


def _common(parser: argparse.ArgumentParser, default_new_tokens: int) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=default_new_tokens)
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"hub id or local folder (default: the bundled {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--dtype", default="auto", choices=DTYPES,
                        help="auto: bfloat16 on CUDA, and on a CPU where it measured faster; int8 (Q8_0) and q4_1: "
                        "decode reads llama.cpp's blocks (CPU)")
    parser.add_argument("--kernel", default="fast", choices=KERNELS,
                        help="fast: multi-core decode kernel on CPU (default); eager: plain PyTorch, the reference")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the trace (or sweep) as JSON")


def _remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--remote", metavar="URL", help="run on a serving engine with an OpenAI-compatible API "
                        "(vLLM, llama.cpp's server, ...) instead of the embedded one: measured from outside, "
                        "plus what the engine reports")


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected whole numbers of at least 1, got {text!r}")
    return values


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        commands = {"run": _run, "sweep": _sweep, "race": _race, "batch": _batch, "dtype": _dtype, "whatif": _whatif,
                    "chat": _chat, "chunks": _chunks, "speculate": _speculate, "prefix": _prefix, "serve": _serve}
        return commands[args.command](args)
    except ValueError as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")


def _settings(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(max_new_tokens=args.max_new_tokens, kv_cache=not getattr(args, "no_kv_cache", False),
                              batch_size=getattr(args, "batch_size", 1), temperature=getattr(args, "temperature", 0.0),
                              top_p=getattr(args, "top_p", 1.0), seed=getattr(args, "seed", 0),
                              kernel=getattr(args, "kernel", "fast"), attention_map=getattr(args, "attention_map", False),
                              speculate=getattr(args, "speculate", None) or "",
                              draft_tokens=getattr(args, "draft_tokens", 4))


def _check_draft_args(args: argparse.Namespace, method: str) -> None:
    if method != "draft" and getattr(args, "draft_model", None):
        raise ValueError("--draft-model is for speculative decoding with a draft model (--speculate draft)")
    if method == "draft" and not args.draft_model:
        raise ValueError("--speculate draft needs --draft-model MODEL (a small model with the same tokenizer)")


def _with_draft_model(engine, args: argparse.Namespace, method: str):  # -> Engine
    """The engine with the operator's draft model beside it, for speculate=draft (ValueError without one)."""
    _check_draft_args(args, method)
    if method != "draft":
        return engine
    from inference.model.loading import load_model

    draft = load_model(args.draft_model, engine.loaded.device, next(engine.loaded.model.parameters()).dtype)
    engine.set_draft_model(draft.model, draft.tokenizer, args.draft_model)
    return engine


def _run(args: argparse.Namespace) -> int:
    from inference.model.factory import load_engine
    from inference.prompts import chat_prompt_ids, check_prompt_text, fixed_length_prompt_ids
    from inference.serving.door import here, prepare

    if (args.prompt is None) == (args.prompt_tokens is None):
        raise ValueError("give either a PROMPT or --prompt-tokens T (exactly one)")
    settings = _settings(args)
    if args.prompt_tokens is not None:
        _check_prompt_tokens([args.prompt_tokens])
    else:
        check_prompt_text(args.prompt)
    _check_draft_args(args, settings.speculate)
    if args.remote:
        if settings.speculate:
            raise ValueError("--speculate runs on the embedded engine, not on --remote")
        return _run_remote(args, settings)
    engine = _with_draft_model(load_engine(args.model, args.device, args.dtype, _progress), args, settings.speculate)
    tokenizer = engine.loaded.tokenizer
    ids = (fixed_length_prompt_ids(tokenizer, args.prompt_tokens) if args.prompt_tokens is not None
           else chat_prompt_ids(tokenizer, args.prompt))
    run = here(engine, prepare(engine, ids, settings, args.prompt or "", alone=ALONE))
    try:
        for step in run:
            print(step.text, end="", flush=True)
    except KeyboardInterrupt:
        run.close()
    print()
    trace = run.trace()
    print(format_summary(trace))
    return _write_run(args, trace)


def _serve(args: argparse.Namespace) -> int:
    """The API alone: uvicorn on a thread, the engine's runs on the main thread (as the page's)."""
    from inference.model.factory import load_engine
    from inference.serving.api import ApiService, serve_alone
    from inference.serving.background import ENGINE_THREAD
    from inference.serving.server_config import ServerConfig

    config = ServerConfig.from_env()
    config = config.replace(model=args.model, device=args.device, dtype=args.dtype, solo=args.solo or config.solo)
    for name in ("max_concurrent", "max_tokens"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
            config = config.replace(**{f"api_{name}": value})
    engine = load_engine(config.model, config.device, config.dtype, _progress)
    try:
        server = serve_alone(ApiService(lambda: engine, lambda: config), args.host, args.port)
    except OSError as exc:
        raise ValueError(str(exc)) from None
    print(f"serving {engine.loaded.info.name} at http://{args.host}:{args.port}/v1 (metrics: /metrics); "
          "Ctrl-C stops", flush=True)
    try:
        ENGINE_THREAD.serve_forever()
    finally:
        server.should_exit = True
    return 0


def _write_run(args: argparse.Namespace, trace: Trace) -> int:
    """`run`'s files: the trace (--json) and the Chrome trace-event JSON (--perfetto)."""
    if args.json:
        _write(args.json, trace.to_json(indent=1))
    if args.perfetto:
        from inference.trace.perfetto import to_chrome_trace_json

        _write(args.perfetto, to_chrome_trace_json(trace))
    return 0


def _remote_client(url: str):  # -> RemoteClient (imported late: the embedded commands never need it)
    from urllib.parse import urlparse

    from inference.remote import RemoteClient, RemoteEndpoint, parse_remotes

    parse_remotes(f"remote={url}")          # ValueError unless it is an http(s) address
    return RemoteClient(RemoteEndpoint(urlparse(url).netloc, url))


def _fixed_text(lengths: list[int]) -> list[str]:
    """Texts of exactly T tokens in the bundled model's tokenizer (about T in a remote model's own)."""
    from transformers import AutoTokenizer

    from inference.model.loading import default_model_folder
    from inference.prompts import fixed_length_prompt_text

    tokenizer = AutoTokenizer.from_pretrained(default_model_folder(progress=_progress))
    return [fixed_length_prompt_text(tokenizer, n) for n in lengths]


def _run_remote(args: argparse.Namespace, settings: GenerationSettings) -> int:
    from inference.remote import RemoteError, remote_trace

    client = _remote_client(args.remote)
    prompt = args.prompt if args.prompt is not None else _fixed_text([args.prompt_tokens])[0]
    try:
        trace = remote_trace(client, prompt, settings, on_text=lambda text: print(text, end="", flush=True))
    except RemoteError as exc:
        raise ValueError(str(exc)) from None
    print()
    print(format_remote_summary(trace))
    return _write_run(args, trace)


def _chat(args: argparse.Namespace) -> int:
    """Each turn's prompt is the whole conversation so far; with reuse (the default) its prefill
    computes only what the last turn's cache does not hold."""
    from inference.model.factory import load_engine
    from inference.prompts import check_prompt_text, conversation_ids
    from inference.serving.door import here, prepare

    settings = _settings(args)
    for turn in args.turn:
        check_prompt_text(turn)
    engine = load_engine(args.model, args.device, args.dtype, _progress)
    messages: list[dict[str, str]] = []
    traces, previous = [], None
    for number, turn in enumerate(args.turn, start=1):
        messages.append({"role": "user", "content": turn})
        ids = conversation_ids(engine.loaded.tokenizer, messages)
        try:
            plan = prepare(engine, ids, settings, turn, turn=True, reuse=None if args.no_reuse else previous)
        except ValueError as exc:
            raise ValueError(f"turn {number}: the conversation no longer fits the model's context ({exc}); "
                             f"start a new conversation") from None
        run = here(engine, plan)
        trace = run.run_to_end()
        previous = run.cached_prefix
        messages.append({"role": "assistant", "content": trace.text})
        traces.append(trace)
        print(f"\n[turn {number}] {turn}\n{trace.text}")
        print(f"  prompt {trace.prompt_tokens} tokens: {trace.reused_tokens} reused from the cache, "
              f"{trace.steps[0].tokens_in} prefilled; TTFT {trace.summary.ttft_ms:.1f} ms")
    if args.json:
        _write(args.json, sweep_to_json(traces, indent=1))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import prompt_length_sweep
    from inference.model.factory import load_engine
    from inference.remote import RemoteError, remote_sweep

    settings = _settings(args)
    _check_prompt_tokens(args.prompt_tokens)
    if args.remote:
        runs = remote_sweep(_remote_client(args.remote), _fixed_text(args.prompt_tokens), settings)
        print("remote engine: prompt tokens as the engine counted them (0: it did not say); TTFT seen from here")
    else:
        runs = prompt_length_sweep(load_engine(args.model, args.device, args.dtype, _progress), args.prompt_tokens,
                                   settings)
    print(f"{'prompt tokens':>13}  {'TTFT ms':>9}  {'prefill tok/s':>13}  {'decode ms/token':>15}  {'decode tok/s':>12}")
    traces = []
    try:
        traces = [_sweep_row(trace) for trace in runs]
    except RemoteError as exc:
        raise ValueError(str(exc)) from None
    if args.json:
        _write(args.json, sweep_to_json(traces, indent=1))
    return 0


def _sweep_row(trace: Trace) -> Trace:
    s = trace.summary
    rate = f"{trace.prompt_tokens / s.ttft_ms * 1e3:>13.0f}" if trace.prompt_tokens else f"{'-':>13}"
    print(f"{trace.prompt_tokens:>13}  {s.ttft_ms:>9.1f}  {rate}  {s.decode_ms_median:>15.1f}  "
          f"{s.decode_tokens_per_s:>12.1f}", flush=True)
    return trace


def _race(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_cache_race
    from inference.model.factory import load_engine

    _check_prompt_tokens([args.prompt_tokens])
    engine = load_engine(args.model, args.device, args.dtype, _progress)
    race = run_cache_race(engine, args.prompt_tokens, _settings(args).max_new_tokens, kernel=args.kernel)
    print(race.verdict())
    if args.json:
        _write(args.json, sweep_to_json([race.cached, race.recomputed], indent=1))
    return 0


def _batch(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_batch_sweep
    from inference.model.factory import load_engine
    from inference.settings import MAX_BATCH_SIZE

    _check_prompt_tokens([args.prompt_tokens])
    if max(args.batch_sizes) > MAX_BATCH_SIZE:
        raise ValueError(f"batch sizes go up to {MAX_BATCH_SIZE}, got {max(args.batch_sizes)}")
    engine = load_engine(args.model, args.device, args.dtype, _progress)
    result = run_batch_sweep(engine, args.batch_sizes, args.prompt_tokens, _settings(args).max_new_tokens,
                             kernel=args.kernel)
    print(f"{'batch':>5}  {'decode ms/step':>14}  {'tokens/s':>9}")
    for b, ms, tps in zip(result.batch_sizes, result.step_ms, result.tokens_per_s):
        print(f"{b:>5}  {ms:>14.1f}  {tps:>9.1f}")
    print(result.verdict())
    if args.json:
        _write(args.json, sweep_to_json(list(result.traces), indent=1))
    return 0


def _speculate(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_speculation
    from inference.model.factory import load_engine
    from inference.settings import MAX_DRAFT_TOKENS

    if max(args.draft_tokens) > MAX_DRAFT_TOKENS:
        raise ValueError(f"--draft-tokens go up to {MAX_DRAFT_TOKENS}, got {max(args.draft_tokens)}")
    GenerationSettings(max_new_tokens=args.max_new_tokens)          # ValueError before the model loads
    _check_draft_args(args, args.method)
    engine = _with_draft_model(load_engine(args.model, args.device, args.dtype, _progress), args, args.method)
    result = run_speculation(engine, args.draft_tokens, args.max_new_tokens, args.method, kernel=args.kernel)
    print(f"{'prompt':<18} {'k':>2}  {'check / step':>12}  {'kept':>5}  {'tokens/step':>11}  {'speedup':>7}")
    for kind, k, f, _ in result.figures():
        print(f"{kind:<18} {k:>2}  {f['check_ratio']:>11.2f}x  {100 * f['acceptance']:>4.0f}%  "
              f"{f['tokens_per_step']:>11.2f}  {f['speedup']:>6.2f}x")
    print(result.verdict())
    if args.json:
        _write(args.json, sweep_to_json([t for _, plain, spec in result.runs for t in (plain, spec)], indent=1))
    return 0


def _chunks(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_chunked_prefill
    from inference.model.factory import load_engine

    _check_prompt_tokens([args.prompt_tokens])
    engine = load_engine(args.model, args.device, args.dtype, _progress)
    result = run_chunked_prefill(engine, args.prompt_tokens, args.chunk, args.streams)
    print(result.verdict())
    if args.json:
        _write(args.json, sweep_to_json([*result.off, *result.on], indent=1))
    return 0


def _prefix(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_shared_context
    from inference.model.factory import load_engine

    engine = load_engine(args.model, args.device, args.dtype, _progress)
    result = run_shared_context(engine, args.students, args.context_tokens, args.max_new_tokens)
    print(result.verdict())
    if args.json:
        _write(args.json, sweep_to_json([*result.off.traces, *result.on.traces], indent=1))
    return 0


def _dtype(args: argparse.Namespace) -> int:
    from inference.lessons.experiments import run_dtype_comparison

    _check_prompt_tokens([args.prompt_tokens])
    result = run_dtype_comparison(args.model, args.device, args.dtypes, args.prompt_tokens,
                                  _settings(args).max_new_tokens, kernel=args.kernel)
    print(result.verdict())
    if args.json:
        _write(args.json, sweep_to_json(list(result.traces), indent=1))
    return 0


def _whatif(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    from inference.lessons.whatif import GPUS, PRESETS, estimate

    _check_prompt_tokens([args.prompt_tokens, args.context])
    rows = [estimate(p, g, args.prompt_tokens, args.context) for p in PRESETS.values() for g in GPUS.values()]
    print(f"ESTIMATES from datasheet roofs at 100% efficiency, bf16, prompt {args.prompt_tokens}, context {args.context}")
    print(f"{'model':<16} {'GPU':<10} {'weights GB':>10} {'KV/token kB':>11} {'TTFT ms':>8} {'ms/token':>8} "
          f"{'batch to compute-bound':>22} {'fits':>5}")
    for e in rows:
        print(f"{e.model:<16} {e.gpu:<10} {e.weight_bytes / 1e9:>10.1f} {e.kv_bytes_per_token / 1e3:>11.0f} "
              f"{e.ttft_ms:>8.1f} {e.decode_ms_per_token:>8.2f} {e.compute_bound_batch:>22.0f} "
              f"{'yes' if e.fits else 'no':>5}")
    if args.json:
        _write(args.json, json.dumps({"schema": "phasescope.whatif/1", "estimates": [dataclasses.asdict(e) for e in rows]},
                                     indent=1))
    return 0


def _check_prompt_tokens(values: list[int]) -> None:
    for value in values:
        if value < 1:
            raise ValueError(f"--prompt-tokens must be at least 1, got {value}")


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as exc:
        raise ValueError(f"could not write {path}: {exc.strerror}") from None
    print(f"wrote {path}")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
