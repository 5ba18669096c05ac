# Convenience targets; each is one command you can also run by hand.
.PHONY: setup test soak bench jepsen

setup:
	bash scripts/setup

test: setup
	.venv/bin/python -m pytest -q

# Every nemesis for 10 minutes with both workloads, plus the unsafe-reads control (about 95 minutes).
soak: setup
	.venv/bin/python -m jepsen_like.suite --time 600 --record benchmarks/results/jepsen-soak.md

jepsen: setup
	.venv/bin/python -m jepsen_like.suite --time 20 --record benchmarks/results/jepsen-short.md

bench: setup
	.venv/bin/mcpdb bench kv
	.venv/bin/mcpdb bench raft
