# `make demo`: install, then a real 3D-JEPA pretraining run on the built-in scans (2 CPU cores: ~16 min).
# `make test`: install with the test extras, then the test suite (CI runs exactly this).
# `make bench-speed`: the speed benchmark of this machine (benchmarks/README.md).
PYTHON ?= python3
# Installed only when no torch is importable yet. The pin matches a wheel that is cached on our
# CI machines; on PyPI the same pin is the CUDA build on Linux, so GPU users get CUDA. Override
# with e.g. `make install TORCH="torch --index-url https://download.pytorch.org/whl/cpu"`.
TORCH ?= torch==2.13.0
RUN ?= runs/demo

.PHONY: install install-test demo test bench-speed clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -q -e .

# the test extras: pytest, matplotlib (curves.png) and scikit-learn (the reference SVC the tests compare with)
install-test: install
	$(PYTHON) -m pip install -q -e ".[test]"

# the demo draws curves.png: it installs the plot extra (matplotlib)
demo: install
	$(PYTHON) -m pip install -q -e ".[plot]"
	rm -rf $(RUN)
	# builtin-scan: the built-in shapes as a depth sensor sees them (one side, floor, clutter), 1200 train clouds;
	# 60 epochs (2220 steps; 8 warm-up epochs), chosen on the validation split over 30 epochs and tiny-wide
	# (benchmarks/README.md); the probe every 740 steps on validation (the learning curve in curves.png);
	# half the run, then resume it from its checkpoint to the end, then look at the masks
	$(PYTHON) -m jepa3d pretrain --dataset builtin-scan --preset tiny --epochs 60 --warmup-epochs 8 --eval-every 740 \
		--out $(RUN) --max-steps 1110
	$(PYTHON) -m jepa3d pretrain --out $(RUN) --resume --eval-every 740
	$(PYTHON) -m jepa3d mask-preview --checkpoint $(RUN)/checkpoint.safetensors --out $(RUN)/mask_preview.ply
	# did it help? four probes of the teacher's features against a random-init encoder, on the held-out test scans
	$(PYTHON) -m jepa3d linear-probe --checkpoint $(RUN)/checkpoint.safetensors --dataset builtin-scan \
		--classifier evidence --against-random --out $(RUN)/probe

test: install-test
	$(PYTHON) -m pytest -q

# speed figures of this machine into benchmarks/speed_<device>.{md,json} (a few minutes on CPU)
bench-speed: install
	$(PYTHON) -m pip install -q -e ".[bench]"
	$(PYTHON) benchmarks/bench_speed.py

clean:
	rm -rf runs build *.egg-info .pytest_cache
