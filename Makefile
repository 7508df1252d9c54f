# softprompt: the commands. `make setup` then `make test`; see README.md and the docs site (`make docs`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-fast docs lint bench help replicate bench-serving serve

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

setup:  ## create .venv and install the project with pinned dependencies
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .

# The suite runs on xdist workers (one per core by default; TEST_WORKERS=0 runs it in one process). --dist
# loadgroup sends the tests of one xdist_group (a costly shared fixture) to the same worker. TEST_ARGS= adds
# pytest arguments (e.g. TEST_ARGS='-k serve'). The markers are documented in pyproject.toml.
TEST_WORKERS ?= auto
TEST_ARGS ?=
FAST = not slow and not pipeline and not server and not browser and not docs
XDIST = $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadgroup)

test: lint docs  ## lint, build the docs, then run the whole test suite (tiny models, CPU, offline)
	SOFTPROMPT_DOCS_SITE=$(CURDIR)/build/site $(BIN)/pytest $(XDIST) $(TEST_ARGS)

test-fast:  ## the unit tests only (no pipeline, server, browser or docs build): the loop while editing
	$(BIN)/pytest $(XDIST) -m "$(FAST)" $(TEST_ARGS)

docs:  ## build the docs site into build/site with --strict (a broken link or a missing page fails)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings and --strict then passes

lint:  ## ruff
	$(BIN)/ruff check src tests components pipelines benchmarks docs

bench:  ## run the benchmarks; results under benchmarks/results/
	$(BIN)/python benchmarks/train_step.py

bench-serving:  ## the serving benchmark: softprompt serve on loopback; writes benchmarks/results/serving.{json,md}
	$(BIN)/python benchmarks/serving.py

# `make serve REGISTRY=DIR MODEL=tiny TASKS=rte,cb PORT=8080` (docs/serving.md); unset ones come from params.yaml.
REGISTRY ?= .
TASKS ?=
PORT ?=
serve:  ## serve every task's production prompt over HTTP (REGISTRY= checkout or URL, MODEL=, TASKS=, PORT=)
	$(BIN)/softprompt serve --registry $(REGISTRY) $(if $(MODEL),--model $(MODEL)) $(if $(TASKS),--tasks $(TASKS)) \
		$(if $(PORT),--port $(PORT))

replicate:  ## build the CPU base once (DVC-cached), then the paper's comparisons on AG News (docs/replication.md; needs ../shared)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro base-lm
	$(BIN)/python benchmarks/replicate.py

# ---- the Kubeflow pipeline (docs/pipeline.md) ----
TASK ?= rte
PROFILE ?=
DATA ?=
MODEL ?=
CRON ?= 0 3 * * 0
CACHE ?= 1
VERSION ?=
PIPELINE_ARGS = --task $(TASK) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

.PHONY: pipeline-run pipeline-compile pipeline-upload pipeline-schedule

pipeline-run:  ## run the pipeline: on KFP_HOST if set, else locally with kfp.local (TASK= PROFILE= DATA= MODEL= CACHE=0)
	$(BIN)/python -m pipelines.run run $(PIPELINE_ARGS) $(if $(filter 0,$(CACHE)),--no-cache)

pipeline-compile:  ## write the pipeline spec (build/prompt_tuning.yaml) for upload in the Kubeflow UI
	$(BIN)/python -m pipelines.run compile $(if $(PROFILE),--profile $(PROFILE))

pipeline-upload:  ## upload the spec as a new version of the named pipeline on KFP_HOST
	$(BIN)/python -m pipelines.run upload $(if $(PROFILE),--profile $(PROFILE))

pipeline-schedule:  ## weekly (CRON=) retraining of TASK on KFP_HOST, pinned to VERSION= (default: this spec, uploaded)
	$(BIN)/python -m pipelines.run schedule $(PIPELINE_ARGS) --cron '$(CRON)' $(if $(VERSION),--version $(VERSION))

# ---- the component image and the cluster (infra/README.md) ----
# Name, tag and variants come from params.yaml (cluster.image:cluster.image_tag, cluster.images), the settings
# the pipeline's images are read from, so the compiled spec and the pushed images cannot drift. VARIANT=cuda
# (default) is the components' image (CPU and GPU steps); VARIANT=tpu the TPU steps' IMAGE:TAG-tpu (torch-xla,
# libtpu, PJRT_DEVICE=TPU); VARIANT=cpu a smaller IMAGE:TAG-cpu (no CUDA) for CPU-only use.
VARIANT ?= cuda
IMAGE = $(shell $(BIN)/python -m softprompt.cluster image --variant $(VARIANT))
BUILD_ARGS = $(shell $(BIN)/python -m softprompt.cluster build-args --variant $(VARIANT))

