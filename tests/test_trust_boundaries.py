"""Trust boundaries: what the code base may never do, checked on the source and at the services.

1. **Source scan** (new here): every ``.py`` file under ``edgelesspart/``, ``edge_runtime/``,
   ``cloud_functions/``, ``experiments/`` and ``templates/`` is parsed (AST, so docstrings that
   *mention* pickle do not count) and the rendered-Python templates (``*.py.j2``) are read as
   text. Refused: importing or using ``pickle``, ``cPickle``, ``cloudpickle``, ``dill``,
   ``marshal``, ``shelve`` or ``joblib``; ``allow_pickle=True``; ``np.load`` without
   ``allow_pickle=False``; ``yaml.load`` / ``full_load`` / ``unsafe_load`` (only
   ``yaml.safe_load``); any ``load_model(...)`` call without ``safe_mode=True``; ``eval`` and
   ``exec`` outside the one reviewed site (``edgelesspart/exits/heads.py`` executes exit code that
   was
   rendered in the Jinja2 sandbox and passed an AST allow-list, with restricted builtins).
   The scanner itself is tested on small bad snippets, so a silent scanner cannot pass.
2. **Jinja2 sandbox**: templates reaching ``__class__``, ``__globals__``, ``__subclasses__``,
   ``__import__`` or an import of a template outside the exit templates fail to render.
   More escape attempts: ``tests/exits/test_heads.py::test_sandbox_escape_attempts_are_blocked`` and
   ``test_rendered_code_with_forbidden_constructs_is_rejected``.
3. **Bundles at the services**: a tampered segment file or a manifest path that escapes the
   bundle stops the edge and cloud services from starting, with the file named. The loader's own
   tests: ``tests/runtime/test_manifest.py`` (``test_tampered_file_is_refused``,
   ``test_path_traversal_is_refused``, ``test_traversal_inside_manifest_is_refused``) and
   ``tests/runtime/test_bundle.py`` (``test_tampered_file_is_refused_unless_verification_is_off``,
   ``test_path_escape_in_manifest_is_refused``).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from edgelesspart.errors import BundleError, ExitSpecError

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("edgelesspart", "edge_runtime", "cloud_functions", "experiments", "templates")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "marshal", "shelve",
                  "joblib"}
#: The one place allowed to exec: exit code rendered in the sandbox and checked by an AST
#: allow-list, run with restricted builtins (see edgelesspart.exits.heads.compile_exit_builder).
EXEC_ALLOWED = {"edgelesspart/exits/heads.py"}


def _name(node: ast.AST) -> str:
    """Dotted name of a call target (``np.load``, ``keras.saving.load_model``, ``exec``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value.value if isinstance(keyword.value, ast.Constant) else keyword
    return None


def _call_problems(call: ast.Call, where: str) -> list[str]:
    name = _name(call.func)
    last = name.rsplit(".", 1)[-1]
    problems = []
    if _keyword(call, "allow_pickle") is True:
        problems.append(f"{where}: allow_pickle=True")
    if name in ("np.load", "numpy.load") and _keyword(call, "allow_pickle") is not False:
        problems.append(f"{where}: {name}(...) without allow_pickle=False")
    if last == "load_model" and _keyword(call, "safe_mode") is not True:
        problems.append(f"{where}: {name}(...) without safe_mode=True")
    if name in ("yaml.load", "yaml.full_load", "yaml.unsafe_load", "yaml.load_all"):
        problems.append(f"{where}: {name}(...) (use yaml.safe_load)")
    if name in ("eval", "exec", "builtins.eval", "builtins.exec"):
        problems.append(f"{where}: {name}(...)")
    return problems


def scan_python(source: str, path: str) -> list[str]:
    """Every forbidden construct in one Python file, as ``path:line: what``."""
    problems: list[str] = []
    for node in ast.walk(ast.parse(source, path)):
        where = f"{path}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            problems += [f"{where}: import {a.name}" for a in node.names
                         if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in BANNED_MODULES:
                problems.append(f"{where}: from {node.module} import ...")
            problems += [f"{where}: import of {a.name}" for a in node.names
                         if a.name in BANNED_MODULES]
        elif isinstance(node, ast.Attribute) and _name(node).split(".")[0] in BANNED_MODULES:
            problems.append(f"{where}: use of {_name(node)}")
        elif isinstance(node, ast.Call):
            problems += _call_problems(node, where)
    return problems


TEMPLATE_PATTERNS = re.compile(
    r"\bimport\s+(?:c?pickle|cloudpickle|dill|marshal|shelve|joblib)\b|\bpickle\.\w|"
    r"\bmarshal\.loads\b|allow_pickle\s*=\s*True|\b(?:eval|exec)\s*\("
)


def scan_template(text: str, path: str) -> list[str]:
    """Forbidden constructs in a template that renders Python (text patterns, line numbers)."""
    return [
        f"{path}:{number}: {match.group(0)}"
        for number, line in enumerate(text.splitlines(), 1)
        for match in TEMPLATE_PATTERNS.finditer(line)
    ]


def scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.py.j2"))
    return [f for f in files if "__pycache__" not in f.parts]


# --- 1. source scan --------------------------------------------------------------------------


def test_the_scan_covers_the_code_base():
    files = {f.relative_to(ROOT).as_posix() for f in scanned_files()}
    for expected in ("edgelesspart/runtime/codecs.py", "edge_runtime/app.py",
                     "cloud_functions/handler.py", "experiments/fault_harness.py",
                     "edgelesspart/model/zoo.py", "templates/exits/default.py.j2"):
        assert expected in files
    assert len(files) > 60


def test_no_pickle_unsafe_loading_or_stray_exec_in_the_source():
    problems = []
    for path in scanned_files():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".py":
            found = scan_python(text, rel)
            if rel in EXEC_ALLOWED:
                found = [p for p in found if not p.endswith(("exec(...)",))]
        else:
            found = scan_template(text, rel)
        problems += found
    assert problems == []


def test_the_reviewed_exec_site_is_still_the_only_one_and_still_restricted():
    source = (ROOT / "edgelesspart/exits/heads.py").read_text()
    execs = [p for p in scan_python(source, "exits.py") if p.endswith("exec(...)")]
    assert len(execs) == 1
    assert '"__builtins__": table' in source and "check_exit_code(definition.code" in source


BAD_SNIPPETS = [
    ("import pickle", "import pickle"),
    ("import cloudpickle as cp", "import cloudpickle"),
    ("from dill import loads", "from dill import"),
    ("import marshal\nmarshal.loads(b'')", "use of marshal.loads"),
    ("from joblib import load", "from joblib import"),
    ("import numpy as np\nnp.load('x.npy')", "without allow_pickle=False"),
    ("import numpy\nnumpy.load('x.npz', allow_pickle=True)", "allow_pickle=True"),
    ("import keras\nkeras.models.load_model('m.keras')", "without safe_mode=True"),
    ("from keras.saving import load_model\nload_model('m', safe_mode=False)", "safe_mode=True"),
    ("import yaml\nyaml.load(open('c'))", "use yaml.safe_load"),
    ("eval('1 + 1')", "eval(...)"),
    ("import pickle as p", "import pickle"),
]


@pytest.mark.parametrize(("source", "problem"), BAD_SNIPPETS)
def test_the_scanner_finds_each_forbidden_construct(source, problem):
    found = scan_python(source, "bad.py")
    assert found and any(problem in p for p in found), found


def test_the_scanner_accepts_the_safe_forms():
    safe = (
        '"""We never pickle. pickle.loads is banned."""\n'
        "import numpy as np\nimport yaml\nimport keras\n"
        "np.load('x.npz', allow_pickle=False)\nyaml.safe_load('a: 1')\n"
        "keras.saving.load_model('m.keras', safe_mode=True, compile=False)\n"
    )
    assert scan_python(safe, "good.py") == []
    assert scan_template("x = {{ value }}\n# never pickle\n", "t.py.j2") == []
    assert scan_template("import pickle\n", "t.py.j2") == ["t.py.j2:1: import pickle"]


# --- 2. Jinja2 sandbox -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "pattern"),
    [
        ("{{ ''.__class__ }}", "sandbox violation"),
        ("{{ ().__class__.__base__.__subclasses__() }}", "sandbox violation"),
        ("{{ [].__class__.__mro__[1].__subclasses__() }}", "sandbox violation"),
        ("{{ range.__init__.__globals__ }}", "sandbox violation"),
        ("{{ joiner.__init__.__globals__['os'] }}", "sandbox violation"),
        ("{{ namespace.__init__.__globals__.__builtins__ }}", "sandbox violation"),
        ("{{ __import__('os').system('true') }}", "undefined template variable"),
        ("{% import 'os' as os %}{{ os.system }}", "not found"),
        ("{% from '../../edgelesspart/exits/heads.py' import x %}", "not found"),
    ],
)
def test_templates_cannot_reach_python_internals(tmp_path, payload, pattern):
    from edgelesspart.exits.heads import load_exit_definition

    template = tmp_path / "evil.py.j2"
    template.write_text(payload)
    with pytest.raises(ExitSpecError, match=f"(?s)failed to render.*{pattern}"):
        load_exit_definition(template=template)


