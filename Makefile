# `make test` and `make demo` each set up .venv on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: test lint demo bench fuzz clean

# The suite also tests expman.torch, expman.lightning, expman.transformers (tiny models
# built in code; safetensors for the benchmarks) and the
# TensorBoard event files (written with tensorboardX, read back with tensorboard's
# reader): the CPU build of torch 2.13.0, which this machine kind serves from its own
# disk (a newer or unpinned torch is a multi-GB CUDA build). Lightning and transformers
# are installed in the same pip command as the pinned torch, so they cannot replace it;
# the last line checks that. `make test TORCH=` leaves them out; their tests skip then,
# outside CI.
TORCH ?= torch==2.13.0

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(BIN)/.installed-extras: $(BIN)/.installed
	$(if $(TORCH),$(BIN)/python -m pip install --quiet '$(TORCH)' 'tensorboardX>=2.6' 'tensorboard>=2.16' \
		'lightning>=2.4' 'transformers>=4.46' 'accelerate>=1.0' 'safetensors>=0.4',)
	$(if $(TORCH),$(BIN)/python -m pip show torch | grep '^Version: $(subst torch==,,$(TORCH))' >/dev/null \
		|| { echo 'an extra replaced $(TORCH): pin the extra in pyproject.toml'; exit 1; },)
	touch $@

lint: $(BIN)/.installed-extras
	$(BIN)/ruff check expman tests bench demo templates
	$(BIN)/ruff format --check expman tests bench demo templates
	$(BIN)/mypy expman

test: lint
	$(BIN)/pytest

# make demo KEEP=1 keeps the walkthrough's temporary repository to look at.
demo: $(BIN)/.installed
	$(BIN)/python -m demo.iris $(if $(KEEP),--keep,)

# The long run of the checkpoint fuzzer (docs/development.md, "Fuzzing"): FUZZ_SHARDS
# pytest processes at once (one a core), each running its share of FUZZ_EXAMPLES with its
# own random hypothesis seed and its own temporary directory. A crash (segfault) of any
# shard fails the target as surely as an exception; each keeps its count and its case
# running in fuzz-progress-N.txt.
FUZZ_EXAMPLES ?= 100000
FUZZ_SHARDS ?= 2
fuzz: $(BIN)/.installed
	$(MAKE) -j$(FUZZ_SHARDS) --output-sync=target \
		$(addprefix fuzz-shard-,$(shell seq $(FUZZ_SHARDS)))

fuzz-shard-%: $(BIN)/.installed
	tmp=$$(mktemp -d) && \
	EXPMAN_FUZZ_EXAMPLES=$$(( ($(FUZZ_EXAMPLES) + $(FUZZ_SHARDS) - 1) / $(FUZZ_SHARDS) )) \
	EXPMAN_FUZZ_PROGRESS=fuzz-progress-$*.txt \
		$(BIN)/pytest tests/test_fuzz_checkpoints.py -q --basetemp=$$tmp/pytest \
		-p no:cacheprovider --hypothesis-show-statistics; \
	status=$$?; rm -rf $$tmp; exit $$status

bench: $(BIN)/.installed
	$(BIN)/python -m bench.checkpoint_io

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
