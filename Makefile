# Two entry points for a fresh clone: `make test` and (with the server issue) `make serve`.
# Each creates .venv, installs what it needs (Python packages, compiled extensions, Debian
# packages) and runs.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SILERO_VAD_VERSION := 6.2.3
# Real peers the tests talk to: sipp, baresip, Kamailio, headless Chromium.
DEBIAN_TEST_PACKAGES := sip-tester baresip kamailio chromium

.PHONY: test lint pytest venv install-test install-debian build bench serve clean weights

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

venv: $(PY)

# The package in editable mode with its test extras; the silero-vad wheel without its torch
# dependency, only for the official ONNX model the accuracy tests compare against.
install-test: $(PY)
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps silero-vad==$(SILERO_VAD_VERSION)

# Installs the Debian packages the tests need, when apt-get exists and some are missing.
install-debian:
	@missing=""; for p in $(DEBIAN_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ] && command -v apt-get >/dev/null; then \
		echo "installing Debian packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

# `pip install -e .` builds the extensions in place already; this rebuilds after .pyx edits.
build: $(PY)
	$(PIP) install --quiet 'Cython>=3.0' 'setuptools>=77' numpy
	$(PY) setup.py build_ext --inplace --quiet

test: install-debian install-test build lint pytest

lint:
	$(VENV)/bin/ruff check activecall tests bench scripts setup.py
	$(VENV)/bin/ruff format --check activecall tests bench scripts setup.py
	$(VENV)/bin/mypy

pytest:
	$(PY) -m pytest -q

# Benchmarks need extra packages (and Debian's libc++1 for TEN VAD).
bench: install-test build
	$(PIP) install --quiet -e '.[bench]'
	@command -v apt-get >/dev/null && (dpkg -s libc++1 >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq libc++1)) || true
	$(PY) -m bench.codecs
	$(PY) -m bench.vad_rtf
	$(PY) -m bench.startup

# Re-extract the TinySilero weights from the official silero-vad wheel (needs the network).
weights: $(PY)
	$(PIP) install --quiet onnx
	$(PY) scripts/extract_silero_weights.py

# Installs the package (and its compiled kernels) and runs the server with embedded defaults:
# HTTP and WebSocket on 0.0.0.0:8080, one worker per CPU. Pass flags with ARGS="--workers 2".
serve: $(PY)
	$(PIP) install --quiet -e .
	$(VENV)/bin/activecall serve $(ARGS)

clean:
	rm -rf build activecall/_native/*.so activecall/_native/*.c activecall/_native/*.html
