"""The magics' run options: their flags, and building one :class:`~menglong_magic.agent.options.RunOptions`
dict from the flags plus ``%config AgentMagics.*`` (every magic the same way).

:data:`MAGIC_SOURCES` says where each run option comes from in a magic (a flag, a config trait, the
front end, or the ``-a`` agent's own defaults); a test checks it names every declared option.
"""

from __future__ import annotations

import functools
import shlex
import string
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument

from ..agent import ChatAgent
from ..agent.options import RUN_OPTIONS
from ..agent.output import OutputSpec
from ..models import Recorder, resolve_model
from ..secrets import redact
from ..tools.base import as_tool, is_tool
from ..tools.names import api_name

_T = TypeVar("_T")

#: Where a magic takes each run option from. "-a" means: a ChatAgent of the namespace (``-a NAME``) carries
#: it as its default (Python objects such as UsageLimits have no flag).
MAGIC_SOURCES: dict[str, str] = {
    "model": "-m/--model (or %config AgentMagics.model)",
    "system": "-s/--system (or %config AgentMagics.system)",
    "tools": "-t/--tools (default agent: every @tool of the namespace)",
    "toolsets": "--kernel (or %config AgentMagics.kernel_tools): the kernel tools, beside the agent's own",
    "mode": "--mode (or %config AgentMagics.mode; %agent_run: auto)",
    "max_iterations": "--max-iterations (or %config AgentMagics.max_iterations)",
    "timeout": "--timeout (or %config AgentMagics.timeout)",
    "request_timeout": "%config AgentMagics.request_timeout",
    "max_retries": "%config AgentMagics.max_retries",
    "approve": "the front end: the panel's buttons, a stdin prompt, or nobody (denied)",
    "approve_all": "--approve",
    "approval_timeout": "%config AgentMagics.approval_timeout",
    "output_type": "--output TYPE",
    "usage_limits": "-a AGENT (the agent's usage_limits)",
    "model_settings": "-a AGENT (the agent's model_settings)",
}
assert set(MAGIC_SOURCES) == set(RUN_OPTIONS), "every run option needs a source in the magics"


#: A first word that asks a magic for its usage and options (what ``%name?`` shows) instead of running it.
HELP_FLAGS = frozenset({"-h", "--help"})


def asks_for_help(line: str) -> bool:
    """Whether ``line`` (a magic's line) starts with ``-h`` or ``--help``."""
    words = line.split(None, 1)
    return bool(words) and words[0] in HELP_FLAGS


def help_flag(func: Callable[..., Any]) -> Callable[..., Any]:
    """``%magic -h`` / ``--help`` prints the magic's usage and options instead of running it (IPython's parsers
    take no -h: ``%magic?`` is IPython's way, which newcomers do not know). The outermost decorator: the help is the
    docstring that ``magic_arguments`` wrote."""
    @functools.wraps(func)
    def magic(self: Any, line: str, *cell: Any) -> Any:
        if asks_for_help(line):
            print(plain_help(magic.__doc__ or ""))
            return None
        return func(self, line, *cell)
    return magic


def plain_help(doc: str) -> str:
    """A magic's docstring as terminal text: without the reST ``::`` before its usage and the double backquotes
    of its inline code (both are for ``%magic?`` and Sphinx)."""
    text = doc.replace("``", "")
    if text.startswith("::\n\n"):
        usage, _, rest = text[4:].partition("\n\n")
        text = f"{textwrap.dedent(usage)}\n\n{rest}"
    return text


def run_arguments(func: Callable[..., Any]) -> Callable[..., Any]:
    """The flags every running magic shares (%%agent, %agent_run, %agent_map); innermost run first."""
    for decorator in reversed((
        argument("-a", "--agent", help="name of a ChatAgent in the namespace (default: the per-kernel agent)"),
        argument("-m", "--model", help="model for this run (name, 'local', 'offline' or 'replay:PATH')"),
        argument("-s", "--system", help="system prompt for this run"),
        argument("-t", "--tools", help="comma-separated tool functions from the namespace"),
        argument("--mode", choices=["normal", "auto", "workflow"], metavar="MODE",
                 help="chat mode for this run: normal, auto or workflow"),
        argument("--max-iterations", type=int, help="iteration cap"),
        argument("--timeout", type=float, help="timeout in seconds"),
        argument("-o", "--out", help="store the result in this variable"),
        argument("-q", "--quiet", action="store_true", help="no panel: the summary line (and a run's answer)"),
        argument("-i", "--interpolate", action="store_true",
                 help="substitute {name} from the namespace in the text (write {{ and }} for literal braces)"),
        argument("--output", metavar="TYPE",
                 help="answer as an instance of this type from the namespace (a pydantic model, dataclass, "
                      "TypedDict or simple type): the result's .output"),
        argument("--record", metavar="PATH",
                 help="append this run's model requests and responses to a JSON Lines cassette (replay it with "
                      "-m replay:PATH)"),
        argument("--approve", action="store_true",
                 help="every tool call of this run waits for your approval (panel buttons or a prompt)"),
        # Not a run option: it picks the per-kernel agent whose conversation is saved under NAME (menglong_magic/
        # store.py); an agent's session is set where it is made (ChatAgent(session=...)).
        argument("--session", metavar="NAME",
                 help="run with the per-kernel agent of the stored conversation NAME: a chat or task continues "
                      "and saves it, a map's runs are logged under it (see %%agent_history)"),
        argument("--kernel", action="store_true",
                 help="give the agent the notebook as its workspace: list/inspect variables, run code (asks "
                      "first, see AgentMagics.run_code), the last error, propose a cell"),
    )):
        func = decorator(func)
    return func


