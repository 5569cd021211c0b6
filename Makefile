# edgefleet — build, test and demo. `make demo` and `make test` are the two
# commands a fresh machine (Go, gcc, npm, apt) needs; everything else they
# need is fetched by `make deps`.

SHELL       := /bin/bash
GO          ?= go
GOARCH      := $(shell $(GO) env GOARCH)
ORT_ARCH    := $(if $(filter arm64,$(GOARCH)),arm64,x64)
ORT_LIB     := $(CURDIR)/third_party/onnxruntime/linux-$(ORT_ARCH)/libonnxruntime.so.1
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -X main.version=$(VERSION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
BIN         := $(CURDIR)/bin
TEST_FLAGS  ?= -race -count=1 -timeout 12m
export EDGEFLEET_ORT_LIB := $(ORT_LIB)

.PHONY: all deps build proto proto-check demo test test-short lint fmt fuzz bench clean

all: build

## deps: the onnxruntime 1.24.3 shared library (linux x64 + arm64, sha256-pinned)
deps: $(ORT_LIB)

$(ORT_LIB): scripts/fetch-onnxruntime.sh
	sh scripts/fetch-onnxruntime.sh

## build: bin/edgefleet (control plane + CLI), bin/edgefleet-agent, bin/fleet-sim
build: deps
	@mkdir -p $(BIN)
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/edgefleet ./controlplane/cmd/edgefleet
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/edgefleet-agent ./agent/cmd/edgefleet-agent
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

## demo: the main job end to end on the embedded defaults
demo: build
	$(BIN)/edgefleet demo --bin $(BIN) --work-dir $(CURDIR)/.demo

## test: lint, then every test with the race detector (real broker, badger, onnxruntime)
test: deps lint
	$(GO) test $(TEST_FLAGS) ./...

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

## fuzz: run every fuzz target for FUZZTIME each (seed corpora also run in make test)
FUZZTIME ?= 20s
fuzz: deps
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

## bench: benchmarks (figures go to docs/benchmarks.md)
bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

clean:
	rm -rf $(BIN) .demo
