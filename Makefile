# ebpfnet: `make help` lists the targets.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

GO        ?= go
BIN       := bin
TESTLOG   := $(BIN)/test.log
C_SOURCES := $(wildcard bpf/*.c bpf/include/*.h)
# make soak: how long the CNI churn runs.
SOAK_TIME ?= 10m
# make fuzz: seeded packets compared with the model, then how long the fuzzing engine runs.
FUZZ_PACKETS ?= 1000000
FUZZ_TIME    ?= 60s

.PHONY: help deps deps-kubernetes deps-e2e deps-cilium conformance conformance-cilium generate check-generate lint build image test fuzz soak bench bench-record demo clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z0-9-]+:.*## / {printf "  %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages the build, demo and tests need (only those missing)
	@scripts/install-deps.sh

deps-kubernetes: deps ## build Kubernetes v1.34.4, CoreDNS and the loopback CNI plugin from source into /var/cache/ebpfnet (once, ~12 min for Kubernetes on 2 idle cores, plus CoreDNS)
	@lab/kube/build.sh

deps-e2e: deps-kubernetes ## build the upstream e2e suite (e2e.test) and agnhost v1.34.4 from source (once; 286 s here with a warm Go build cache)
	@lab/kube/build.sh e2e

deps-cilium: deps ## build Cilium v1.20.2 (cilium-agent, cilium-cni, its BPF sources and CRDs) from its Go module into /var/cache/ebpfnet, for `lab up --cni cilium` (once, ~8 min on 2 idle cores)
	@lab/peers/build-cilium.sh

generate: deps ## compile the BPF C with clang-19, regenerate the Go bindings and docs/cli.md
	$(GO) generate ./bpf/
	$(GO) run ./cmd/ebpfnet gen-docs --out docs/cli.md

check-generate: generate ## fail if the committed bindings or docs/cli.md differ from a fresh generate
	@git diff --exit-code --stat -- bpf/ docs/cli.md || { echo "generated files are stale: run make generate and commit"; exit 1; }

# golangci-lint, pinned in tools/go.mod (apart from the main module's requirements).
GOLANGCI := $(GO) tool -modfile=tools/go.mod golangci-lint
lint: deps ## gofmt, go vet, golangci-lint (.golangci.yaml) and clang-format over our sources
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt wants to change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI) run ./...
	clang-format-19 --dry-run --Werror $(C_SOURCES)

build: ## build bin/ebpfnet, bin/ebpfnet-cni and bin/ebpfnet-bench (static: the lab's container images hold them)
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -o $(BIN)/ ./cmd/...

# make unit leaves out the packages whose tests all need root (namespaces, BPF, a lab) and the
# tests of other packages that need it; make test runs everything.
ROOT_PKGS  := /(test|bpf|loader|lab/kube|bgp|fuzz)(/|$$)
ROOT_TESTS := ^(TestApplyPolicyNearlyFull|TestAPISocketServesOnlyRoot|TestKubeProxySuite|TestKubeProxySuiteFailing)$$
.PHONY: unit
unit: ## the tests that need no root, with -race, in a few minutes (no make deps needed)
	$(GO) test -count=1 -race -timeout 10m -skip '$(ROOT_TESTS)' $$($(GO) list ./... | grep -vE '$(ROOT_PKGS)')

# make test runs these packages without -race: test/ drives agents built apart (its 20 minutes
# are waits on them), fuzz/ is CPU-bound model checking; every other package runs with -race
# (about twice as long: bpf 42 s -> 87 s, store 4 s -> 7 s), meanwhile.
NO_RACE_PKGS := /(test|fuzz)(/|$$)
TESTOUT      := grep -E '^(=== RUN|--- (FAIL|SKIP)|FAIL|ok|PASS|panic|fatal error|signal: |exit status)|_test.go' | grep -v '^=== RUN'
test: deps deps-e2e deps-cilium lint build ## run every test (needs root: namespaces, BPF; a few upstream e2e tests too); fails if any test skipped
	@mkdir -p $(BIN)
	pkgs=$$($(GO) list ./...); \
	  $(GO) test -count=1 -timeout 30m -v -race $$(grep -vE '$(NO_RACE_PKGS)' <<<"$$pkgs") >$(TESTLOG).race 2>&1 & \
	  $(GO) test -count=1 -timeout 30m -v $$(grep -E '$(NO_RACE_PKGS)' <<<"$$pkgs") 2>&1 | tee $(TESTLOG) | $(TESTOUT) || true; \
	  wait; <$(TESTLOG).race $(TESTOUT) || true; cat $(TESTLOG).race >>$(TESTLOG)
	@scripts/check-test-log.sh $(TESTLOG)

fuzz: deps ## hold the datapath to its Go model (package testkit/model): FUZZ_PACKETS seeded packets, then FUZZ_TIME of native fuzzing
	$(GO) test -count=1 -timeout 60m -run '^TestDatapathMatchesModel$$' -v ./testkit/fuzz/ -args -packets=$(FUZZ_PACKETS)
	$(GO) test -count=1 -timeout 60m -run '^$$' -fuzz '^FuzzDatapath$$' -fuzztime $(FUZZ_TIME) ./testkit/fuzz/

soak: deps build ## 100 CNI callers ADD/DEL for SOAK_TIME (10m) while the agent restarts 3 times; reports its goroutines and heap
	EBPFNET_SOAK=$(SOAK_TIME) $(GO) test -count=1 -timeout 90m -run '^TestCNIChurn$$' -v ./test/ | grep -E '^(---|ok|FAIL)|_test.go'

image: build ## build the agent's container image (deploy/ebpfnet.yaml) as a docker archive in bin/image
	$(BIN)/ebpfnet image build --out $(BIN)/image

bench: deps deps-kubernetes deps-cilium build ## compare ebpfnet with kernel baselines and with Cilium (every suite, the peers suite first); writes bin/bench/
	$(BIN)/ebpfnet-bench -out $(BIN)/bench

bench-record: ## copy the last make bench (bin/bench/) into the committed bench/results/
	@test -s $(BIN)/bench/results.json || { echo "no $(BIN)/bench/results.json: run make bench first"; exit 1; }
	cp $(BIN)/bench/results.json $(BIN)/bench/results.md $(BIN)/bench/ratios.svg bench/results/

conformance: deps deps-e2e build ## run Kubernetes' sig-network e2e suites in vxlan and native labs (CONFORMANCE_ARGS: -modes, -suites, -only, -dual-stack); writes bin/conformance/
	$(BIN)/ebpfnet-conformance -out $(BIN)/conformance $(CONFORMANCE_ARGS)

conformance-cilium: deps deps-e2e deps-cilium build ## the same suites with Cilium as the labs' CNI, for the counts side by side; writes bin/conformance-cilium/
	$(BIN)/ebpfnet-conformance -cni cilium -out $(BIN)/conformance-cilium $(CONFORMANCE_ARGS)

demo: deps build ## bring up a small cluster in namespaces and show it working
	scripts/demo.sh

clean: ## remove build outputs
	rm -rf $(BIN)
