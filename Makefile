# edgefleet — build, test and demo. `make demo` and `make test` are the two
# commands a fresh machine (Go, gcc, npm, apt) needs; everything else they
# need is fetched by `make deps`.

SHELL       := /bin/bash
GO          ?= go
GOARCH      := $(shell $(GO) env GOARCH)
ORT_ARCH    := $(if $(filter arm64,$(GOARCH)),arm64,x64)
ORT_LIB     := $(CURDIR)/third_party/onnxruntime/linux-$(ORT_ARCH)/libonnxruntime.so.1
# Releases are git tags: VERSION is `git describe` (v1.2.0, or
# v1.2.0-3-gabc1234 between tags, with -dirty for a changed tree); COMMIT
# the full hash. Both are stamped into every binary (internal/buildinfo).
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT      ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILDINFO   := github.com/edgefleet/edgefleet/internal/buildinfo
LDFLAGS     := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT)
# Archives are reproducible: every file's time is the commit's.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
export SOURCE_DATE_EPOCH
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The agent is built without net/http's bundled HTTP/2: its inference API
# is plain HTTP on localhost and its one client call (enrollment) speaks
# HTTP/1.1 as well; the device binary is 0.5 MB smaller for it.
AGENT_TAGS  := nethttpomithttp2
BIN         := $(CURDIR)/bin
TEST_FLAGS  ?= -race -count=1 -timeout 12m
export EDGEFLEET_ORT_LIB := $(ORT_LIB)
# The clustered MQTT engine the NATS tests run as real processes: built from
# its Go module at a pinned version into bin/ (not a dependency of the main
# module: the agent and control plane never link it).
NATS_VERSION := v2.15.3
NATS_SERVER  := $(BIN)/nats-server
export EDGEFLEET_NATS_SERVER := $(NATS_SERVER)

.PHONY: all deps build proto proto-check demo test test-stress test-short lint fmt fuzz bench clean screenshots

all: build

## deps: the onnxruntime 1.24.3 shared library (linux x64 + arm64, sha256-pinned)
deps: $(ORT_LIB)

$(ORT_LIB): scripts/fetch-onnxruntime.sh
	sh scripts/fetch-onnxruntime.sh

## nats-server: bin/nats-server $(NATS_VERSION) (MQTT + JetStream), for the NATS cluster tests
.PHONY: nats-server
nats-server: $(NATS_SERVER)

$(NATS_SERVER):
	@mkdir -p $(BIN)
	GOBIN=$(BIN) GOFLAGS=-buildvcs=false $(GO) install github.com/nats-io/nats-server/v2@$(NATS_VERSION)
	@$(NATS_SERVER) --version | grep -q '$(patsubst v%,%,$(NATS_VERSION))' || { echo "$(NATS_SERVER) is not $(NATS_VERSION): make clean nats-server"; exit 1; }

## build: bin/edgefleet (control plane + CLI), bin/edgefleet-agent, bin/fleet-sim
build: deps
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/edgefleet ./controlplane/cmd/edgefleet
	$(GO) build -tags $(AGENT_TAGS) -ldflags "$(LDFLAGS)" -o $(BIN)/edgefleet-agent ./agent/cmd/edgefleet-agent
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/fleet-sim ./fleet-sim
	cp -f $(ORT_LIB) $(BIN)/libonnxruntime.so.1

## proto: regenerate proto/efpb from proto/edgefleet.proto (installs protoc if missing)
proto:
	@command -v protoc >/dev/null || sh scripts/install-protoc.sh
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	protoc --plugin=protoc-gen-go=$(BIN)/protoc-gen-go --go_out=. \
		--go_opt=module=github.com/edgefleet/edgefleet proto/edgefleet.proto

## proto-check: fail if the committed generated code is stale
proto-check: proto
	@git diff --exit-code -- proto/efpb || { echo "generated code is stale: run make proto and commit"; exit 1; }

## demo: the main job end to end on the embedded defaults; it prints the web
## console's URL and a login link (make demo DEMO_FLAGS=--keep keeps it up)
DEMO_FLAGS ?=
demo: build
	$(BIN)/edgefleet demo --bin $(BIN) --work-dir $(CURDIR)/.demo $(DEMO_FLAGS)

