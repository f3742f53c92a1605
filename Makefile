# The project's verbs. Run from the repository root; outputs (runs/, model_store/, data/, reports/)
# land in the current directory, the project's own files are found beside this Makefile.
ROOT    := $(dir $(abspath $(lastword $(MAKEFILE_LIST))))
CONFIGS := $(ROOT)pipeline/train/configs
PY      ?= .venv/bin/python
PRESET  ?= cpu
STYLE   ?=
NAME    ?=
FROM    ?=
# `make train` alone: a style scikit-image ships; a run is named after its style's stem (several
# styles, STYLE=a.jpg,b.jpg: a-b (TorchServe model names allow letters, digits, _ - . only); a folder: the folder's name) unless NAME is given.
comma := ,
space := $(subst x, ,x)
TRAIN_STYLE := $(or $(STYLE),skimage:hubble_deep_field)
TRAIN_NAME  := $(or $(NAME),$(subst $(space),-,$(basename $(notdir $(abspath $(subst skimage:,,$(subst $(comma),$(space),$(TRAIN_STYLE))))))))
# `make distill NAME=<teacher>`: the student's run is STUDENT, or the teacher's name + "-fast"
STUDENT ?= $(basename $(notdir $(abspath $(NAME))))-fast
DATA    ?=
TRAIN_SHARDS ?=
VAL_SHARDS   ?=
CKPT    ?=
ARGS    ?=
SRC     ?=
VAL_SRC ?=
OUT     ?= data/shards/$(notdir $(abspath $(SRC)))
TB_PORT ?= 6006
BENCH_ARGS ?=
TEST_WORKERS ?= 2

.PHONY: help install demo test test-fast shards train distill tensorboard export import archive serve stop loadtest eval ablation figures bench gpu-check stylize stylize-video web

help:
	@echo "make install | demo | test | test-fast | shards SRC=dir [VAL_SRC=dir] [OUT=dir] [WORKERS=n] | train [STYLE=img|img1,img2,...|folder] [DATA=dir | TRAIN_SHARDS=spec VAL_SHARDS=spec] [NAME=run] [PRESET=cpu|gpu|paper] [FROM=starter|run|file] [CKPT=file] [ARGS='...']"
	@echo "make distill NAME=teacher [STUDENT=run] [PRESET=cpu|gpu] [ARGS='...']  (a fast twin: docs/architecture.md#compact)"
	@echo "make tensorboard | export NAME=run | import MODEL=file.pth NAME=run | archive [NAME=run] | serve | stop"
	@echo "make stylize MODEL=generator.pt2 IN=photo.jpg|photos/|film.mp4|anim.gif OUT=... [ARGS='--style NAME --strength 0.7']"
	@echo "make loadtest [NAME=run] | eval NAME=run CONTENT=dir | ablation STYLE=img | figures [ARGS='--duo runs/duo --starry_night runs/starry_night --widths [runs/w32,runs/w16,runs/w8]'] | bench [BENCH_ARGS=--quick] | gpu-check [DATA=dir] [ARGS=--dry-run]"
	@echo "make web NAME=run [SERVE=1] [PORT=8000]  (the run's .onnx as a static page: web/dist/run/, docs/web.md)"

# A virtual environment with the pinned stack, the project (editable), and the verified VGG-16 weights.
install:
	python3 -m venv .venv
	$(PY) -m pip install -e '.[test,onnx,video,serve]'
	$(PY) -m pipeline vgg-weights

# A stylized photo with no training: the committed starter model (models/starter/: 8 styles, strength) exported
# to runs/starter/export/, archived, served by TorchServe (as `make serve`), asked for each style
# (demo/<style>.jpg), and the curl line to try printed. `make stop` ends the server.
demo:
	$(PY) -m pipeline export --run runs/starter --ckpt "$(ROOT)models/starter/generator.safetensors" --formats '[pt2,onnx]'
	$(PY) -m pipeline archive --name starter
	@mkdir -p logs  # the server's launcher output to a file: a daemon holding this terminal's pipe would hang `make demo | tee`
	@$(MAKE) --no-print-directory -f "$(ROOT)Makefile" serve PY="$(PY)" > logs/demo-serve.out 2>&1 || { cat logs/demo-serve.out; exit 1; }
	$(PY) -m pipeline demo --model starter

