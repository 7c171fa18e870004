"""Chat templates: untrusted Jinja that ships inside checkpoints, rendered in a sandbox with caps.

A template runs in jinja2's ImmutableSandboxedEnvironment (no Python internals, no mutation of
the inputs) configured like transformers' (trim_blocks, lstrip_blocks, loop controls, `tojson`,
`raise_exception`, `strftime_now`), so the text matches what transformers renders. The sandbox
alone lets a template hang or exhaust memory, so rendering is also capped:

- time: the generated code calls `environment.tick()` at the top of every block body (each loop
  iteration, branch, macro), and every call and operator checks the deadline too;
- size: output is counted as it streams; every value that could turn into a lot of text is
  measured where it is made or used (operators `* ** + % ~`, calls, filters, block buffers,
  `{{ }}`); operations that amplify their input (`replace`, `join`, `indent`, format widths,
  `'x' * n`) are estimated before they run, so no single step builds an outsized value.

Everything a template does wrong surfaces as `qwq.errors.TemplateError`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import threading
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator
from jinja2.exceptions import SecurityError
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qwq.errors import TemplateError

QWQ_PREVIEW_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. You are Qwen developed by Alibaba. "
    "You should think step-by-step.")
DEFAULT_TIME_LIMIT = 2.0  # seconds
DEFAULT_MAX_OUTPUT_CHARS = 1 << 20
_MAX_INT_BITS = 1 << 16  # integer arithmetic beyond this is never chat formatting
_MAX_JSON_INDENT = 16
# Text rendered into block buffers (macros, set blocks) is held until the block ends, so all
# `{{ }}` output of a render, buffered or not, is capped at this multiple of the output cap.
_WORK_FACTOR = 8
# Filters no chat template needs whose cost is not linear in their input (striptags and urlize
# run backtracking regexes; wordwrap's wrapstring multiplies) or that make text from nothing.
_REMOVED_FILTERS = ("striptags", "urlize", "wordwrap")
_FORMAT_OPS = ("%", "format", "str.format")  # their int arguments are values, not widths
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d*)(?:\.(\*|\d*))?")
_BRACE_FIELD = re.compile(r"\{[^{}]*(\{)?")


# -- measuring values ----------------------------------------------------------------------------
def measure(value: Any, limit: int) -> int:
    """About how many characters `value` becomes as text: strings by length, containers by their
    items. The walk stops once `limit` is passed, so it costs at most O(limit)."""
    total, stack = 0, [value]
    while stack and total <= limit:
        v = stack.pop()
        if isinstance(v, str):
            total += len(v)
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += len(v) + 2
            if total <= limit:
                stack.extend(v)
        elif isinstance(v, dict):
            total += 2 * len(v) + 2
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        else:
            total += 1
    return total


def _format_padding(fmt: str, percent: bool) -> int:
    """How many characters the widths and precisions of a format string can add. Widths taken
    from the arguments (`%*d`, `{:{w}}`) are refused: no chat template needs them."""
    if percent:
        specs = [(m.group(1), m.group(2) or "") for m in _PERCENT_SPEC.finditer(fmt)]
    else:
        fields = list(_BRACE_FIELD.finditer(fmt.replace("{{", "").replace("}}", "")))
        if any(m.group(1) for m in fields):
            raise TemplateError("chat template uses a nested (computed) format width; refused")
        specs = [(d, "") for m in fields for d in re.findall(r"\d+", m.group(0).partition(":")[2])]
    if any("*" in (w, p) for w, p in specs):
        raise TemplateError("chat template uses a computed format width (*); refused")
    return sum(int(w or 0) + int(p or 0) for w, p in specs)


def _estimate(op: str, args: tuple, kwargs: dict, limit: int) -> int:
    """Upper bound on the size of an operation's result where it can exceed its inputs' size
    by more than a constant factor; 0 where the result check afterwards suffices."""
    head = args[0] if args else None
    if op == "replace" and isinstance(head, str) and len(args) >= 3:
        old, new = str(args[1]), str(args[2])
        hits = head.count(old) if old else len(head) + 1
        return len(head) + hits * max(0, len(new) - len(old))
    if op == "join" and isinstance(head, list):
        sep = args[1] if len(args) > 1 else kwargs.get("d", "")
        return measure(head, limit) + len(head) * len(str(sep))
    if op == "indent" and isinstance(head, str):
        width = args[1] if len(args) > 1 else kwargs.get("width", 4)
        step = len(width) if isinstance(width, str) else int(width)
        return len(head) + (head.count("\n") + 1) * step
    if op == "expandtabs" and isinstance(head, str):
        size = args[1] if len(args) > 1 else kwargs.get("tabsize", 8)
        return len(head) + head.count("\t") * int(size)
    if op in _FORMAT_OPS and isinstance(head, str):
        rest = measure(list(args[1:]), limit) + measure(kwargs, limit)
        return len(head) + rest + _format_padding(head, percent=op != "str.format")
    return 0


# -- the environment ------------------------------------------------------------------------------
class _TickingCodeGenerator(CodeGenerator):
    """Compiles templates so they can be stopped: a deadline check opens every block body
    (a loop with an empty body still runs it once per iteration), and `~` joins are checked."""

    def blockvisit(self, body: Any, frame: Any) -> None:
        self.writeline("environment.tick()")
        super().blockvisit(body, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Any) -> None:
        self.write("environment.checked_str_join((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}` marks assistant text for training masks; here the body
    simply renders, so templates that use it still parse."""

    tags: ClassVar[set[str]] = {"generation"}

    def parse(self, parser: Any) -> list:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