def parse_line(parser: Any, line: str, *, rest: bool = True,
               expand: Callable[[str], str] | None = None) -> tuple[Any, str]:
    """The options of ``line`` parsed, and the rest of it exactly as typed (``rest=False``: all options).

    ``expand`` (the shell's ``var_expand``) applies to the options only (``-a $name``), as IPython does for a
    magic's line; the task text or template after them is never expanded (``Convert $5``, ``{100}``).
    """
    options, text = split_options(parser, line) if rest else (line, "")
    if expand is not None:
        options = expand(options)
    try:
        words = shlex.split(options)  # POSIX quoting: -s 'be brief' gives be brief, without the quotes
    except ValueError as exc:
        raise UsageError(f"cannot parse the options: {exc}") from None
    return parser.parse_args(words), text


def split_options(parser: Any, line: str) -> tuple[str, str]:
    """``line`` as (leading options, the rest exactly as typed): the task text keeps its quotes and spacing.

    The options end at the first word that does not start with ``-`` (and is not an option's value), or
    at ``--``. Only the options are shell-parsed, so an apostrophe in the task ("What's") is just text.
    """
    # argparse lists its options nowhere public.
    takes_value = {opt for action in parser._actions  # noqa: SLF001
                   for opt in action.option_strings if action.nargs != 0}
    flags = {opt for action in parser._actions for opt in action.option_strings}  # noqa: SLF001
    index = 0
    expect_value = False
    while True:
        index = _skip_space(line, index)
        if index >= len(line):
            return line, ""
        if not expect_value and not (line[index] == "-" and line[index + 1:index + 2] not in ("", " ")):
            return line[:index].rstrip(), line[index:].strip()
        token, end = _shell_word(line, index)
        if expect_value:
            expect_value = False
        elif token == "--":
            return line[:index].rstrip(), line[end:].strip()
        else:
            name = token.split("=", 1)[0]
            short = token[:2]
            if name not in flags and short not in flags:
                raise UsageError(f"unrecognized option {name} (--help lists the options; text that starts "
                                 "with '-' goes after --)")
            if name in flags:
                expect_value = name in takes_value and "=" not in token
            else:  # "-ovalue": a short option with its value attached
                expect_value = short in takes_value and len(token) == 2
        index = end