# The whole suite (what CI runs: real training, TorchServe, DDP), and its unit tier (tests not marked
# slow); docs/architecture.md#tests. The suite runs in two xdist workers: much of it waits on subprocesses
# (make lines, TorchServe's JVM, DDP ranks), so two test processes keep a 2-core machine busy. Each test
# file runs whole in one worker (--dist loadfile): its module fixtures (a TorchServe server, a trained
# run, the exports) are built once, not once per worker. TEST_WORKERS=0 runs it in one process.
test:
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

test-fast:
	$(PY) -m pytest -m "not slow" $(ARGS)

shards:
	@test -n "$(SRC)" || { echo "usage: make shards SRC=<folder of photos> [VAL_SRC=<folder>] [OUT=data/shards/<name>] [WORKERS=<processes>]"; exit 2; }
	$(PY) -m pipeline shards --src "$(SRC)" --out "$(OUT)" $(if $(VAL_SRC),--val_src "$(VAL_SRC)") $(if $(WORKERS),--workers $(WORKERS))

train:
	@test -f "$(CONFIGS)/$(PRESET).yaml" -a "$(PRESET)" != base || { echo "unknown PRESET=$(PRESET): choose cpu, gpu or paper"; exit 2; }
	$(PY) -m pipeline fit --config "$(CONFIGS)/$(PRESET).yaml" $(if $(FROM),--config "$(CONFIGS)/adapt.yaml" --model.init_from="$(FROM)") \
		--model.style_image="$(TRAIN_STYLE)" --trainer.logger.init_args.name="$(TRAIN_NAME)" \
		$(if $(DATA),--data.data_dir="$(DATA)") $(if $(TRAIN_SHARDS),--data.train_shards="$(TRAIN_SHARDS)") \
		$(if $(VAL_SHARDS),--data.val_shards="$(VAL_SHARDS)") $(if $(CKPT),--ckpt_path="$(CKPT)") $(ARGS)

# A fast twin of a trained model (pipeline/train/distill.py): runs/STUDENT, the compact generator by default
distill:
	@test -n "$(NAME)" || { echo "usage: make distill NAME=<teacher: run | starter | .ckpt | .safetensors> [STUDENT=run] [PRESET=cpu|gpu] [ARGS='--model.width=32 --model.n_residual=5']"; exit 2; }
	@test -f "$(CONFIGS)/$(PRESET).yaml" -a "$(PRESET)" != base || { echo "unknown PRESET=$(PRESET): choose cpu, gpu or paper"; exit 2; }
	$(PY) -m pipeline fit --config "$(CONFIGS)/$(PRESET).yaml" --config "$(CONFIGS)/distill.yaml" \
		--model.distill_from="$(NAME)" --trainer.logger.init_args.name="$(STUDENT)" \
		$(if $(DATA),--data.data_dir="$(DATA)") $(if $(TRAIN_SHARDS),--data.train_shards="$(TRAIN_SHARDS)") \
		$(if $(VAL_SHARDS),--data.val_shards="$(VAL_SHARDS)") $(if $(CKPT),--ckpt_path="$(CKPT)") $(ARGS)

tensorboard:
	$(PY) -m tensorboard.main --logdir runs --host 127.0.0.1 --port $(TB_PORT)

# runs/NAME/checkpoints/last.ckpt -> runs/NAME/export/{generator.pt, generator.pt2, metadata.json}
export:
	@test -n "$(NAME)" || { echo "usage: make export NAME=<run in runs/> [ARGS='--ckpt FILE --formats [pt]']"; exit 2; }
	$(PY) -m pipeline export --run "runs/$(NAME)" $(ARGS)