.PHONY: image image-push infra-tfvars test-xla test-cluster

# The image records the commit code_version reports here (SOFTPROMPT_GIT_SHA), and `make image` writes the
# image's digest to IMAGE_DIGEST_FILE, where the pipeline compiler reads it to name the image by digest: the
# local image ID after a build, the registry's manifest digest after a push (what a cluster pulls).
# DOCKER_BUILD_FLAGS: more `docker build` options; the local path (infra/README) passes its base image, pip
# settings and --network host. build/wheels/ is handed to pip (empty unless that path puts a wheel there).
DOCKER ?= docker
DOCKER_BUILD_FLAGS ?=
GIT_SHA = $(shell $(BIN)/python -m softprompt.cluster code-version)
IMAGE_DIGEST_FILE = build/image-digest-$(VARIANT).txt

image:  ## build an image variant params.yaml names (VARIANT=cuda|cpu|tpu; needs a Docker engine); digest in build/
	@test -n "$(IMAGE)" || { echo "cannot read cluster.images.$(VARIANT) from params.yaml: run make setup, and pick a VARIANT it names" >&2; exit 1; }
	mkdir -p build/wheels
	$(DOCKER) build -f infra/docker/Dockerfile $(BUILD_ARGS) --build-arg GIT_SHA=$(GIT_SHA) $(DOCKER_BUILD_FLAGS) \
		--iidfile $(IMAGE_DIGEST_FILE).tmp -t $(IMAGE) . && mv $(IMAGE_DIGEST_FILE).tmp $(IMAGE_DIGEST_FILE)

image-push: image  ## build and push it (once: gcloud auth configure-docker REGION-docker.pkg.dev); records its digest
	$(DOCKER) push $(IMAGE)
	$(DOCKER) image inspect --format '{{index .RepoDigests 0}}' $(IMAGE) | sed 's/.*@//' > $(IMAGE_DIGEST_FILE).tmp \
		&& mv $(IMAGE_DIGEST_FILE).tmp $(IMAGE_DIGEST_FILE)

infra-tfvars:  ## regenerate infra/terraform/node_pools.auto.tfvars.json from params.yaml cluster:
	$(BIN)/python -m softprompt.cluster tfvars > infra/terraform/node_pools.auto.tfvars.json

# ---- the TPU path, checked on XLA's CPU device (infra/README.md "The TPU image") ----
# A venv of its own with the TPU image's pins: requirements.lock merged with requirements-xla.txt (torch and
# torch-xla 2.9.0). PyPI serves the CUDA build of torch, so the first run downloads several GB; not in `make test`.
VENV_XLA ?= .venv-xla

$(VENV_XLA)/.installed: requirements.lock requirements-xla.txt infra/docker/merge_lock.py pyproject.toml
	$(PYTHON) -m venv $(VENV_XLA)
	$(PYTHON) infra/docker/merge_lock.py requirements.lock requirements-xla.txt > $(VENV_XLA)/requirements.lock
	$(VENV_XLA)/bin/pip install --quiet --upgrade pip
	$(VENV_XLA)/bin/pip install --quiet -r $(VENV_XLA)/requirements.lock
	$(VENV_XLA)/bin/pip install --quiet --no-deps -e .
	touch $@

test-xla: $(VENV_XLA)/.installed  ## train a prompt and LM-adapt `tiny` on XLA (PJRT_DEVICE=CPU); the prompt then evaluates in .venv
	PJRT_DEVICE=CPU SOFTPROMPT_MAIN_PYTHON=$(CURDIR)/$(BIN)/python $(VENV_XLA)/bin/pytest tests/xla -v -s

# ---- every step in its own container, on this machine (infra/README.md "Build and run the image on one machine") ----
# Installs docker.io and mmdebstrap (Debian), builds the CPU image from infra/docker/Dockerfile with a Debian base
# made here, then runs tests/cluster: the pipeline through kfp.local's DockerRunner, one container per step, only
# declared inputs mounted. Needs root; not in `make test`. ARGS= goes to pytest (e.g. ARGS="-k smoke").
test-cluster:  ## build the CPU image here and run the pipeline with each step in its own container (root; slow)
	infra/local/test-cluster.sh $(ARGS)
