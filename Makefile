# certbot-epages: `make demo` and `make test` set up everything they need on a fresh Debian.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEBS := bind9 bind9-dnsutils pebble nginx rsync openssh-server openssh-client iproute2 \
	knot pdns-server pdns-backend-sqlite3 pdns-backend-bind
# Debian's own certbot and the libraries the plugin takes from Debian: `make compat` tests them.
COMPAT_DEBS := certbot python3-certbot python3-dnspython python3-jinja2 python3-yaml python3-venv
WHEEL = $(wildcard dist/certbot_epages-*.whl)
PYTEST_ARGS ?=

.PHONY: all deps venv install test unit integration lint demo compat clean

all: test

# Debian packages of the real servers the sandbox runs; installed only when missing.
deps:
	@missing=""; for p in $(DEBS) $(if $(COMPAT),$(COMPAT_DEBS),); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install$$missing"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel build
	touch $@

venv: $(VENV)/.created

# The tests run against the installed wheel, so a file missing from the wheel fails them.
install: venv
	rm -rf dist build certbot_epages.egg-info
	$(PY) -m build --wheel --no-isolation --outdir dist . >/dev/null
	$(PY) -m pip install -q "$$(ls dist/certbot_epages-*.whl)[dev]"
	$(PY) -m pip install -q --force-reinstall --no-deps "$$(ls dist/certbot_epages-*.whl)"
	rm -rf build certbot_epages.egg-info

test: deps install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

unit: install
	$(VENV)/bin/pytest -m unit $(PYTEST_ARGS)

integration: deps install
	$(VENV)/bin/pytest -m integration $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check certbot_epages tests bench
	$(VENV)/bin/mypy

# The wheel with Debian 12's certbot, Ubuntu 24.04's versions and the newest (compat/run).
compat: install
	$(MAKE) --no-print-directory deps COMPAT=1
	VENV=$(VENV) compat/run

demo: deps install
	$(VENV)/bin/certbot-epages sandbox demo $(if $(KEEP),--keep,) $(if $(DIR),--dir $(DIR),)

# Benchmark on the sandbox (not part of `make test`): writes bench/results.md and results.json.
# `make bench PARTS=shared-10k,sites-10k` runs some parts (bench/README.md lists them) and keeps
# the others' earlier numbers; BENCH_ARGS passes anything else to bench/run.py.
PARTS ?=
.PHONY: bench
bench: deps install
	$(VENV)/bin/pip install -q certbot-dns-rfc2136
	$(VENV)/bin/python bench/run.py $(if $(PARTS),--parts $(PARTS) --merge,) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .compat dist build *.egg-info .mypy_cache .ruff_cache .pytest_cache
