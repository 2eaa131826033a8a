"""Early-exit classifiers: render a user's exit definition into Keras code and attach it.

The user gives an **exit spec** (YAML/JSON list of allow-listed Keras layers with literal
arguments), their own **Jinja2 template**, or names a **built-in head** (:data:`EXIT_HEADS`):

* ``sdn`` (the default): SDN-style (Kaya et al., ICML 2019): max and average pooling side by
  side down to a 4x4 grid, a 1x1 convolution bottleneck (64 filters, BN, ReLU) that learns
  their mix, Flatten, ``Dense(num_classes, softmax)``. It keeps spatial layout, which is what
  makes shallow exits work (see ``docs/exit_heads.md`` for the measured comparison);
* ``paper``: the EdgeLessPart paper's head, a copy of the model's own head (global pooling or
  Flatten, then ``Dense(num_classes, softmax)``), kept to reproduce the paper;
* ``conv``: a 1x1 conv bottleneck (32 filters, BN, ReLU), the model's global pooling, Dense;
* ``sdn-sep``: ``sdn`` after a strided 3x3 separable convolution (64 filters, BN, ReLU) where the
  map is larger than 8x8 (shallow cuts); on digits-hard it lifts the stem and block-1 exits of
  the small CNN by 10 points each (``docs/exit_heads.md``).

Either way::

    definition = load_exit_definition(spec=..., template=..., head="sdn",
                                      pooling=classifier_pooling(model))
    build_exit = compile_exit_builder(definition)           # checked, then executed
    probabilities = attach_exit(build_exit, cut_tensor, num_classes, "exit_1")

Rendering runs in a ``jinja2.sandbox.SandboxedEnvironment`` with ``StrictUndefined`` and
``trim_blocks``/``lstrip_blocks``. Every template must render a Python module that imports
only keras modules and defines exactly ``def build_exit(x, num_classes, name)`` returning the
exit's probability tensor. Template context:

* ``layers``: the validated spec, a list of ``{"layer": str, "args": {name: literal}}``
  (empty unless a spec was given);
* ``num_classes_var`` / ``input_var`` / ``name_var``: ``"num_classes"``, ``"x"``, ``"name"``,
  the parameter names of ``build_exit``;
* ``pooling``: ``"avg"``, ``"max"`` or ``"flatten"`` (what the model's own head uses);
* ``allowed_layers``: the layer classes a spec may use;
* the filter ``pyliteral`` (a checked literal as Python source) and the built-in macro
  ``{% import "_classifier_head.j2" as head with context %}{{ head.classifier(pooling, i) }}``.

The built-in templates always end with the classifier: when the tensor is still spatial
(rank > 2) they add global pooling of the ``pooling`` kind (Flatten for ``"flatten"`` or
rank > 5), then ``Dense(num_classes, activation="softmax", name=name)``. Layer names: the
final layer is named exactly ``name``, internal layers ``f"{name}_{i}"``.

The rendered code is parsed and its AST checked (keras imports only, no names or attributes
starting with ``_``, no eval/exec/open/getattr..., no global/nonlocal/lambda/class/while/match)
and run with a small allow-list of builtins. This guards against template mistakes and the
usual escapes; it is defence in depth at build time, not a boundary for hostile code. Nothing
here writes to disk: the exporter stores ``ExitDefinition.code`` in the bundle.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import json
import keyword
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from edgelesspart import _lazy
from edgelesspart.errors import ExitSpecError, ModelError

TEMPLATES_ENV = "EDGELESSPART_TEMPLATES"
#: Built-in exit heads (``--exit-head``) and the template each renders.
EXIT_HEADS = {
    "sdn": "sdn.py.j2",
    "paper": "default.py.j2",
    "conv": "conv_pool.py.j2",
    "sdn-sep": "sdn_sep.py.j2",
}
DEFAULT_HEAD = "sdn"
DEFAULT_ORIGIN = f"builtin:{DEFAULT_HEAD}"
POOLINGS = ("avg", "max", "flatten")
ALLOWED_LAYERS = (
    "Activation", "AveragePooling1D", "AveragePooling2D", "BatchNormalization", "Conv1D",
    "Conv2D", "Dense", "DepthwiseConv2D", "Dropout", "Flatten", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "LayerNormalization",
    "LeakyReLU", "MaxPooling1D", "MaxPooling2D", "ReLU", "SeparableConv1D", "SeparableConv2D",
)  # fmt: skip
KERAS_SUBMODULES = frozenset(
    {"layers", "ops", "activations", "initializers", "regularizers", "constraints"}
)
KERAS_MODULES = frozenset({"keras"} | {f"keras.{sub}" for sub in KERAS_SUBMODULES})
FORBIDDEN_NAMES = frozenset({
    "eval", "exec", "open", "compile", "getattr", "setattr", "delattr", "globals", "locals",
    "vars", "input", "__import__", "breakpoint", "dir", "type", "object", "super", "help",
    "memoryview", "exit", "quit",
})  # fmt: skip
FORBIDDEN_ATTRIBUTES = frozenset({
    "format", "format_map", "Lambda", "TFSMLayer", "deserialize", "get_file", "load_model",
    "enable_unsafe_deserialization",
})  # fmt: skip
SAFE_BUILTINS = (
    "abs", "bool", "dict", "enumerate", "float", "int", "isinstance", "len", "list", "max",
    "min", "range", "round", "str", "sum", "tuple", "zip", "ValueError",
)  # fmt: skip
_FORBIDDEN_NODES = (
    ast.Global, ast.Nonlocal, ast.Lambda, ast.ClassDef, ast.AsyncFunctionDef, ast.AsyncFor,
    ast.AsyncWith, ast.While, ast.Yield, ast.YieldFrom, ast.Await, ast.Match,
)  # fmt: skip
_POOLING_OF_LAYER = {
    "GlobalAveragePooling1D": "avg", "GlobalAveragePooling2D": "avg",
    "GlobalAveragePooling3D": "avg", "Mean": "avg", "GlobalMaxPooling1D": "max",
    "GlobalMaxPooling2D": "max", "GlobalMaxPooling3D": "max", "Max": "max",
}  # fmt: skip
_SAFE_STRING = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_MAX_CODE_CHARS = 200_000
_MAX_SPEC_LAYERS = 64
_MAX_LIST_ITEMS = 8
_MAX_INT = 2**31


@dataclass(frozen=True)
class ExitDefinition:
    """A rendered and validated exit classifier.

    Attributes:
        kind: ``"default"`` (a built-in head), ``"spec"`` or ``"template"``.
        origin: the spec/template file path, or ``"builtin:<head>"`` (e.g. ``builtin:sdn``).
        code: the rendered Python module text (kept in the bundle for inspection).
    """

    kind: str
    origin: str
    code: str


def templates_dir() -> Path:
    """Return the templates folder.

    In order: ``$EDGELESSPART_TEMPLATES``; the repository's ``templates/`` (a source checkout or
    an editable install); the copy a wheel installs under ``<prefix>/share/edgelesspart/``.
    """
    override = os.environ.get(TEMPLATES_ENV, "").strip()
    if override:
        return Path(override).expanduser().resolve()
    import edgelesspart

    checkout = Path(edgelesspart.__file__).resolve().parents[1] / "templates"
    if checkout.is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "edgelesspart" / "templates"
    return installed if installed.is_dir() else checkout


def load_exit_definition(
    spec: str | Path | None = None,
    template: str | Path | None = None,
    *,
    pooling: str = "avg",
    head: str = DEFAULT_HEAD,
) -> ExitDefinition:
    """Render an exit spec, a user template, or (neither given) a built-in head.

    Args:
        spec: YAML/JSON exit spec file.
        template: Jinja2 template file rendering a Python module with ``build_exit``.
        pooling: ``"avg"``, ``"max"`` or ``"flatten"``; see :func:`classifier_pooling`.
        head: the built-in head used when neither file is given (:data:`EXIT_HEADS`).

    Returns:
        The definition with its rendered, AST-checked code.

    Raises:
        ExitSpecError: both files given, missing file, bad spec, template or rendered code.
    """
    if pooling not in POOLINGS:
        raise ExitSpecError(
            f"Unknown exit pooling {pooling!r}. Expected one of: {', '.join(POOLINGS)}."
        )
    if head not in EXIT_HEADS:
        raise ExitSpecError(
            f"Unknown exit head {head!r}. Built-in heads: {', '.join(EXIT_HEADS)} (or give "
            "--exit-spec / --exit-template)."
        )
    if spec is not None and template is not None:
        raise ExitSpecError(
            f"Got both an exit spec ({spec}) and an exit template ({template}); give one of them, "
            f"or neither for a built-in exit head ({', '.join(EXIT_HEADS)})."
        )
    env = _environment()
    context: dict[str, Any] = {
        "layers": [], "num_classes_var": "num_classes", "input_var": "x", "name_var": "name",
        "pooling": pooling, "allowed_layers": ALLOWED_LAYERS,
    }  # fmt: skip
    if spec is not None:
        path = _existing_file(spec, "spec")
        kind, origin = "spec", str(path)
        context["layers"] = _validate_spec(_read_spec(path), origin)
        compiled = _template(env, origin, name="spec.py.j2")
    elif template is not None:
        path = _existing_file(template, "template")
        kind, origin = "template", str(path)
        compiled = _template(env, origin, source=_read_text(path, "template"))
    else:
        kind, origin = "default", f"builtin:{head}"
        compiled = _template(env, origin, name=EXIT_HEADS[head])
    code = _render(compiled, context, origin)
    check_exit_code(code, origin)
    return ExitDefinition(kind=kind, origin=origin, code=code)


def compile_exit_builder(definition: ExitDefinition) -> Callable[..., Any]:
    """Check ``definition.code`` again and execute it with restricted builtins.

    Returns:
        The module's ``build_exit(x, num_classes, name)`` function.

    Raises:
        ExitSpecError: the code fails the checks or raises while loading.
    """
    _lazy.keras()
    tree = check_exit_code(definition.code, definition.origin)
    table = {name: getattr(builtins, name) for name in SAFE_BUILTINS}
    table["__import__"] = _keras_only_import
    namespace: dict[str, Any] = {"__builtins__": table, "__name__": "edgelesspart_exit"}
    try:
        exec(compile(tree, f"<exit {definition.origin}>", "exec"), namespace)
    except Exception as exc:
        raise ExitSpecError(
            f"Exit code from {definition.origin} failed while loading: {type(exc).__name__}: {exc}"
        ) from exc
    return namespace["build_exit"]


def attach_exit(builder: Callable[..., Any], x: Any, num_classes: int, name: str) -> Any:
    """Build one exit head on the symbolic tensor ``x`` and check what it returns.

    Args:
        builder: ``build_exit`` from :func:`compile_exit_builder`.
        x: the cut-point KerasTensor the exit reads.
        num_classes: number of classes of the model.
        name: exit name; the exit's final layer must carry exactly this name.

    Returns:
        The exit's ``(batch, num_classes)`` probability tensor.

    Raises:
        ExitSpecError: Keras could not build the exit, or its output has the wrong shape/name.
    """
    keras = _lazy.keras()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ExitSpecError(f"num_classes must be a positive int, got {num_classes!r}.")
    if not isinstance(name, str) or not name or "/" in name:
        raise ExitSpecError(f"Exit name must be a non-empty string without '/', got {name!r}.")
    shape = tuple(getattr(x, "shape", ()))
    try:
        out = builder(x, num_classes, name)
    except ExitSpecError:
        raise
    except Exception as exc:
        raise ExitSpecError(
            f"Exit {name!r} could not be built on an input of shape {shape}: "
            f"{type(exc).__name__}: {exc}. Check that the exit's layers suit a tensor of this rank."
        ) from exc
    if not isinstance(out, keras.KerasTensor):
        raise ExitSpecError(
            f"Exit {name!r} returned {type(out).__name__}; expected the symbolic tensor of its "
            "final layer (build_exit must return layers.Dense(...)(x))."
        )
    if len(out.shape) != 2 or out.shape[-1] != num_classes:
        raise ExitSpecError(
            f"Exit {name!r} outputs shape {tuple(out.shape)} for input {shape}, but the model has "
            f"{num_classes} classes: expected (batch, {num_classes}). End the exit with "
            "layers.Dense(num_classes, activation='softmax', name=name)."
        )
    final = out._keras_history.operation.name
    if final != name:
        raise ExitSpecError(
            f"Exit {name!r}: its final layer is named {final!r}, but it must be named exactly "
            f"{name!r} (and internal layers f'{{name}}_<i>') so the exit can be found by name."
        )
    return out


def classifier_pooling(model: Any) -> str:
    """Return how the model's own head reduces its features: ``"avg"``, ``"max"`` or ``"flatten"``.

    Walks back from the first output through the rank-2 head (Dense, Dropout, ...) to the layer
    that turns a spatial tensor into a vector. Global average/max pooling give ``"avg"``/``"max"``;
    any other reducer (Flatten, Reshape, ...) gives ``"flatten"``. A model that is rank 2
    throughout gives ``"avg"`` (the exit then never pools).

    Raises:
        ModelError: the model has no defined outputs or its output is not ``(batch, classes)``.
    """
    try:
        tensor = model.outputs[0]
    except (AttributeError, IndexError, TypeError) as exc:
        raise ModelError(
            f"Model {getattr(model, 'name', model)!r} has no defined outputs; build it with "
            "keras.Input first."
        ) from exc
    if len(tensor.shape) != 2:
        raise ModelError(
            f"Model output has shape {tuple(tensor.shape)}; expected (batch, classes) to copy its "
            "classifier head."
        )
    for _ in range(len(model.layers) + 1):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            break
        operation = history.operation
        inputs = operation._inbound_nodes[history.node_index].input_tensors
        if len(inputs) != 1:
            break
        if len(inputs[0].shape) > 2:
            return _POOLING_OF_LAYER.get(type(operation).__name__, "flatten")
        tensor = inputs[0]
    return "avg"


def check_exit_code(code: str, origin: str) -> ast.Module:
    """Parse rendered exit code and reject anything outside the allowed subset.

    Returns:
        The parsed module.

    Raises:
        ExitSpecError: not valid Python, or a forbidden construct (named, with its line).
    """
    if len(code) > _MAX_CODE_CHARS:
        raise ExitSpecError(
            f"Rendered exit code from {origin} is {len(code)} characters; the limit is "
            f"{_MAX_CODE_CHARS}."
        )
    try:
        tree = ast.parse(code, filename=origin)
    except (SyntaxError, ValueError) as exc:
        line = getattr(exc, "lineno", None)
        text = (getattr(exc, "text", None) or "").strip()
        raise ExitSpecError(
            f"Rendered exit code from {origin} is not valid Python (line {line}: "
            f"{getattr(exc, 'msg', exc)}: {text!r}). Fix the template so it renders Python."
        ) from exc
    build_exit = _check_top_level(tree, origin)
    keras_names = _keras_module_names(tree)
    for node in ast.walk(tree):
        problem = _node_problem(node, keras_names, build_exit)
        if problem is not None:
            raise ExitSpecError(
                f"Rendered exit code from {origin}, line {getattr(node, 'lineno', '?')}: forbidden "
                f"construct: {problem}. Exit code may only import keras modules and build layers "
                "inside build_exit(x, num_classes, name)."
            )
    return tree


def _check_top_level(tree: ast.Module, origin: str) -> ast.FunctionDef:
    functions = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            functions.append(node)
        elif not (
            isinstance(node, (ast.Import, ast.ImportFrom))
            or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str))
        ):  # fmt: skip
            raise ExitSpecError(
                f"Rendered exit code from {origin}, line {node.lineno}: forbidden construct: "
                f"top-level {type(node).__name__}. Only a docstring, keras imports and "
                "def build_exit(x, num_classes, name) may appear at the top level."
            )
    args = functions[0].args if len(functions) == 1 else None
    if (
        args is None
        or functions[0].name != "build_exit"
        or functions[0].decorator_list
        or [arg.arg for arg in args.args] != ["x", "num_classes", "name"]
        or args.posonlyargs or args.kwonlyargs or args.vararg or args.kwarg or args.defaults
    ):  # fmt: skip
        found = [f"{fn.name}(line {fn.lineno})" for fn in functions] or ["none"]
        raise ExitSpecError(
            f"Rendered exit code from {origin} must define exactly one top-level function "
            "def build_exit(x, num_classes, name) without defaults or decorators; found: "
            f"{', '.join(found)}."
        )
    return functions[0]


def _keras_module_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname is None or alias.name == "keras":
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _node_problem(node: ast.AST, keras_names: set[str], build_exit: ast.AST) -> str | None:
    if isinstance(node, _FORBIDDEN_NODES):
        return f"{type(node).__name__} is not allowed"
    if isinstance(node, ast.FunctionDef) and node is not build_exit:
        return f"nested function {node.name!r} is not allowed"
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return _import_problem(node)
    if isinstance(node, ast.Name):
        if node.id.startswith("_") or node.id in FORBIDDEN_NAMES:
            return f"use of the name {node.id!r}"
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_") or node.attr in FORBIDDEN_ATTRIBUTES:
            return f"access to the attribute {node.attr!r}"
        if isinstance(node.value, ast.Name) and node.value.id in keras_names:
            if node.attr not in KERAS_SUBMODULES:
                return f"keras.{node.attr} (only keras.{', keras.'.join(sorted(KERAS_SUBMODULES))})"
    elif isinstance(node, (ast.arg, ast.keyword)) and (node.arg or "").startswith("_"):
        return f"the argument name {node.arg!r}"
    return None


def _import_problem(node: ast.Import | ast.ImportFrom) -> str | None:
    allowed = ", ".join(sorted(KERAS_MODULES))
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in KERAS_MODULES or (alias.asname or "").startswith("_"):
                return f"import of {alias.name!r} (allowed: {allowed})"
        return None
    module = node.module or ""
    if node.level or module not in KERAS_MODULES:
        return f"import from {'.' * node.level}{module!r} (allowed: {allowed})"
    for alias in node.names:
        bad_name = alias.name == "*" or alias.name.startswith("_")
        if module == "keras" and alias.name not in KERAS_SUBMODULES:
            bad_name = True
        if bad_name or alias.name in FORBIDDEN_ATTRIBUTES or (alias.asname or "").startswith("_"):
            return f"from {module} import {alias.name} (allowed: {allowed})"
    return None


def _keras_only_import(
    name: str,
    globals_: Any = None,
    locals_: Any = None,
    fromlist: Any = (),
    level: int = 0,
) -> Any:
    """``__import__`` for exit code: admits only the allowed keras modules."""
    if level != 0 or name not in KERAS_MODULES:
        raise ImportError(f"import of {name!r} is not allowed in exit code")
    for item in fromlist or ():
        if name == "keras" and item not in KERAS_SUBMODULES:
            raise ImportError(f"from keras import {item} is not allowed in exit code")
    return builtins.__import__(name, globals_, locals_, fromlist, level)


# --- exit specs -------------------------------------------------------------------------------


def _existing_file(path: str | Path, what: str) -> Path:
    candidate = Path(path).expanduser()
    if not candidate.is_file():
        raise ExitSpecError(
            f"Exit {what} file not found: {candidate}. Pass the path of an existing "
            f"{'YAML/JSON spec' if what == 'spec' else 'Jinja2 template'}."
        )
    return candidate


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ExitSpecError(f"Cannot read exit {what} {path}: {exc}") from exc


def _read_spec(path: Path) -> Any:
    text = _read_text(path, "spec")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            return yaml.safe_load(text)
        except yaml.constructor.ConstructorError as exc:
            raise ExitSpecError(
                f"Exit spec {path}, line {_yaml_line(exc)}: {exc.problem}. YAML tags build "
                "objects, so they are non-literal and not allowed: use plain numbers, strings, "
                "booleans, null and flat lists."
            ) from exc
        except yaml.YAMLError as exc:
            raise ExitSpecError(
                f"Exit spec {path} is not valid YAML (line {_yaml_line(exc)}: "
                f"{getattr(exc, 'problem', None) or exc})."
            ) from exc
    if suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExitSpecError(
                f"Exit spec {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                f"{exc.msg})."
            ) from exc
    raise ExitSpecError(f"Exit spec {path} has suffix {suffix!r}; expected .yaml, .yml or .json.")


def _yaml_line(exc: yaml.YAMLError) -> int | str:
    mark = getattr(exc, "problem_mark", None)
    return mark.line + 1 if mark is not None else "?"


def _validate_spec(data: Any, origin: str) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        extra = sorted(str(key) for key in data if key != "layers")
        if extra or "layers" not in data:
            raise ExitSpecError(
                f"Exit spec {origin}: expected a mapping with the single key 'layers' (or a bare "
                f"list of layers); got keys {sorted(map(str, data))}."
            )
        data = data["layers"]
    if not isinstance(data, list):
        raise ExitSpecError(
            f"Exit spec {origin}: expected a list of layers such as "
            f"[{{layer: Conv2D, filters: 32, kernel_size: 3}}], got {type(data).__name__}."
        )
    if len(data) > _MAX_SPEC_LAYERS:
        raise ExitSpecError(
            f"Exit spec {origin} has {len(data)} layers; at most {_MAX_SPEC_LAYERS} are allowed."
        )
    return [_validate_layer(entry, index, origin) for index, entry in enumerate(data)]


def _validate_layer(entry: Any, index: int, origin: str) -> dict[str, Any]:
    where = f"Exit spec {origin}, layer {index}"
    if not isinstance(entry, dict) or "layer" not in entry:
        raise ExitSpecError(
            f"{where}: expected a mapping like {{layer: Conv2D, filters: 32}}, got {_short(entry)}."
        )
    layer = entry["layer"]
    if not isinstance(layer, str) or layer not in ALLOWED_LAYERS:
        raise ExitSpecError(
            f"{where}: unknown layer {_short(layer)}. Allowed layers: {', '.join(ALLOWED_LAYERS)}."
        )
    signature = inspect.signature(getattr(_lazy.keras().layers, layer))
    params = [
        param.name
        for param in signature.parameters.values()
        if param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and param.name != "self"
    ]
    args = {}
    for key, value in entry.items():
        if key != "layer":
            args[key] = _validate_argument(where, layer, key, value, params)
    return {"layer": layer, "args": args}


def _validate_argument(where: str, layer: str, key: Any, value: Any, params: list[str]) -> Any:
    if not isinstance(key, str) or not key.isidentifier() or keyword.iskeyword(key):
        raise ExitSpecError(f"{where}: argument name {_short(key)} is not a Python identifier.")
    if key == "name":
        raise ExitSpecError(
            f"{where}: argument 'name' is not allowed: EdgeLessPart names the exit's layers itself "
            "(internal layers <exit>_<i>, the final Dense <exit>)."
        )
    if key.startswith("_") or key not in params:
        raise ExitSpecError(
            f"{where}: unknown argument {key!r} for {layer}. Accepted: {', '.join(params)}."
        )
    if not _is_literal(value):
        raise ExitSpecError(
            f"{where}: argument {key}={_short(value)} is non-literal. Use an int, float, bool, "
            "null, an identifier-like string (e.g. relu, same) or a flat list of numbers."
        )
    return tuple(value) if isinstance(value, list) else value


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < _MAX_INT
    return isinstance(value, float) and math.isfinite(value)


def _is_literal(value: Any) -> bool:
    if value is None or isinstance(value, bool) or _is_number(value):
        return True
    if isinstance(value, str):
        return _SAFE_STRING.fullmatch(value) is not None
    if isinstance(value, (list, tuple)):
        return 0 < len(value) <= _MAX_LIST_ITEMS and all(_is_number(item) for item in value)
    return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _py_literal(value: Any) -> str:
    """Jinja filter ``pyliteral``: a checked literal as Python source text."""
    if not _is_literal(value):
        raise ExitSpecError(f"pyliteral: {_short(value)} is non-literal and cannot be rendered.")
    return repr(tuple(value)) if isinstance(value, list) else repr(value)


# --- Jinja2 sandbox -----------------------------------------------------------------------------


class _ExitSandbox(SandboxedEnvironment):
    """The Jinja2 sandbox, plus bounds on ``*`` and ``**`` so a template cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > 1024:
            raise jinja2.exceptions.SecurityError(f"exponent {right} is too large")
        if operator == "*":
            sizes = [len(side) for side in (left, right) if isinstance(side, (str, list, tuple))]
            counts = [side for side in (left, right) if isinstance(side, int)]
            if sizes and counts and sizes[0] * counts[0] > _MAX_CODE_CHARS:
                raise jinja2.exceptions.SecurityError("repetition result is too large")
        return super().call_binop(context, operator, left, right)


