# Two commands on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo lint test test-fast test-other-precision venv label-env deploy-env clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# CPU wheel of torch first (a GPU user: install the CUDA build of torch==2.13.0 instead, see README)
	$(PIP) install -q --no-compile torch==2.13.0
	$(PIP) install -q --no-compile -c requirements/constraints.txt -e ".[test]"
	# bytecode on all cores (pip compiles one file at a time: 96 s -> 70 s on 2 cores); one torch test file is
	# Python 3.12 syntax, which pip skips too
	$(PY) -m compileall -q -j 0 -x py312 $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') > /dev/null
	touch $(STAMP)

venv: $(STAMP)

## Main job: the whole MGCC pipeline on built-in phantom data.
demo: $(STAMP)
	$(VENV)/bin/mgcc run --preset demo

## Separate environments for the integrations (MONAI Label needs pydicom 2, the Deploy SDK pydicom 3).
label-env:
	apps/monailabel/setup_env.sh

deploy-env:
	apps/deploy/setup_env.sh

## The lint and format gate (ruff, pinned and configured in pyproject.toml); `make test` runs it first.
## `ruff check --fix .` and `ruff format .` resolve most of what it reports.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

## Default test suite, then the integration tests (marked `integration`), which use the two extra environments.
## They run one process per core (`-n 2`), a test file per worker (its module fixtures are built once); each
## test's own processes use one thread. Then the tests marked `precision` as on the other kind of CPU.
test: $(STAMP) lint label-env deploy-env
	$(PY) -m pytest
	$(PY) -m pytest -m integration -n 2 --dist loadfile
	$(MAKE) test-other-precision

## The integration tests whose results the precision could change, with `amp: auto` acting as on the other kind of
## CPU (MGCC_CPU_BFLOAT16): float32 on a CPU with bfloat16 in hardware, bfloat16 (oneDNN's reference kernels, same
## rounding, slower) on one without.
OTHER_CPU_BF16 = $(PY) -c "from mgcc import SEG_BUNDLE; from mgcc.bundles import import_bundle_scripts; \
	print(0 if import_bundle_scripts(SEG_BUNDLE).inferer.cpu_has_native_bfloat16() else 1)"
test-other-precision: $(STAMP) label-env deploy-env
	MGCC_CPU_BFLOAT16=$$($(OTHER_CPU_BF16)) $(PY) -m pytest -m "integration and precision" -n 2 --dist loadfile

test-fast: $(STAMP)
	$(PY) -m pytest -x -q

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