class _RenderState(threading.local):
    deadline: float | None = None
    rendered = 0  # characters of `{{ }}` output so far, buffered or not


class CappedSandbox(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment plus a time limit and size checks (see the module doc)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _TickingCodeGenerator

    def __init__(self, time_limit: float = DEFAULT_TIME_LIMIT,
                 max_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> None:
        # optimized=False: no constant folding, so nothing is evaluated at compile time, unchecked
        super().__init__(trim_blocks=True, lstrip_blocks=True, optimized=False,
                         finalize=_finalize,
                         extensions=[jinja2.ext.loopcontrols, _GenerationTag])
        self.time_limit = time_limit
        self.max_chars = max_chars
        self._state = _RenderState()
        self.filters["tojson"] = _tojson
        for name in _REMOVED_FILTERS:
            self.filters.pop(name, None)
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        self.globals.pop("lipsum", None)  # makes text from nothing, in one long Python call
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                            dict=_DictFactory())

    # deadline
    def start(self) -> None:
        self._state.deadline = time.monotonic() + self.time_limit
        self._state.rendered = 0

    def stop(self) -> None:
        self._state.deadline = None

    def tick(self) -> None:
        deadline = self._state.deadline
        if deadline is not None and time.monotonic() > deadline:
            raise TemplateError(f"chat template ran past its time limit of {self.time_limit:g} s")

    # sizes
    def check_size(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise TemplateError(f"chat template built {what} over its size limit of "
                                f"{self.max_chars} characters")

    def check_output(self, value: Any) -> Any:
        size = measure(value, self.max_chars)
        self.check_size(size, "output")
        self._state.rendered += size
        if self._state.rendered > _WORK_FACTOR * self.max_chars:
            raise TemplateError(f"chat template rendered over {_WORK_FACTOR}x its size limit of "
                                f"{self.max_chars} characters (into blocks and macros)")
        return value

    def check_value(self, value: Any, what: str = "a value") -> Any:
        self.check_size(measure(value, self.max_chars), what)
        return value

    def check_inputs(self, op: str, args: tuple, kwargs: dict, widths: bool = True) -> tuple:
        """Refuses oversized arguments and amplifying operations before they run; returns the
        arguments, with `join`'s iterable made a list so it can be measured. With `widths`
        (filters and str methods: args[0] is the value), integer parameters are widths and
        counts, and one over the size limit could only pad."""
        self.tick()
        if op == "join" and args and not isinstance(args[0], (str, Mapping)):
            args = (list(args[0]), *args[1:])
        for value in (*args, *kwargs.values()):
            self.check_value(value, f"an argument of {op}()")
        if widths and op not in _FORMAT_OPS:
            for value in (*args[1:], *kwargs.values()):
                if isinstance(value, int) and abs(value) > self.max_chars:
                    raise TemplateError(f"chat template passed {op}() an integer over the size "
                                        "limit")
        self.check_size(_estimate(op, args, kwargs, self.max_chars), f"the result of {op}()")
        return args

    def concat(self, parts: Any) -> str:  # joins block buffers (set blocks, macros)
        parts = list(parts)
        self.check_size(sum(len(p) for p in parts), "a block")
        return "".join(parts)

    def checked_str_join(self, parts: tuple) -> str:  # the `~` operator
        self.check_size(sum(measure(p, self.max_chars) for p in parts), "a ~ concatenation")
        return "".join(map(str, parts))

    # sandbox hooks
    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        _check_binop(operator, left, right, self.max_chars)
        if operator == "%" and isinstance(left, str):
            self.check_inputs("%", (left, right), {})
        return self.check_value(super().call_binop(context, operator, left, right))

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        op, target = _method_name(obj)
        if target is None:  # globals, macros, list and dict methods
            self.check_inputs(op, args, kwargs, widths=False)
        elif op == "join" and args:  # sep.join(items): checked like items|join(sep)
            args = (self.check_inputs(op, (args[0], target), {})[0], *args[1:])
        else:  # other str methods: checked like the filter of the same name
            args = self.check_inputs(op, (target, *args), kwargs)[1:]
        return self.check_value(super().call(context, obj, *args, **kwargs))

    def unsafe_undefined(self, obj: Any, attribute: str) -> Any:
        # the sandbox would return an Undefined that renders as ''; refuse loudly instead
        raise SecurityError(f"access to attribute {attribute!r} of {type(obj).__name__!r} "
                            "object is unsafe")

    def _guard_filter(self, name: str, func: Any) -> Any:
        @functools.wraps(func)  # keeps jinja's pass_context/pass_eval_context marks
        def guarded(*args: Any, **kwargs: Any) -> Any:
            lead = 1 if args and isinstance(args[0], (Context, EvalContext, jinja2.Environment)) \
                else 0
            rest = self.check_inputs(name, args[lead:], kwargs)
            return self.check_value(func(*args[:lead], *rest, **kwargs), f"the result of {name}")
        return guarded


@jinja2.pass_eval_context  # needing a context also keeps jinja from running it at compile time
def _finalize(eval_ctx: EvalContext, value: Any) -> Any:
    # `{{ x }}` turns x into text: measure it first
    return eval_ctx.environment.check_output(value)


def _method_name(obj: Any) -> tuple[str, str | None]:
    """(name, the string it is bound to) for str methods, including the sandbox's str.format
    wrapper; (name, None) for anything else."""
    bound = getattr(obj, "__wrapped__", obj)
    name = getattr(bound, "__name__", type(obj).__name__)
    target = getattr(bound, "__self__", None)
    if isinstance(target, str):
        return ("str.format" if name in ("format", "format_map") else name), target
    return name, None


def _check_binop(op: str, left: Any, right: Any, limit: int) -> None:
    """Refuses operators whose result would be outsized, before computing it."""
    if isinstance(left, int) and isinstance(right, int):
        bits = 0
        if op == "*":
            bits = left.bit_length() + right.bit_length()
        elif op == "**" and abs(left) > 1 and right > 0:
            bits = abs(left).bit_length() * right
        if bits > _MAX_INT_BITS:
            raise TemplateError(f"chat template operator {op!r} would build an integer of "
                                f"{bits} bits; refused")
        return
    size = 0
    if op == "*":
        seq, n = (left, right) if isinstance(right, int) else (right, left)
        if isinstance(n, int) and isinstance(seq, (str, list, tuple)):
            size = measure(seq, limit) * n
    elif op == "+":
        size = measure(left, limit) + measure(right, limit)
    if size > limit:
        raise TemplateError(f"chat template operator {op!r} would build a value over the size "
                            f"limit of {limit} characters")


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    """Like transformers' tojson: plain json.dumps, no HTML escaping, non-ASCII kept."""
    if isinstance(indent, int) and indent > _MAX_JSON_INDENT or \
            isinstance(indent, str) and len(indent) > _MAX_JSON_INDENT:
        raise TemplateError(f"tojson indent over {_MAX_JSON_INDENT}; refused")
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: Any) -> None:
    raise TemplateError(f"the chat template refused the conversation: {str(message)[:500]}")


def _strftime_now(fmt: str) -> str:
    if len(str(fmt)) > 256:
        raise TemplateError("strftime_now format over 256 characters; refused")
    return datetime.now().strftime(str(fmt))


class _DictFactory:
    """`dict` for templates, without handing them the dict type (a class to climb from)."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, keys: Any, value: Any = None) -> dict:
        return dict.fromkeys(keys, value)


# -- templates ------------------------------------------------------------------------------------
class ChatTemplate:
    """One compiled chat template with its caps. Thread-safe: each render keeps its own deadline."""

    def __init__(self, source: str, *, time_limit: float = DEFAULT_TIME_LIMIT,
                 max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> None:
        if not isinstance(source, str):
            raise TemplateError(f"a chat template must be a string, not {type(source).__name__}")
        self.source = source
        self.env = CappedSandbox(time_limit, max_output_chars)
        try:
            self.template = self.env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise TemplateError(f"chat template syntax error at line {e.lineno}: {e.message}") \
                from None
        except RecursionError:
            raise TemplateError("chat template nests too deeply to compile") from None

    def render(self, **variables: Any) -> str:
        env, out, size = self.env, [], 0
        env.start()
        stream = self.template.generate(**variables)
        try:
            for chunk in stream:
                size += len(chunk)
                env.check_size(size, "output")
                env.tick()
                out.append(chunk)
            return "".join(out)
        except TemplateError:
            raise
        except SecurityError as e:
            raise TemplateError(f"chat template tried to leave its sandbox: {e}") from None
        except Exception as e:  # noqa: BLE001 - any failure inside untrusted code is its fault
            raise TemplateError(f"chat template failed: {type(e).__name__}: {e}") from None
        finally:
            stream.close()
            env.stop()


@functools.lru_cache(maxsize=32)
def get_chat_template(source: str, time_limit: float = DEFAULT_TIME_LIMIT,
                      max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS) -> ChatTemplate:
    """A compiled template, cached: compiling takes milliseconds, rendering microseconds."""
    return ChatTemplate(source, time_limit=time_limit, max_output_chars=max_output_chars)


# -- inputs ---------------------------------------------------------------------------------------
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def plain_data(value: Any) -> Any:
    """Rebuilds inputs from JSON types only, so a template never sees a caller's objects (and
    their methods): pydantic models and dataclasses become dicts, other objects a '<Type>' tag."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base in (bool, str, int, float):  # subclasses (enums, numpy scalars) lose their methods
        if isinstance(value, base):
            return base(value)
    if isinstance(value, Mapping):
        return {str(k): plain_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return plain_data(value.model_dump())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_data({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    return f"<{type(value).__name__}>"


def prepare_messages(messages: Any, default_system: str | None = None) -> list[dict]:
    """Messages as templates expect them: plain dicts, None-valued keys dropped (templates test
    for presence), reasoning under every name templates read, and `default_system` first when the
    conversation has no system message."""
    out = []
    for message in plain_data(list(messages)):
        if not isinstance(message, dict):
            raise TemplateError(f"chat messages must be dicts with 'role' and 'content', got "
                                f"{type(message).__name__}")
        message = {k: v for k, v in message.items() if v is not None}
        reasoning = next((message[k] for k in _REASONING_FIELDS if k in message), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    if default_system is not None and not any(m.get("role") == "system" for m in out):
        out.insert(0, {"role": "system", "content": default_system})
    return out
