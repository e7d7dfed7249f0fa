# Rebuild the committed default model byte for byte:   make models
# Check that the committed files are what it produces:  make models-check
#
# Training is seeded and single-threaded, the export deterministic (fixed --created, on the CPU,
# float16 reference, sorted JSON), so the same machine setup gives the same sha256 for every file.

PYTHON ?= .venv/bin/python
SNNL ?= $(PYTHON) -m snnl.cli
CREATED ?= 2026-01-01T00:00:00Z
RUN_DIR ?= runs/digits-mlp
REPOSITORY ?= models

TRAIN_FLAGS = --data digits --arch mlp --factor 1 --temperature learned --distance cosine \
	--epochs 30 --batch-size 128 --lr 0.001 --seed 0 --threads 1
EXPORT_FLAGS = --force --name digits-mlp --version 1 --reference-dtype float16 --created $(CREATED) --device cpu

.PHONY: models models-check

models:
	rm -rf $(RUN_DIR)
	$(SNNL) train $(TRAIN_FLAGS) --out $(RUN_DIR)
	$(SNNL) export $(RUN_DIR) --repository $(REPOSITORY) $(EXPORT_FLAGS)

models-check:
	rm -rf runs/models-check
	$(MAKE) models RUN_DIR=runs/models-check/run REPOSITORY=runs/models-check/repository
	cd models/digits-mlp && sha256sum manifest.json model.onnx reference.safetensors \
		calibration.safetensors > ../../runs/models-check/committed.sha256
	cd runs/models-check/repository/digits-mlp && sha256sum -c ../../committed.sha256
