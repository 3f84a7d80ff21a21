# ztdns: the targets, each described in the README ("The two commands" and
# the paragraphs after them).
#   make build     the ztdns binary into bin/
#   make generate  rebuild the BPF objects and their Go bindings (needs clang)
#   make helpers   build the test helpers into their cache (before the first make test)
#   make test      every test (as root: the data-path tests load BPF programs)
#   make demo      the DNS Proxying walkthrough, live (as root)
#   make demo-standalone  the same without root or eBPF, on 127.0.0.1:5353
#   make bench     ztdns vs. its peers, side by side, as ratios
#   make bench-wire  the hand-written DNS wire format vs. miekg/dns, dnsmessage
#   make fuzz      every fuzz target for FUZZTIME each (default 10m)
#   make image     the container image for amd64 and arm64, as an OCI layout
#                  in bin/image (and bin/image.tar); IMAGE_TAG names it
#   make clean     remove bin/

GO        ?= go
# Go where the README's set-up installs it, when PATH lacks it (sudo's
# secure_path drops it); exported for the tests and scripts that run go.
ifeq ($(shell command -v go 2>/dev/null),)
export PATH := $(PATH):/usr/local/go/bin
endif
BIN       := bin/ztdns
# What `ztdns version`, `ztdns status` and ztdns_build_info report: the
# release tag (or commit) and the full commit hash, when this is a git
# checkout; otherwise the binary says what Go recorded (see pkg/version).
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -X github.com/ztdns/ztdns/pkg/version.version=$(VERSION) \
            -X github.com/ztdns/ztdns/pkg/version.revision=$(REVISION)
# The tests, including the end-to-end ones that build helpers, get this long.
TEST_TIMEOUT ?= 25m
# Extra flags for `go test`, e.g. TEST_FLAGS='-run Seed -v'.
TEST_FLAGS ?=
# Time per fuzz target, extra `go test` flags for fuzzing (e.g.
# FUZZFLAGS='-parallel 1' on a shared machine), and which targets (a regexp).
FUZZTIME ?= 10m
FUZZFLAGS ?=
FUZZ ?= .
# The image's tag (default: the chart's appVersion).
IMAGE_TAG ?=
# make bench: BENCH picks benchmarks of test/bench (a -bench pattern:
# Resolver, Metrics, Capture, Footprint, Scale, Forward, Flood, or e.g.
# Resolver/load=max),
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
# make bench-wire: runs of each wire-format benchmark.
WIRE_COUNT    ?= 10

.PHONY: build generate helpers test demo demo-standalone bench bench-wire fuzz image clean

build:
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ztdns

generate:
	$(GO) generate ./pkg/redirect/

# The heavy test helpers (kube-apiserver and etcd, the reference CNI plugins,
# helm, CoreDNS, istiod), each built by its scripts/build-*.sh into a cache
# outside the repository (ZTDNS_CACHE, default ~/.cache/ztdns): about 25
# minutes on 2 cores with the cache empty, a no-op once it is warm (each
# script prints its cache directory).
helpers:
	@set -e; for script in $(sort $(wildcard scripts/build-*.sh)); do echo "$$script" >&2; "./$$script"; done

# The tests, then each wire-format benchmark once: every implementation
# still does the job it is timed on (each checks its result first).
test:
	@unformatted=$$("$$($(GO) env GOROOT)/bin/gofmt" -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$unformatted" ]; then echo "not gofmt'd (run gofmt -w):" $$unformatted; exit 1; fi
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) ./...
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pkg/dnswire/

demo: build
	./scripts/demo.sh

demo-standalone: build
	./scripts/demo-standalone.sh

fuzz:
	GO=$(GO) FUZZTIME=$(FUZZTIME) FUZZFLAGS='$(FUZZFLAGS)' FUZZ='$(FUZZ)' ./scripts/fuzz.sh

image:
	$(GO) run ./deploy/image -o bin/image $(if $(IMAGE_TAG),-tag $(IMAGE_TAG))

bench: SHELL := /bin/bash
bench:
	@mkdir -p $(dir $(BENCH_OUT))
	set -o pipefail; $(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1x -count $(BENCH_COUNT) \
		-timeout $(BENCH_TIMEOUT) ./test/bench/ -args -rounds $(BENCH_ROUNDS) $(BENCH_FLAGS) | tee $(BENCH_OUT)
	@echo
	$(GO) run ./bench/report $(BENCH_OUT)

# The DNS wire format by hand (pkg/dnswire) beside miekg/dns and
# x/net/dns/dnsmessage on the same messages: WIRE_COUNT runs of each, then
# benchstat's medians with each peer vs. dnswire.
bench-wire: SHELL := /bin/bash
bench-wire:
	@mkdir -p bin
	set -o pipefail; $(GO) test -run '^$$' -bench . -count $(WIRE_COUNT) ./pkg/dnswire/ | tee bin/bench-wire.txt
	$(GO) run golang.org/x/perf/cmd/benchstat -col /impl bin/bench-wire.txt

clean:
	rm -rf bin
