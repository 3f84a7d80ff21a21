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

bench: build
	./scripts/bench.sh
	ZTDNS_BIN=$(CURDIR)/$(BIN) $(GO) test -run '^$$' -bench Flood -benchtime 1x -timeout 30m ./test/bench/

clean:
	rm -rf bin