## test: lint, then every test with the race detector (real broker, badger, onnxruntime)
# The deploy tests start real mosquitto processes on ports handed over by
# the test (mosquitto cannot bind port 0); they run after the other packages
# so those cannot race them for ports (seen once as "Address already in use"
# in a full parallel run).
test: deps nats-server lint
	$(GO) test $(TEST_FLAGS) $$($(GO) list ./... | grep -v /deploy/)
	$(GO) test $(TEST_FLAGS) ./deploy/...

## test-stress: the load rehearsal: make test 10 times beside a CPU and disk
## load, stopping at the first failure (scripts/test-stress.sh --help for
## the other loads: two runs at once, make sim beside make test)
STRESS_RUNS ?= 10
STRESS_LOAD ?= cpu
test-stress:
	scripts/test-stress.sh --runs $(STRESS_RUNS) --load $(STRESS_LOAD)

## test-short: tests without the race detector, for a quick loop
test-short: deps
	$(GO) test -count=1 ./...

## lint: gofmt, go vet, staticcheck
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

## fuzz: run every fuzz target (every decoder), one at a time, for FUZZTIME
## each; CI: make fuzz FUZZTIME=60s. FUZZ narrows the targets (an extended
## regexp of their names, e.g. FUZZ='Ack|Manifest'), FUZZDIR the tree
## searched. Every target runs even when one fails; a failing input is
## written to its package's testdata/fuzz/<Target>/ (commit it: make test
## runs it as a regression seed from then on). Seed corpora are the f.Add
## calls and the committed testdata/fuzz files.
FUZZTIME ?= 20s
FUZZ ?= .
FUZZDIR ?= .
fuzz: deps
	@failed=""; n=0; \
	for dir in $$(grep -rl --include='*_test.go' --exclude-dir=third_party '^func Fuzz' $(FUZZDIR) | xargs -n1 dirname | sort -u); do \
		for f in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$dir/*_test.go | grep -E '$(FUZZ)'); do \
			n=$$((n+1)); echo "== $$dir $$f ($(FUZZTIME))"; \
			$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$dir 2>&1 | grep -v '^fuzz: elapsed' || true; \
			$(GO) test -run "^$$f$$" -count=1 $$dir >/dev/null 2>&1 || failed="$$failed $$dir:$$f"; \
		done; \
	done; \
	echo "fuzz: $$n targets, $(FUZZTIME) each"; \
	if [ -n "$$failed" ]; then echo "fuzz: FAILED:$$failed (inputs in testdata/fuzz/)"; exit 1; fi

## screenshots: the console's main pages, taken by its browser tests in
## headless Chromium (apt-get install chromium), into docs/screenshots/
screenshots: deps
	EDGEFLEET_SCREENSHOTS=$(CURDIR)/docs/screenshots $(GO) test -count=1 -run '^Test(Console|Retrain)InBrowser$$' -v ./controlplane/console/

## bench: benchmarks (figures go to docs/benchmarks.md)
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...
	$(MAKE) bench-cost

.PHONY: sim bench-fleet
## sim: every committed fleet-sim scenario, short and large (reports in .sim/)
sim: build
	@for f in fleet-sim/scenarios/*.yaml; do \
		echo "== $$f"; $(BIN)/fleet-sim run $$f --quiet --report .sim/$$(basename $$f .yaml) || exit 1; \
	done

## test-nats: only the NATS cluster tests (also part of make test)
.PHONY: test-nats
test-nats: deps nats-server
	$(GO) test $(TEST_FLAGS) -run 'TestNATS' ./deploy/deploytest/

## soak: the chaos soak (not part of make test): SOAK_AGENTS agents for
## SOAK_DURATION of agent kills, broker outages, control plane restarts, site
## partitions, corrupted chunks and skewed clocks while rollouts and rollbacks
## run under traffic; fails when an invariant breaks (docs/testing.md).
## Report and chart in .soak/<UTC time>/. The issue's full run:
## make soak SOAK_DURATION=30m SOAK_AGENTS=1000
SOAK_DURATION ?= 3m
SOAK_AGENTS   ?= 200
SOAK_SEED     ?= 1
.PHONY: soak
soak: build
	$(BIN)/fleet-sim soak --agents $(SOAK_AGENTS) --duration $(SOAK_DURATION) --seed $(SOAK_SEED) \
		--report .soak/$$(date -u +%Y%m%dT%H%M%SZ)

## bench-fleet: fleet-sim rollout fan-out and scale benchmarks (figures in docs/benchmarks.md)
FLEET_FANOUT_N ?= 100,1000
FLEET_SCALE_N  ?= 100,1000,5000
bench-fleet: build
	$(BIN)/fleet-sim bench fanout --n $(FLEET_FANOUT_N)
	$(BIN)/fleet-sim bench scale --n $(FLEET_SCALE_N)
	$(BIN)/fleet-sim bench telemetry --n 100,1000

## bench-sharing: site-local sharing at 4 sites × 50 devices, a 10 MiB
## model over 4 Mbit/s per site, against a broker-only site of 50 in the
## same run (about 20 minutes; figures in docs/benchmarks.md).
## bench-sharing-large: the same at 20 sharing sites (1,100 agents in one
## process: more than a 2-vCPU machine can simulate, see docs/benchmarks.md)
.PHONY: bench-sharing bench-sharing-large
bench-sharing: build
	$(BIN)/fleet-sim run fleet-sim/scenarios/bench/site-sharing-50.yaml --report $(BIN)/bench/site-sharing-50
bench-sharing-large: build
	$(BIN)/fleet-sim run fleet-sim/scenarios/bench/site-sharing-large.yaml --report $(BIN)/bench/site-sharing-large

## bench-cost: the control plane's cost per device, measured out of process:
## `edgefleet serve` as its own process, its CPU (from /proc) for rollouts
## of a 1 MiB model to COST_N agents and for telemetry ingest at
## COST_REPORT_RATE reports/s, each against a raw broker process of the same
## code in the same command (figures in docs/benchmarks.md). The agents'
## model files go to COST_AGENT_DIR (a tmpfs by default, where there is one:
## on the one disk their writeback weighs on the measured processes).
.PHONY: bench-cost
COST_N           ?= 1000
COST_REPORT_RATE ?= 10000
COST_AGENT_DIR   ?= $(wildcard /dev/shm)
COST_FLAGS       ?=
bench-cost: build
	@mkdir -p $(BIN)/bench
	$(BIN)/fleet-sim bench cost --cp-bin $(BIN)/edgefleet --n $(COST_N) --report-rate $(COST_REPORT_RATE) \
		$(if $(COST_AGENT_DIR),--agent-dir $(COST_AGENT_DIR)) --report $(BIN)/bench/cost.json $(COST_FLAGS)

## bench-agent: one real agent process, measured from outside: idle and
## serving RSS, a 100 MiB model swapped under load, the stripped binary on
## amd64 and arm64, and the arm64 agent's memory under qemu-user (figures
## in docs/benchmarks.md; reports in bin/bench/)
.PHONY: bench-agent
BENCH_AGENT_FLAGS ?=
bench-agent: build
	@command -v aarch64-linux-gnu-gcc >/dev/null || sh scripts/install-cross.sh
	@mkdir -p $(BIN)/bench
	@set -e; for arch in amd64 arm64; do \
		case $$arch in amd64) cc=x86_64-linux-gnu-gcc;; arm64) cc=aarch64-linux-gnu-gcc;; esac; \
		CGO_ENABLED=1 GOOS=linux GOARCH=$$arch CC=$$cc $(GO) build -tags $(AGENT_TAGS) $(CROSS_FLAGS) \
			-o $(BIN)/bench/$$arch/edgefleet-agent ./agent/cmd/edgefleet-agent; \
	done
	$(BIN)/fleet-sim bench agent --agent-bin $(BIN)/bench/amd64/edgefleet-agent \
		--agent-ort-lib $(CURDIR)/third_party/onnxruntime/linux-x64/libonnxruntime.so.1 \
		--report $(BIN)/bench/agent-amd64.json $(BENCH_AGENT_FLAGS)
	$(BIN)/fleet-sim bench agent --agent-bin $(BIN)/bench/arm64/edgefleet-agent \
		--agent-exec "qemu-aarch64 -L /usr/aarch64-linux-gnu" \
		--agent-ort-lib $(CURDIR)/third_party/onnxruntime/linux-arm64/libonnxruntime.so.1 \
		--skip-swap --report $(BIN)/bench/agent-arm64-qemu.json

## image: the control plane container image $(IMAGE):$(VERSION) (needs a
## Docker engine; deploy/image/Dockerfile, context the repository)
IMAGE ?= edgefleet/edgefleet
.PHONY: image
image:
	docker build -f deploy/image/Dockerfile --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) \
		-t $(IMAGE):$(VERSION) .

clean:
	rm -rf $(BIN) .demo

## cross: agent tarballs for linux/amd64 and linux/arm64 (cgo; Debian cross
## compilers) with onnxruntime, config example, unit, install.sh; dist/SHA256SUMS
DIST        := $(CURDIR)/dist
CROSS_ARCHS ?= amd64 arm64
CROSS_FLAGS := -trimpath -buildvcs=false -ldflags "-s -w -buildid= $(LDFLAGS)"
.PHONY: cross test-cross test-deploy dist
cross: deps
	@command -v aarch64-linux-gnu-gcc >/dev/null || sh scripts/install-cross.sh
	@mkdir -p $(DIST)
	@set -e; for arch in $(CROSS_ARCHS); do \
		case $$arch in amd64) cc=x86_64-linux-gnu-gcc; ort=x64;; arm64) cc=aarch64-linux-gnu-gcc; ort=arm64;; \
			*) echo "cross: unsupported arch $$arch"; exit 1;; esac; \
		echo "== linux/$$arch ($$cc)"; \
		CGO_ENABLED=1 GOOS=linux GOARCH=$$arch CC=$$cc $(GO) build -tags $(AGENT_TAGS) $(CROSS_FLAGS) \
			-o $(DIST)/.build/$$arch/edgefleet-agent ./agent/cmd/edgefleet-agent; \
		sh scripts/package-agent.sh $(VERSION) $$arch $(DIST)/.build/$$arch/edgefleet-agent \
			third_party/onnxruntime/linux-$$ort/libonnxruntime.so.1 $(DIST); \
	done
	@cd $(DIST) && sha256sum edgefleet-*.tar.gz > SHA256SUMS && cat SHA256SUMS
	@ls -l $(DIST)/.build/*/edgefleet-agent $(DIST)/*.tar.gz

## test-cross: the arm64 agent under qemu-user: --version, onnxruntime, an inference
test-cross:
	$(MAKE) cross CROSS_ARCHS=arm64
	@command -v qemu-aarch64 >/dev/null || sh scripts/install-cross.sh
	EDGEFLEET_CROSS_TARBALL=$(DIST)/edgefleet-agent-$(VERSION)-linux-arm64.tar.gz \
		$(GO) test -count=1 -timeout 10m -run 'TestCross' -v ./deploy/deploytest/

## test-deploy: the deployment kit's tests (also part of make test)
test-deploy: deps nats-server
	$(GO) test $(TEST_FLAGS) ./deploy/...

## dist: cross tarballs plus the control plane (linux/amd64 + arm64) with its
## units (serve, broker sync) and broker configs (scripts/package-controlplane.sh)
dist: cross
	@set -e; for arch in $(CROSS_ARCHS); do \
		case $$arch in amd64) cc=x86_64-linux-gnu-gcc; ort=x64;; arm64) cc=aarch64-linux-gnu-gcc; ort=arm64;; esac; \
		CGO_ENABLED=1 GOOS=linux GOARCH=$$arch CC=$$cc $(GO) build $(CROSS_FLAGS) \
			-o $(DIST)/.build/$$arch/edgefleet ./controlplane/cmd/edgefleet; \
		sh scripts/package-controlplane.sh $(VERSION) $$arch $(DIST)/.build/$$arch/edgefleet \
			third_party/onnxruntime/linux-$$ort/libonnxruntime.so.1 $(DIST); \
	done
	@cd $(DIST) && sha256sum edgefleet-*.tar.gz > SHA256SUMS && cat SHA256SUMS
