# The README's two set-up commands are `make demo` (the main job) and `make test` (install + lint + tests).
# Both create ./.venv on first use. torch is pinned to the CPU build on purpose: a bare `torch` pulls CUDA wheels.
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install caddy datasets lint format test test-unit build demo bench peers clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[serve,dev]'
	touch $@

# The front door (docs/fleet.md) is Caddy from the OS's packages: installed when absent (as root, or with sudo).
caddy:
	@command -v caddy >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "error: Caddy is missing and this user cannot install it: run 'apt-get install caddy' as root" >&2; exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: Caddy is missing: install Caddy 2.6+ (https://caddyserver.com/docs/install)" >&2; exit 1; }; \
	  echo "installing caddy (apt-get)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq caddy >/dev/null; }
	@caddy version

# Fashion-MNIST (Debian's dataset-fashion-mnist, MIT): the real images `tritune data` writes for a model's input.
datasets:
	@test -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else \
	    echo "error: Fashion-MNIST is missing and this user cannot install it: run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 1; fi; \
	  command -v apt-get >/dev/null 2>&1 || { echo "error: Fashion-MNIST is missing: install Debian's dataset-fashion-mnist" >&2; exit 1; }; \
	  echo "installing dataset-fashion-mnist (apt-get)"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; }

install: $(VENV)/.installed caddy datasets

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest tests/unit

build: install
	$(VENV)/bin/tritune build

# The main job on the embedded default (CPU target, bundled data, local Triton): build if needed, serve, sweep,
# orchestrate under a Locust step load, write runs/demo-*/report.html.
demo: install
	$(VENV)/bin/tritune demo

bench: install
	$(PY) bench/variants.py --build

# perf_analyzer, Model Analyzer and the proxies measured beside Caddy, under ./.peers (bench/install_peers.sh);
# then `.venv/bin/python bench/peers.py` (docs/benchmarks.md#peers). Not part of `make test`.
peers: install
	PEERS=.peers bash bench/install_peers.sh

clean:
	rm -rf model_repository/cnn* model_repository/manifest.json .cache .pytest_cache .ruff_cache