def _environment() -> SandboxedEnvironment:
    exits_dir = templates_dir() / "exits"
    if not (exits_dir / "default.py.j2").is_file():
        raise ExitSpecError(
            f"Built-in exit templates not found in {exits_dir}; set {TEMPLATES_ENV} to the "
            "folder that holds exits/default.py.j2."
        )
    env = _ExitSandbox(
        loader=jinja2.FileSystemLoader(str(exits_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pyliteral"] = _py_literal
    return env


def _template(
    env: SandboxedEnvironment, origin: str, *, name: str | None = None, source: str | None = None
) -> jinja2.Template:
    try:
        return env.get_template(name) if name is not None else env.from_string(source or "")
    except jinja2.TemplateSyntaxError as exc:
        raise ExitSpecError(
            f"Exit template {exc.filename or origin} has a syntax error on line {exc.lineno}: "
            f"{exc.message}"
        ) from exc


def _render(template: jinja2.Template, context: dict[str, Any], origin: str) -> str:
    try:
        return template.render(context)
    except ExitSpecError:
        raise
    except Exception as exc:
        line = _template_line(exc)
        where = f" on line {line}" if line is not None else ""
        raise ExitSpecError(
            f"Exit template {origin} failed to render{where} ({_render_problem(exc, context)})."
        ) from exc


def _render_problem(exc: Exception, context: dict[str, Any]) -> str:
    if isinstance(exc, jinja2.exceptions.SecurityError):
        return f"sandbox violation: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return f"undefined template variable: {exc}. Available: {', '.join(sorted(context))}"
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return f"syntax error in {exc.filename or exc.name} on line {exc.lineno}: {exc.message}"
    if isinstance(exc, jinja2.TemplateNotFound):
        return f"included template not found: {exc}"
    return f"{type(exc).__name__}: {exc}"


def _template_line(exc: Exception) -> int | None:
    """The last template line in the traceback (Jinja2 maps its frames back to the template)."""
    line, frame = None, exc.__traceback__
    while frame is not None:
        filename = frame.tb_frame.f_code.co_filename
        if filename == "<template>" or filename.endswith(".j2"):
            line = frame.tb_lineno
        frame = frame.tb_next
    return line
