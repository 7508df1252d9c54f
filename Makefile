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
PIPELINE_ARGS = --task $(TASK) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA)) $(if $(MODEL),--model $(MODEL))

.PHONY: pipeline-run pipeline-compile pipeline-upload pipeline-schedule

pipeline-run:  ## run the pipeline: on KFP_HOST if set, else locally with kfp.local (TASK= PROFILE= DATA= MODEL= CACHE=0)
	$(BIN)/python -m pipelines.run run $(PIPELINE_ARGS) $(if $(filter 0,$(CACHE)),--no-cache)

pipeline-compile:  ## write the pipeline spec (build/prompt_tuning.yaml) for upload in the Kubeflow UI
	$(BIN)/python -m pipelines.run compile $(if $(PROFILE),--profile $(PROFILE))

pipeline-upload:  ## upload the spec as a new version of the named pipeline on KFP_HOST
	$(BIN)/python -m pipelines.run upload $(if $(PROFILE),--profile $(PROFILE))

pipeline-schedule:  ## weekly (CRON=) retraining of TASK on KFP_HOST, always on the latest pipeline version
	$(BIN)/python -m pipelines.run schedule $(PIPELINE_ARGS) --cron '$(CRON)'

# ---- the component image and the cluster (infra/README.md) ----
# Name, tag and variants come from params.yaml (cluster.image:cluster.image_tag, cluster.images), the settings
# the pipeline's images are read from, so the compiled spec and the pushed images cannot drift. VARIANT=cuda
# (default) is the components' image (CPU and GPU steps); VARIANT=tpu the TPU steps' IMAGE:TAG-tpu (torch-xla,
# libtpu, PJRT_DEVICE=TPU); VARIANT=cpu a smaller IMAGE:TAG-cpu (no CUDA) for CPU-only use.
VARIANT ?= cuda
IMAGE = $(shell $(BIN)/python -m softprompt.cluster image --variant $(VARIANT))
BUILD_ARGS = $(shell $(BIN)/python -m softprompt.cluster build-args --variant $(VARIANT))

.PHONY: image image-push infra-tfvars test-xla

image:  ## build an image variant params.yaml names (VARIANT=cuda|cpu|tpu; needs a Docker engine)
	@test -n "$(IMAGE)" || { echo "cannot read cluster.images.$(VARIANT) from params.yaml: run make setup, and pick a VARIANT it names" >&2; exit 1; }
	docker build -f infra/docker/Dockerfile $(BUILD_ARGS) -t $(IMAGE) .

image-push: image  ## build and push it (once: gcloud auth configure-docker REGION-docker.pkg.dev)
	docker push $(IMAGE)

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