# --- 3. bundles at the services --------------------------------------------------------------


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def _segment_file(bundle: Path, stage: str) -> str:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return next(s["files"]["tflite"] for s in manifest["segments"] if s["stage"] == stage)


def _tamper(bundle: Path, rel: str) -> None:
    victim = bundle / rel
    victim.write_bytes(victim.read_bytes()[:-8] + b"tampered")


def test_edge_service_refuses_a_tampered_bundle(bundle_copy):
    from edge_runtime import create_app

    rel = _segment_file(bundle_copy, "edge")
    _tamper(bundle_copy, rel)
    with pytest.raises(BundleError, match=f"'{re.escape(rel)}' does not match its hash"):
        create_app(bundle_copy)


def test_cloud_services_refuse_a_tampered_bundle(bundle_copy):
    from cloud_functions.handler import Container
    from cloud_functions.local_server import create_app

    rel = _segment_file(bundle_copy, "cloud")
    _tamper(bundle_copy, rel)
    with pytest.raises(BundleError, match="does not match its hash"):
        create_app(bundle_copy)
    with pytest.raises(BundleError, match="does not match its hash"):
        Container(bundle_copy).acquire()


def test_serve_edge_names_the_tampered_file_in_one_line(bundle_copy, capsys, monkeypatch):
    import edge_runtime.wsgi
    from edgelesspart.cli import main

    monkeypatch.setattr(edge_runtime.wsgi, "serve_edge", lambda *a, **k: pytest.fail("served"))
    rel = _segment_file(bundle_copy, "edge")
    _tamper(bundle_copy, rel)
    assert main(["serve-edge", str(bundle_copy)]) == 2
    err = capsys.readouterr().err
    assert rel in err and "hash" in err and "Traceback" not in err


@pytest.mark.parametrize("escape", ["../outside.tflite", "/etc/passwd", "segments/../../x"])
def test_services_refuse_a_manifest_path_that_escapes_the_bundle(bundle_copy, escape):
    from cloud_functions.local_server import create_app as create_cloud
    from edge_runtime import create_app as create_edge

    path = bundle_copy / "manifest.json"
    data = json.loads(path.read_text())
    first = data["segments"][0]["files"]["tflite"]
    data["files"][escape] = data["files"].pop(first)
    data["segments"][0]["files"]["tflite"] = escape
    path.write_text(json.dumps(data))
    for create in (create_edge, create_cloud):
        with pytest.raises(BundleError, match="(?i)outside|escape|relative|absolute|traversal"):
            create(bundle_copy)