# A model trained elsewhere (pytorch/examples fast_neural_style .pth) -> runs/NAME/export/, like our own runs.
MODEL ?=
import:
	@test -n "$(MODEL)" -a -n "$(NAME)" || { echo "usage: make import MODEL=<candy.pth> NAME=<run> [ARGS='--formats [pt2]']"; exit 2; }
	$(PY) -m pipeline import --source pytorch-examples --model "$(MODEL)" --name "$(NAME)" $(ARGS)

# runs/NAME/export -> model_store/NAME.mar (replaced if present); no NAME: every exported run
archive:
	$(PY) -m pipeline archive $(if $(NAME),--name "$(NAME)") $(ARGS)

# TorchServe with ./config.properties (loopback only, token auth on): serves every .mar in
# model_store/. The launcher needs --ts-config: it does not read ./config.properties by itself.
# ENGINE=ray: Ray Serve with ./ray_serve.yaml instead, the same API on the same port (docs/scale.md#serving-on-many-machines):
# runs/NAME/export (every exported run without NAME; NAME=a,b for several).
ENGINE ?= torchserve
serve:
	@test "$(ENGINE)" = torchserve -o "$(ENGINE)" = ray || { echo "unknown ENGINE=$(ENGINE): choose torchserve or ray"; exit 2; }
	@mkdir -p model_store logs
ifeq ($(ENGINE),ray)
	$(PY) -m pipeline ray-serve --config "$(ROOT)ray_serve.yaml" $(if $(NAME),--models '[$(NAME)]') $(ARGS)
else
	PATH="$(abspath $(dir $(PY))):$$PATH" $(dir $(PY))torchserve --start --ncs --ts-config config.properties
endif

# N clients × M requests of mixed sizes against a private loopback TorchServe; every response checked.
CLIENTS  ?= 8
REQUESTS ?= 200
# ENGINE=ray: a private Ray cluster (a head and NODES worker nodes on this machine) serving runs/NAME/export;
# KILL_AFTER=n kills a worker node once n requests were answered (docs/scale.md#serving-on-many-machines).
NODES ?= 2
KILL_AFTER ?=
loadtest:
	$(PY) -m pipeline loadtest $(if $(NAME),--model "$(NAME)") --clients $(CLIENTS) --requests $(REQUESTS) \
		--engine $(ENGINE) $(if $(filter ray,$(ENGINE)),--nodes $(NODES) $(if $(KILL_AFTER),--kill_node_after $(KILL_AFTER))) \
		--out benchmarks/loadtest-results$(if $(filter ray,$(ENGINE)),-ray).json $(ARGS)

# Offline stylization with the server's exact pixels: an image, a folder of images, a film (or an animated
# GIF/WebP, or a folder of frames → OUT.mp4): H.264 with the input's timing, size, rotation, audio copied
# (pipeline/tools/stylize.py). OUT must be given (its default above is the shards folder).
# `stylize-video` is the same verb under its earlier name.
IN  ?=
STYLIZE_OUT = $(if $(filter file,$(origin OUT)),,$(OUT))
stylize stylize-video:
	@test -n "$(MODEL)" -a -n "$(IN)" -a -n "$(STYLIZE_OUT)" || { echo "usage: make stylize MODEL=<generator.pt2> IN=<photo.jpg | photos/ | film.mp4 | anim.gif | frames/> OUT=<out.png | out/ | out.mp4 | out.gif> [ARGS='--style NAME --strength 0.7']"; exit 2; }
	$(PY) -m pipeline stylize --model "$(MODEL)" $(ARGS) "$(IN)" "$(STYLIZE_OUT)"

# Quality of a model on a folder of photos: reports/eval-NAME/{metrics.json,report.html}.
CONTENT ?=
eval:
	@test -n "$(NAME)" -a -n "$(CONTENT)" || { echo "usage: make eval NAME=<run> CONTENT=<photo folder> [ARGS='--limit 8 --gatys 2']"; exit 2; }
	$(PY) -m pipeline evaluate --model "runs/$(NAME)/checkpoints/last.ckpt" --content "$(CONTENT)" \
		--out "reports/eval-$(NAME)" $(ARGS)

