# EdgeLessPart: `make demo` builds the default bundle, `make test` runs the test suite.
# Both create .venv on first use and install the package with everything it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LEAN_VENV ?= .venv-lean
DEMO_BUNDLE ?= bundles/demo
# The paper's setting (docs/demo.md): a Raspberry-Pi-class edge and a cloud function on one
# campus network, the paper's memory rule; 64x64 digits give the edge enough work to offload.
# Training is capped (8 backbone, 8 exit epochs) to keep the demo short (P7, docs/demo.md);
# the build says it stopped at the cap. `edgelesspart build` without --epochs trains to
# convergence (docs/demo.md).
DEMO_LINK ?= experiments/demo/campus-lan.json
DEMO_BUILD_FLAGS ?= --constraint memory --image-size 64 --edge-device rpi4 \
	--cloud-device gcf-2gb --link $(DEMO_LINK) --epochs 8 --exit-epochs 8

.PHONY: demo test test-lean lint check bench bench-smoke clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[build,codecs,dev,pipeline,slimedge,serve-bench]"
	touch $(STAMP)

# The demo: build, inspect and evaluate the default bundle, then serve it for real
# (serve-cloud + serve-edge on free loopback ports), replay its test split as PNG images through
# POST /v1/infer and stop both services (docs/demo.md).
demo: $(STAMP)
	$(BIN)/edgelesspart build $(DEMO_BUILD_FLAGS) --out $(DEMO_BUNDLE) --overwrite
	$(BIN)/edgelesspart inspect $(DEMO_BUNDLE)
	$(BIN)/edgelesspart evaluate $(DEMO_BUNDLE) --link $(DEMO_LINK)
	$(BIN)/python experiments/demo_serve.py $(DEMO_BUNDLE)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The lean install (no TensorFlow): runtime core, services and cloud function only.
test-lean: $(STAMP)
	test -x $(LEAN_VENV)/bin/python || $(PYTHON) -m venv $(LEAN_VENV)
	$(LEAN_VENV)/bin/python -m pip install -q -e ".[codecs]" pytest pytest-timeout hypothesis scikit-learn
	$(BIN)/python -c "from pathlib import Path; import sys; sys.path.insert(0, 'tests'); \
	from bundle_factory import build_tiny_bundle; p = Path('build/lean-bundle'); \
	p.exists() or build_tiny_bundle(p)"
	EDGELESSPART_TEST_BUNDLE=build/lean-bundle $(LEAN_VENV)/bin/python -m pytest -q -m "not needs_tf" \
		tests/runtime tests/edge_runtime tests/cloud_functions tests/service_http

# ruff, then the dependency rule (docs/architecture.md): import-linter's contracts in pyproject.toml.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

check: lint test

bench: $(STAMP)
	$(BIN)/python experiments/bench_all.py

# Every benchmark's --quick mode, run to completion (CI runs it so a broken script cannot land);
# the figures of a smoke run are not meaningful.
bench-smoke: $(STAMP)
	$(BIN)/python experiments/bench_all.py --quick --strict --out results/bench-smoke

clean:
	rm -rf $(VENV) $(LEAN_VENV) build results bundles
