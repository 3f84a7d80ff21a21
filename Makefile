# ztdns: the five targets the README promises.
#   make build     the ztdns binary into bin/
#   make generate  rebuild the BPF objects and their Go bindings (needs clang)
#   make test      every test (as root: the data-path tests load BPF programs)
#   make demo      the DNS Proxying walkthrough, live (as root)
#   make bench     ztdns vs. its peers, side by side, as ratios

GO        ?= go
BIN       := bin/ztdns
# The tests, including the end-to-end ones that build helpers, get this long.
TEST_TIMEOUT ?= 25m
# Extra flags for `go test`, e.g. TEST_FLAGS='-run Seed -v'.
TEST_FLAGS ?=
# make bench: BENCH picks benchmarks of test/bench (a -bench pattern:
# Resolver, Capture, Footprint, Scale, or e.g. Resolver/load=max),
# BENCH_ROUNDS the rounds of the comparisons (servers side by side, in
# turning order), BENCH_COUNT repeats of each measurement in a row,
# BENCH_FLAGS their settings (e.g. '-duration 10s -rates max,1000'; go test
# ./test/bench/ -args -h lists them). The raw results stay in BENCH_OUT for
# benchstat.
BENCH         ?= .
BENCH_ROUNDS  ?= 1
BENCH_COUNT   ?= 1
BENCH_FLAGS   ?=
BENCH_OUT     ?= bin/bench.txt
BENCH_TIMEOUT ?= 4h

.PHONY: build generate test demo demo-standalone bench clean

build:
	$(GO) build -trimpath -o $(BIN) ./cmd/ztdns

generate:
	$(GO) generate ./pkg/redirect/

test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...

demo: build
	./scripts/demo.sh

demo-standalone: build
	./scripts/demo-standalone.sh

bench: SHELL := /bin/bash
bench:
	@mkdir -p $(dir $(BENCH_OUT))
	set -o pipefail; $(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count $(BENCH_COUNT) \
		-timeout $(BENCH_TIMEOUT) ./test/bench/ -args -rounds $(BENCH_ROUNDS) $(BENCH_FLAGS) | tee $(BENCH_OUT)
	@echo
	$(GO) run ./bench/report $(BENCH_OUT)

clean:
	rm -rf bin