def _shell_word(line: str, index: int) -> tuple[str, int]:
    """One shell word of ``line`` starting at ``index``, and the index after it."""
    lexer = shlex.shlex(line[index:], posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        token = lexer.get_token()
    except ValueError as exc:  # unbalanced quotes in an option's value
        raise UsageError(f"cannot parse the options: {exc}") from None
    return token or "", index + lexer.instream.tell()  # type: ignore[attr-defined]


def _skip_space(line: str, index: int) -> int:
    while index < len(line) and line[index].isspace():
        index += 1
    return index


class _Namespace(dict):
    def __init__(self, namespace: Mapping[str, Any], keep: frozenset[str] = frozenset()):
        super().__init__(namespace)
        self.keep = keep

    def __missing__(self, key: str) -> Any:
        if key in self.keep:  # a map item's field: filled from each item later
            return "{" + key + "}"
        raise UsageError(f"-i: {key!r} is not defined in the namespace (write {{{{ and }}}} for literal braces)")


class _KeepPositional(string.Formatter):
    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        if isinstance(key, int):  # "{}": a map's string item, filled later
            return "{}"
        return super().get_value(key, args, kwargs)


def interpolate(text: str, namespace: Mapping[str, Any], fields: frozenset[str] = frozenset()) -> str:
    """``-i``: ``{name}`` from the namespace; names in ``fields`` (a map item's) stay for each item to fill."""
    if fields:
        namespace = {k: v for k, v in namespace.items() if k not in fields}
    formatter = _KeepPositional() if fields else string.Formatter()
    return formatter.vformat(text, (), _Namespace(namespace, fields))


def namespace_tools(namespace: Mapping[str, Any]) -> dict[str, Any]:
    """Every ``@tool`` function of the namespace (the default agent's tools)."""
    found = {}
    for key, value in list(namespace.items()):
        if not key.startswith("_") and is_tool(value):
            t = as_tool(value)
            found[t.name] = t
    return found


def sent_names(tools: Mapping[str, Any]) -> dict[str, str]:
    """The name each tool is sent to the model under (``fs.read`` → ``fs_read``), as a run's tool table gives it."""
    sent: dict[str, str] = {}
    for name in tools:  # in the order the run's tool table adds them, so clashes resolve the same way
        sent[name] = api_name(name, set(sent.values()))
    return sent


def configured(make: Callable[[], _T]) -> _T:
    """``make()``, with a configuration error (a refused URL, a missing setting) as one short UsageError."""
    try:
        return make()
    except (ValueError, TypeError, OSError, ImportError) as exc:  # e.g. a cassette or an extra missing
        message = redact(str(exc) or type(exc).__name__)
    raise UsageError(f"agent configuration: {message}")  # outside `except`: nothing chained, no traceback


def namespace_type(expression: str, namespace: dict[str, Any]) -> Any:
    """A type named in the namespace (``City``, ``list[str]``, ``typing.Literal['a', 'b']``)."""
    try:
        output_type = eval(expression, namespace)  # the user's own namespace and text
    except Exception as exc:
        raise UsageError(f"--output {expression}: not a type in the namespace ({type(exc).__name__}: {exc})") \
            from None
    try:
        OutputSpec.of(output_type)
    except TypeError as exc:
        raise UsageError(f"--output {expression}: {exc}") from None
    return output_type


def named_agent(namespace: Mapping[str, Any], name: str) -> ChatAgent:
    """The ChatAgent called ``name`` in the namespace (``-a NAME``)."""
    obj = namespace.get(name)
    if obj is None:
        raise UsageError(f"-a {name}: no such variable")
    if not isinstance(obj, ChatAgent):
        raise UsageError(f"-a {name}: not a ChatAgent (it is a {type(obj).__name__})")
    return obj


def build_options(args: Any, config: Any, namespace: dict[str, Any], agent: ChatAgent, *,
                  default_agent: bool) -> dict[str, Any]:
    """One run's options from the parsed flags ``args`` and the ``%config`` traits of ``config``
    (AgentMagics); the default agent also takes the config's system prompt and mode and the namespace's tools.

    The same for every magic: a flag the magic lacks is simply absent from ``args``.
    """
    options: dict[str, Any] = {}
    if default_agent:
        options.update(system=config.system or "", mode=config.mode, tools=namespace_tools(namespace))
    flag = lambda name: getattr(args, name, None)  # noqa: E731 - a magic without the flag: None
    if flag("model"):
        try:
            options["model"] = resolve_model(args.model)
        except (ValueError, TypeError, OSError, ImportError) as exc:  # OSError: e.g. replay:PATH with no such file
            raise UsageError(redact(f"-m {args.model}: {exc}")) from None
    if flag("system"):
        options["system"] = args.system
    if flag("mode"):
        options["mode"] = args.mode
    if flag("tools"):
        tools = {}
        for name in (n.strip() for n in args.tools.split(",") if n.strip()):
            func = namespace.get(name)
            if func is None or not callable(func):
                raise UsageError(f"-t: {name!r} is not a function in the namespace")
            t = as_tool(func)
            tools[t.name] = t
        options["tools"] = tools
    if flag("output"):
        options["output_type"] = namespace_type(args.output, namespace)
    if flag("record"):
        options["model"] = Recorder(options.get("model") or agent.model, args.record)
    if flag("approve"):
        options["approve_all"] = True
    if flag("kernel") or getattr(config, "kernel_tools", False):
        from .kernel_tools import KernelTools

        options["toolsets"] = (KernelTools(config.shell, run_code=config.run_code.lower()),)
    options["max_iterations"] = flag("max_iterations") or config.max_iterations
    for name in ("timeout", "request_timeout", "max_retries", "approval_timeout"):
        value = flag(name) if name == "timeout" else None
        value = value if value is not None else getattr(config, name)
        if value is not None:
            options[name] = value
    return options
