"""Exit classifiers: specs and templates rendered in the Jinja2 sandbox, checked, then built."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgelesspart.errors import ExitSpecError, ModelError
from edgelesspart.exits.heads import (
    DEFAULT_HEAD,
    DEFAULT_ORIGIN,
    EXIT_HEADS,
    ExitDefinition,
    attach_exit,
    classifier_pooling,
    compile_exit_builder,
    load_exit_definition,
    templates_dir,
)

keras = pytest.importorskip("keras")

EXAMPLES = sorted((templates_dir() / "exits" / "examples").glob("*.*"))
GOOD_TEMPLATE = '''"""A custom exit."""
from keras import layers


def build_exit(x, num_classes, name):
    """Flatten, then softmax."""
    x = layers.Flatten(name=f"{name}_0")(x)
    return layers.Dense({{ num_classes_var }}, activation="softmax", name=name)(x)
'''


def write(tmp_path: Path, filename: str, text: str) -> Path:
    path = tmp_path / filename
    path.write_text(text, encoding="utf-8")
    return path


def build(definition: ExitDefinition, shape: tuple[int, ...], num_classes: int, name="exit_1"):
    inputs = keras.Input(shape)
    return inputs, attach_exit(compile_exit_builder(definition), inputs, num_classes, name)


def tiny_classifier(reducer) -> keras.Model:
    inputs = keras.Input((8, 8, 4))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = reducer(x)
    x = keras.layers.Dropout(0.1)(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


# --- good paths ---------------------------------------------------------------------------------


def test_paper_exit_on_feature_map_copies_the_head_and_gives_probabilities():
    # GIVEN the paper's exit head
    definition = load_exit_definition(head="paper")
    # WHEN it is attached to a 4-D feature map
    inputs, out = build(definition, (8, 8, 4), num_classes=10)
    # THEN it yields (batch, 10) probabilities from a layer named exactly like the exit
    assert definition.kind == "default" and definition.origin == "builtin:paper"
    assert tuple(out.shape) == (None, 10)
    model = keras.Model(inputs, out)
    assert [layer.name for layer in model.layers[1:]] == ["exit_1_0", "exit_1"]
    probabilities = model.predict_on_batch(np.ones((2, 8, 8, 4), np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("head", sorted(EXIT_HEADS))
def test_every_head_on_a_vector_skips_pooling(head):
    # GIVEN a built-in exit head WHEN attached to a 2-D tensor
    inputs, out = build(load_exit_definition(head=head), (16,), num_classes=3)
    # THEN only the softmax Dense is added
    assert tuple(out.shape) == (None, 3)
    assert [layer.name for layer in keras.Model(inputs, out).layers[1:]] == ["exit_1"]


def test_default_head_is_sdn_and_reduces_a_large_map_to_a_4x4_grid():
    # GIVEN the default exit definition
    definition = load_exit_definition()
    assert definition.kind == "default" and definition.origin == DEFAULT_ORIGIN
    assert DEFAULT_HEAD == "sdn" and DEFAULT_ORIGIN == "builtin:sdn"
    # WHEN it is attached to a 16x16x8 feature map
    inputs, out = build(definition, (16, 16, 8), num_classes=10)
    model = keras.Model(inputs, out)
    # THEN max and average pooling (side by side) bring it to 4x4, a 1x1 conv mixes them
    kinds = {type(layer).__name__: layer for layer in model.layers[1:]}
    assert tuple(kinds["Concatenate"].output.shape) == (None, 4, 4, 16)
    assert tuple(kinds["Conv2D"].output.shape) == (None, 4, 4, 64)
    assert tuple(kinds["Flatten"].output.shape) == (None, 4 * 4 * 64)
    assert model.layers[-1].name == "exit_1" and tuple(out.shape) == (None, 10)
    probabilities = model.predict_on_batch(np.ones((2, 16, 16, 8), np.float32))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(("side", "grid"), [(7, 4), (5, 3), (3, 3), (1, 1)])
def test_sdn_head_pools_only_maps_larger_than_the_grid(side, grid):
    # GIVEN the sdn head WHEN attached to a side x side map
    inputs, out = build(load_exit_definition(head="sdn"), (side, side, 4), num_classes=3)
    model = keras.Model(inputs, out)
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    # THEN a map at most 4 wide is not pooled; a larger one is pooled to at most 4x4
    assert ("MaxPooling2D" in kinds) == (side > 4)
    flatten = next(layer for layer in model.layers if type(layer).__name__ == "Flatten")
    assert tuple(flatten.output.shape) == (None, grid * grid * 64)


def test_unknown_head_is_named_with_the_choices():
    with pytest.raises(ExitSpecError, match="Unknown exit head 'resnet'.*sdn, paper, conv"):
        load_exit_definition(head="resnet")


@pytest.mark.parametrize(
    ("pooling", "layer"),
    [("avg", "GlobalAveragePooling2D"), ("max", "GlobalMaxPooling2D"), ("flatten", "Flatten")],
)
def test_default_exit_uses_the_requested_pooling(pooling, layer):
    # GIVEN a pooling kind WHEN the paper exit is rendered and built
    definition = load_exit_definition(pooling=pooling, head="paper")
    inputs, out = build(definition, (8, 8, 4), num_classes=5)
    # THEN the code and the built model use that reducer
    assert f"layers.{layer}(" in definition.code
    assert type(keras.Model(inputs, out).layers[1]).__name__ == layer


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_spec_renders_layers_in_order_then_the_classifier(tmp_path, suffix):
    # GIVEN the same exit spec as YAML and as JSON
    layers = [
        {"layer": "Conv2D", "filters": 8, "kernel_size": [3, 3], "padding": "same"},
        {"layer": "BatchNormalization"},
        {"layer": "ReLU"},
        {"layer": "Dropout", "rate": 0.2},
    ]
    text = json.dumps({"layers": layers})  # JSON is valid YAML too
    # WHEN it is loaded and attached
    definition = load_exit_definition(spec=write(tmp_path, f"exit{suffix}", text))
    inputs, out = build(definition, (8, 8, 4), num_classes=7, name="e2")
    # THEN the spec's layers come first, then global pooling and the softmax Dense
    assert definition.kind == "spec" and definition.origin.endswith(f"exit{suffix}")
    assert "kernel_size=(3, 3)" in definition.code
    assert tuple(out.shape) == (None, 7)
    names = [(layer.name, type(layer).__name__) for layer in keras.Model(inputs, out).layers[1:]]
    assert names == [
        ("e2_0", "Conv2D"),
        ("e2_1", "BatchNormalization"),
        ("e2_2", "ReLU"),
        ("e2_3", "Dropout"),
        ("e2_4", "GlobalAveragePooling2D"),
        ("e2", "Dense"),
    ]


def test_spec_as_bare_list_with_its_own_pooling_adds_no_second_pooling(tmp_path):
    # GIVEN a bare-list YAML spec that already pools
    spec = write(
        tmp_path, "exit.yml", "- {layer: GlobalMaxPooling2D}\n- {layer: Dense, units: 4}\n"
    )
    # WHEN built on a feature map
    inputs, out = build(load_exit_definition(spec=spec), (8, 8, 4), num_classes=2)
    # THEN the rank-2 tensor goes straight into the classifier
    kinds = [type(layer).__name__ for layer in keras.Model(inputs, out).layers[1:]]
    assert kinds == ["GlobalMaxPooling2D", "Dense", "Dense"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_shipped_example_specs_build(example):
    # GIVEN each example spec shipped in templates/exits/examples
    # WHEN it is loaded and attached to an 8x8x4 map
    _, out = build(load_exit_definition(spec=example), (8, 8, 4), num_classes=10)
    # THEN it yields 10 class probabilities
    assert tuple(out.shape) == (None, 10)


def test_custom_template_is_rendered_and_kept_as_code(tmp_path):
    # GIVEN a user template using the documented context
    template = write(tmp_path, "mine.py.j2", GOOD_TEMPLATE)
    # WHEN loaded and attached
    definition = load_exit_definition(template=template)
    _, out = build(definition, (8, 8, 4), num_classes=4)
    # THEN the rendered module is kept verbatim and builds a (batch, 4) exit
    assert definition.kind == "template"
    assert "Dense(num_classes," in definition.code and "{{" not in definition.code
    ast.parse(definition.code)
    assert tuple(out.shape) == (None, 4)


@pytest.mark.parametrize("pooling", ["avg", "max", "flatten"])
def test_example_user_template_builds(pooling):
    # GIVEN the shipped example template WHEN rendered with each pooling
    definition = load_exit_definition(
        template=templates_dir() / "exits" / "conv_pool.py.j2", pooling=pooling
    )
    _, out = build(definition, (8, 8, 4), num_classes=6)
    # THEN it builds a (batch, 6) exit
    assert tuple(out.shape) == (None, 6)


def test_user_template_may_reuse_the_builtin_classifier_macro(tmp_path):
    # GIVEN a user template importing the built-in classifier macro
    text = (
        '{% import "_classifier_head.j2" as head with context %}\n'
        "from keras import layers\n\n\ndef build_exit(x, num_classes, name):\n"
        '    x = layers.Conv2D(4, 1, name=f"{name}_9")(x)\n'
        "{{ head.classifier(pooling, 10) }}\n"
    )
    definition = load_exit_definition(template=write(tmp_path, "t.j2", text), pooling="max")
    # WHEN built THEN the macro's pooling and classifier follow the user's conv
    inputs, out = build(definition, (8, 8, 4), num_classes=3)
    assert [layer.name for layer in keras.Model(inputs, out).layers[1:]] == [
        "exit_1_9",
        "exit_1_10",
        "exit_1",
    ]


@pytest.mark.parametrize(
    ("reducer", "expected"),
    [
        (keras.layers.GlobalAveragePooling2D(), "avg"),
        (keras.layers.GlobalMaxPooling2D(), "max"),
        (keras.layers.Flatten(), "flatten"),
    ],
)
def test_classifier_pooling_reads_the_models_own_head(reducer, expected):
    # GIVEN a tiny model whose head is reducer -> Dropout -> Dense
    model = tiny_classifier(reducer)
    # WHEN its head is inspected THEN the reducer kind is reported
    assert classifier_pooling(model) == expected


def test_templates_dir_honours_the_environment(monkeypatch, tmp_path):
    # GIVEN EDGELESSPART_TEMPLATES pointing elsewhere WHEN resolved THEN that folder is used
    monkeypatch.setenv("EDGELESSPART_TEMPLATES", str(tmp_path))
    assert templates_dir() == tmp_path.resolve()
    # AND loading the default fails with a hint because the folder has no exit templates
    with pytest.raises(
        ExitSpecError, match="Built-in exit templates not found.*EDGELESSPART_TEMPLATES"
    ):
        load_exit_definition()


# --- bad specs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("- {layer: Conv9D}", r"unknown layer 'Conv9D'\. Allowed layers: .*Conv2D"),
        ("- {layer: Conv2D, filterz: 3, kernel_size: 3}", r"unknown argument 'filterz' for Conv2D"),
        ("- {layer: Dense, units: 3, name: sneaky}", r"argument 'name' is not allowed"),
        ("- {layer: Dense, units: {a: 1}}", r"units=\{'a': 1\} is non-literal"),
        ("- {layer: Dense, units: '__import__(\"os\")'}", r"non-literal"),
        (
            "- {layer: Conv2D, filters: 3, kernel_size: [[3], [3]]}",
            r"kernel_size=.* is non-literal",
        ),
        (
            "- {layer: Dense, units: !!python/object/apply:os.system [echo hi]}",
            r"line 1: .*python/object/apply:os.system.*non-literal",
        ),
        ("- {layer: Dense, units: 3, __class__: 1}", r"unknown argument '__class__'"),
        ("layers: []\nextra: 1", r"single key 'layers'"),
        ("layers: 3", r"expected a list of layers"),
        ("- Dense", r"layer 0: expected a mapping"),
        ("layers: [", r"not valid YAML"),
    ],
)
def test_bad_spec_is_rejected_with_the_problem_named(tmp_path, yaml_text, match):
    # GIVEN a bad YAML spec WHEN loaded THEN ExitSpecError names the problem
    with pytest.raises(ExitSpecError, match=match):
        load_exit_definition(spec=write(tmp_path, "bad.yaml", yaml_text))


def test_bad_json_spec_names_the_line(tmp_path):
    # GIVEN truncated JSON WHEN loaded THEN the error names JSON and the line
    with pytest.raises(ExitSpecError, match=r"not valid JSON \(line 2"):
        load_exit_definition(spec=write(tmp_path, "bad.json", '{"layers":\n [ {"layer": '))


def test_non_finite_json_number_is_non_literal(tmp_path):
    spec = write(tmp_path, "nan.json", '[{"layer": "Dropout", "rate": NaN}]')
    with pytest.raises(ExitSpecError, match=r"rate=nan is non-literal"):
        load_exit_definition(spec=spec)


def test_both_spec_and_template_is_an_error(tmp_path):
    spec = write(tmp_path, "a.yaml", "[]")
    template = write(tmp_path, "b.j2", GOOD_TEMPLATE)
    with pytest.raises(ExitSpecError, match="Got both an exit spec .* and an exit template"):
        load_exit_definition(spec=spec, template=template)


@pytest.mark.parametrize("kind", ["spec", "template"])
def test_missing_file_is_named(tmp_path, kind):
    with pytest.raises(ExitSpecError, match=f"Exit {kind} file not found: .*nope"):
        load_exit_definition(**{kind: tmp_path / "nope"})


def test_unknown_spec_suffix(tmp_path):
    with pytest.raises(ExitSpecError, match=r"suffix '\.txt'; expected \.yaml, \.yml or \.json"):
        load_exit_definition(spec=write(tmp_path, "spec.txt", "[]"))


def test_unknown_pooling():
    with pytest.raises(ExitSpecError, match="Unknown exit pooling 'mean'. Expected one of: avg"):
        load_exit_definition(pooling="mean")


# --- bad templates ------------------------------------------------------------------------------


def test_template_syntax_error_names_the_line(tmp_path):
    template = write(tmp_path, "t.j2", "from keras import layers\n\n{% if %}\n")
    with pytest.raises(ExitSpecError, match="syntax error on line 3: Expected an expression"):
        load_exit_definition(template=template)


def test_undefined_template_variable(tmp_path):
    template = write(tmp_path, "t.j2", "x = 1\n{{ nope }}\n")
    with pytest.raises(ExitSpecError, match=r"on line 2 \(undefined template variable: 'nope'"):
        load_exit_definition(template=template)


@pytest.mark.parametrize(
    "payload",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ self.__init__ }}",
        "{{ lipsum.__globals__['os'] }}",
        "{{ 'a' * 1000000000 }}",
        "{{ 9 ** 99999999 }}",
    ],
)
def test_sandbox_escape_attempts_are_blocked(tmp_path, payload):
    # GIVEN a template that tries to reach Python internals WHEN rendered THEN the sandbox refuses
    template = write(tmp_path, "evil.j2", payload)
    with pytest.raises(ExitSpecError, match="failed to render.*sandbox violation"):
        load_exit_definition(template=template)


def test_rendered_code_that_is_not_python(tmp_path):
    template = write(tmp_path, "t.j2", "def build_exit(x, num_classes, name):\nreturn x\n")
    with pytest.raises(ExitSpecError, match=r"not valid Python \(line 2: expected an indented"):
        load_exit_definition(template=template)


FORBIDDEN_BODIES = [
    ("import os\n    return os", r"import of 'os'"),
    ("from keras import saving\n    return saving", r"from keras import saving"),
    ("import keras\n    return keras.utils", r"keras.utils \(only keras.activations"),
    ("return layers.TFSMLayer('/tmp/model')", r"attribute 'TFSMLayer'"),
    ("return open('/etc/passwd')", r"use of the name 'open'"),
    ("return x.__class__", r"attribute '__class__'"),
    ("return '{0.__class__}'.format(x)", r"attribute 'format'"),
    ("return layers.Lambda(len)(x)", r"attribute 'Lambda'"),
    ("global layers\n    return x", r"Global is not allowed"),
    ("return (lambda y=1: y)()", r"Lambda is not allowed"),
    ("while True:\n        pass", r"While is not allowed"),
    ("match x:\n        case str(__class__=c):\n            return c", r"Match is not allowed"),
]


@pytest.mark.parametrize(("body", "match"), FORBIDDEN_BODIES, ids=[m for _, m in FORBIDDEN_BODIES])
def test_rendered_code_with_forbidden_constructs_is_rejected(tmp_path, body, match):
    # GIVEN a template that renders valid Python doing something forbidden
    text = f"from keras import layers\n\n\ndef build_exit(x, num_classes, name):\n    {body}\n"
    template = write(tmp_path, "t.py.j2", text)
    # WHEN loaded THEN the AST check names the construct and its line
    with pytest.raises(ExitSpecError, match=rf"line \d+: forbidden construct: .*{match}"):
        load_exit_definition(template=template)


@pytest.mark.parametrize(
    ("code", "match"),
    [
        ("print(1)\n", r"top-level Expr"),
        ("def build_exit(x, n, name):\n    return x\n", r"exactly one top-level function"),
        ("def build_exit(x, num_classes, name=1):\n    return x\n", r"without defaults"),
        ("import keras\n", r"found: none"),
    ],
)
def test_compile_rechecks_a_definition_built_by_hand(code, match):
    # GIVEN an ExitDefinition that never went through load_exit_definition
    definition = ExitDefinition(kind="template", origin="handmade", code=code)
    # WHEN compiled THEN the same checks run
    with pytest.raises(ExitSpecError, match=match):
        compile_exit_builder(definition)


# --- bad outputs when attaching -----------------------------------------------------------------


def test_output_with_wrong_class_count(tmp_path):
    text = GOOD_TEMPLATE.replace("{{ num_classes_var }}", "3")
    definition = load_exit_definition(template=write(tmp_path, "t.j2", text))
    with pytest.raises(ExitSpecError, match=r"outputs shape \(None, 3\).*has 10 classes"):
        build(definition, (8, 8, 4), num_classes=10)


def test_output_layer_must_carry_the_exit_name(tmp_path):
    text = GOOD_TEMPLATE.replace("name=name)", 'name="head")')
    definition = load_exit_definition(template=write(tmp_path, "t.j2", text))
    with pytest.raises(ExitSpecError, match="final layer is named 'head'.*named exactly 'exit_1'"):
        build(definition, (8, 8, 4), num_classes=4)


def test_keras_error_while_building_names_exit_and_input_shape(tmp_path):
    # GIVEN a spec with a 2-D convolution WHEN attached to a vector THEN Keras' error is wrapped
    spec = write(tmp_path, "s.yaml", "- {layer: Conv2D, filters: 2, kernel_size: 3}\n")
    with pytest.raises(ExitSpecError, match=r"Exit 'exit_1' could not be built on .* \(None, 16\)"):
        build(load_exit_definition(spec=spec), (16,), num_classes=3)


def test_exit_code_runs_with_a_small_builtins_table(tmp_path):
    # GIVEN exit code calling a builtin outside the allow-list (print is not forbidden by the AST)
    text = GOOD_TEMPLATE.replace("    x = layers.Flatten", "    print(x)\n    x = layers.Flatten")
    definition = load_exit_definition(template=write(tmp_path, "t.j2", text))
    # WHEN built THEN the name does not resolve and the error is wrapped
    with pytest.raises(ExitSpecError, match="could not be built.*NameError: name 'print'"):
        build(definition, (8, 8, 4), num_classes=4)


def test_template_cannot_include_files_outside_the_exit_templates(tmp_path):
    template = write(tmp_path, "t.j2", '{% include "../../../etc/passwd" %}')
    with pytest.raises(ExitSpecError, match="included template not found"):
        load_exit_definition(template=template)


def test_model_with_spec_exit_round_trips_through_safe_keras_file(tmp_path):
    # GIVEN a backbone with a spec exit attached at its cut point
    inputs = keras.Input((8, 8, 4))
    cut = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs)
    builder = compile_exit_builder(load_exit_definition(spec=EXAMPLES[0]))
    model = keras.Model(inputs, attach_exit(builder, cut, 5, "exit_1"))
    # WHEN saved and loaded with safe_mode=True
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    # THEN it computes the same probabilities
    x = np.random.default_rng(0).random((2, 8, 8, 4), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict_on_batch(x), model.predict_on_batch(x), rtol=1e-5)


def test_classifier_pooling_of_a_vector_model_and_of_an_unbuilt_model():
    inputs = keras.Input((6,))
    vector_model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(4)(inputs)))
    assert classifier_pooling(vector_model) == "avg"
    with pytest.raises(ModelError, match="has no defined outputs"):
        classifier_pooling(keras.Sequential([keras.layers.Dense(2)]))


def test_importing_exits_does_not_import_tensorflow():
    code = "import sys, edgelesspart.exits.heads; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False", result.stderr


def test_templates_dir_falls_back_to_the_wheel_installed_copy(tmp_path, monkeypatch):
    """Outside a source checkout the templates come from <prefix>/share/edgelesspart."""
    import sys

    import edgelesspart
    from edgelesspart.exits.heads import TEMPLATES_ENV, templates_dir

    monkeypatch.delenv(TEMPLATES_ENV, raising=False)
    site = tmp_path / "site-packages" / "edgelesspart"
    site.mkdir(parents=True)
    monkeypatch.setattr(edgelesspart, "__file__", str(site / "__init__.py"))
    installed = tmp_path / "prefix" / "share" / "edgelesspart" / "templates"
    (installed / "exits").mkdir(parents=True)
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))
    assert templates_dir() == installed
    monkeypatch.setenv(TEMPLATES_ENV, str(tmp_path))
    assert templates_dir() == tmp_path.resolve()
