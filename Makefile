# Makefile — the contributor's tasks (CONTRIBUTING.md says when to use which).
# Every target uses the python on PATH (a venv is expected); nothing here is needed to run shmlog.
PYTHON ?= python3
ASAN_PRELOAD = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libubsan.so)
C_FACING_TESTS = tests/native

.PHONY: build test test-one lint format typecheck sanitize bench bench-quick clean

build:            ## (re)build the C extensions in place: after any edit under csrc/
	$(PYTHON) -m pip install -q --no-deps -e .

test:             ## the README's test command (what .ci/run runs)
	tools/test-deps && $(PYTHON) -m pip install -q -e '.[test,bench]' && $(PYTHON) -m pytest -n auto

test-one:         ## make test-one T=tests/integration/test_api.py::test_create_list_describe_delete
	$(PYTHON) -m pytest -q -p no:xdist $(T)

lint:             ## ruff's lint rules, the format check and the layer contracts (import-linter)
	$(PYTHON) -m ruff check shmlog tests tools benchmarks
	$(PYTHON) -m ruff format --check shmlog tests tools benchmarks
	lint-imports

format:           ## ruff format over the tree (changes files)
	$(PYTHON) -m ruff format shmlog tests tools benchmarks

typecheck:        ## mypy over the package ([tool.mypy] in pyproject.toml)
	$(PYTHON) -m mypy

sanitize:         ## the C-facing tests on an ASan+UBSan build, then the normal build again
	SHMLOG_SANITIZE=1 $(PYTHON) -m pip install -q --no-deps -e .
	LD_PRELOAD="$(ASAN_PRELOAD)" \
	ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:handle_segv=0:handle_sigbus=0 \
	UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	$(PYTHON) -m pytest -q -p no:cacheprovider -n 2 $(C_FACING_TESTS); \
	rc=$$?; $(PYTHON) -m pip install -q --no-deps -e .; exit $$rc

bench-quick:      ## the side-by-side benchmarks, short (minutes)
	$(PYTHON) -m benchmarks --quick

bench:            ## the full side-by-side benchmarks (tens of minutes) and the async rows
	$(PYTHON) -m benchmarks && $(PYTHON) -m benchmarks.aio

clean:
	rm -rf build *.egg-info shmlog/*.so