# The paper's ablation for one style: 5 variants trained with the same budget, evaluated, reported
# in reports/ablation-<style>/. Finished runs are reused. STEPS is the per-variant budget.
STEPS ?= 800
ablation:
	@test -n "$(STYLE)" || { echo "usage: make ablation STYLE=<style image> [DATA=<shards>] [CONTENT=<val photos>] [STEPS=800] [PRESET=cpu]"; exit 2; }
	$(PY) -m pipeline ablation --style "$(STYLE)" --preset $(PRESET) --steps $(STEPS) \
		$(if $(DATA),--data "$(DATA)") $(if $(CONTENT),--content "$(CONTENT)") $(ARGS)

# The docs' figures in docs/images/: the committed starter model's grid; with ARGS='--duo RUN --starry_night RUN --widths [RUN,...]',
# the strength grid, the README figure and the widths figure from those exported runs (pipeline/quality/figures.py).
figures:
	$(PY) -m pipeline figures $(ARGS)

# The run's generator.onnx in the browser (onnxruntime-web): a static page in web/dist/NAME/ (docs/web.md);
# SERVE=1 then serves it on 127.0.0.1:PORT with the headers wasm threads need. npm ci only when the lock changed.
PORT ?= 8000
$(ROOT)web/node_modules/.package-lock.json: $(ROOT)web/package-lock.json
	@command -v npm >/dev/null || { echo "make web needs Node.js 20 and npm (e.g. apt-get install nodejs npm)"; exit 2; }
	npm ci --prefix "$(ROOT)web" --ignore-scripts --no-audit --no-fund
web:
	@test -n "$(NAME)" || { echo "usage: make web NAME=<run in runs/, exported with onnx> [SERVE=1] [PORT=8000]"; exit 2; }
	@$(MAKE) -s --no-print-directory -f "$(ROOT)Makefile" "$(ROOT)web/node_modules/.package-lock.json"
	@# a packaged model (models/NAME) and its fast twin (models/NAME-fast, for the webcam) exported on first use
	@for m in $(NAME) $(NAME)-fast; do if [ -f "$(ROOT)models/$$m/generator.safetensors" ] && [ ! -f "runs/$$m/export/generator.onnx" ]; then \
		echo "exporting models/$$m → runs/$$m/export/generator.onnx"; \
		$(PY) -m pipeline export --run "runs/$$m" --ckpt "$(ROOT)models/$$m/generator.safetensors" --formats '[onnx]' || exit 1; fi; done
	$(PY) -m pipeline web --run "runs/$(NAME)" --out "web/dist/$(NAME)" $(if $(SERVE),--serve true --port $(PORT)) $(ARGS)

# Stops the server this directory started (TorchServe's own pid file; ENGINE=ray: the Ray daemon's), never by process name.
stop:
ifeq ($(ENGINE),ray)
	$(PY) -m pipeline ray-serve --action stop
else
	$(dir $(PY))torchserve --stop
endif

# Reference vs our paths side by side (inference, training, TorchServe, tiled 4K, video, widths, the training
# loader): prints a table and writes benchmarks/results-<machine>.json. BENCH_ARGS=--quick for the short run,
# --sections to pick. Run it on an otherwise idle machine (see docs/benchmarks.md).
bench:
	$(PY) -m benchmarks.bench $(BENCH_ARGS)

# One GPU end to end (docs/benchmarks.md, GPU): a bf16-mixed fit of the gpu preset (300 steps), its export, every
# form served through the handler on the GPU (a 1080p and a 12 MP photo), 1080p frames/s in fp32/bf16/fp16 with
# and without torch.compile. Prints a table, writes benchmarks/results-gpu-check-<machine>.json; < 8 min on an
# H100/H200. Without CUDA (or ARGS=--dry-run) the same steps at toy sizes, in ~2 min on 2 cores.
gpu-check:
	$(PY) -m benchmarks.gpu_check $(if $(DATA),--data "$(DATA)") $(ARGS)
