# Rebuild the committed default model:                  make models
# Check that the committed files are what it produces:  make models-check
#
# Training is seeded and single-threaded, the export deterministic (fixed --created, on the CPU,
# float16 reference, sorted JSON), so the same machine gives the same sha256 for every file.
# Another machine can round the export's floats differently in the last bits (BLAS and ONNX
# Runtime kernels differ by CPU and thread count), so models-check compares what the files mean
# within stated tolerances (python -m snnl.build.compare: model.onnx byte for byte, manifest
# floats and calibration arrays to 1e-4 relative, float16 reference rows to one rounding step).
# A CPU of another family trains a different network (model.onnx differs): rebuild there with
# make models and commit the result, or check on the machine that built it.

PYTHON ?= .venv/bin/python
SNNL ?= $(PYTHON) -m snnl.cli
CREATED ?= 2026-01-01T00:00:00Z
RUN_DIR ?= runs/digits-mlp
REPOSITORY ?= models

TRAIN_FLAGS = --data digits --arch mlp --factor 1 --temperature learned --distance cosine \
	--epochs 30 --batch-size 128 --lr 0.001 --seed 0 --threads 1
EXPORT_FLAGS = --force --name digits-mlp --version 1 --reference-dtype float16 --created $(CREATED) --device cpu

.PHONY: models models-export models-check

models:
	rm -rf $(RUN_DIR)
	$(SNNL) train $(TRAIN_FLAGS) --out $(RUN_DIR)
	$(MAKE) models-export RUN_DIR=$(RUN_DIR) REPOSITORY=$(REPOSITORY)

models-export:
	$(SNNL) export $(RUN_DIR) --repository $(REPOSITORY) $(EXPORT_FLAGS)

models-check:
	rm -rf runs/models-check
	$(MAKE) models RUN_DIR=runs/models-check/run REPOSITORY=runs/models-check/repository
	$(PYTHON) -m snnl.build.compare models/digits-mlp runs/models-check/repository/digits-mlp
