# QYAI: `make help` lists the targets. Recipes call scripts under deploy/local
# once they grow beyond one line.
SHELL := /bin/bash
GO ?= go
MODULES := ./pkg/... ./gateway/... ./meter/... ./admin/... ./deploy/... ./testkit/...

.DEFAULT_GOAL := help

help: ## List the targets
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z_-]+:.*## /{printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

install: ## Install what is missing: redis-server, clickhouse-server (apt), nats-server (go install)
	@deploy/local/install.sh

run: ## Start the whole local stack (servers, simulator, gateway, meter, admin; TOPOLOGY=cluster: clustered engines); Ctrl-C stops it
	@deploy/local/run.sh

build: ## Build every binary into .bin/
	$(GO) build -o .bin/ ./gateway/cmd/gateway ./meter/cmd/meter ./admin/cmd/admin ./deploy/cmd/upstream-sim

images: ## Build OCI images offline into .bin/images/<service>.tar, tagged qyai/<service>:<git describe> (VERSION=... overrides)
	cd tools/images && GOWORK=off $(GO) run . -repo $(CURDIR) $(if $(VERSION),-version $(VERSION))

test-images: ## Test the image builder (reproducible digests, config, layer) and run the images under podman (rootful, runc)
	@deploy/local/install.sh images
	cd tools/images && GOWORK=off $(GO) test -count=1 -timeout 15m ./...

test-chart: ## Lint the Helm chart (helm lint --strict) and run its Go tests: renders, goldens, policy, --validate, and a real kube-apiserver (install, upgrade, rollback)
	@deploy/local/test-chart.sh

# The fuzz runs in `test` are bounded by a count, not a duration: Go 1.26's fuzz
# coordinator can report "context deadline exceeded" when a -fuzztime duration
# ends while a starved worker is mid-call (go.dev/issue/75804, fixed in 1.27).
test: install ## Run every test (unit, integration against real servers incl. the clustered engines, end to end, images under podman, the Helm chart) and a short fuzz run
	$(GO) test -count=1 -timeout 12m $(MODULES)
	$(GO) test -count=1 -run '^$$' -fuzz FuzzPrepare -fuzztime 50000x ./gateway/internal/proxy
	$(GO) test -count=1 -run '^$$' -fuzz FuzzObject -fuzztime 30000x ./gateway/internal/proxy
	@$(MAKE) --no-print-directory test-images
	@$(MAKE) --no-print-directory test-chart

bench: ## Benchmark the gateway, the whole system and a bare reference proxy against the simulator, then 8,000 open streams and cache routing (not a test; a few minutes)
	@deploy/local/bench.sh

bench-meter: ## Measure the metering pipeline: events/s publisher -> NATS -> meter -> ClickHouse, and lag (not a test)
	@deploy/local/bench-meter.sh

fuzz: ## Fuzz request parsing for a minute per target
	$(GO) test -run '^$$' -fuzz FuzzPrepare -fuzztime 60s ./gateway/internal/proxy
	$(GO) test -run '^$$' -fuzz FuzzObject -fuzztime 60s ./gateway/internal/proxy

vet: ## go vet every module
	$(GO) vet $(MODULES)

fmt: ## Format the Go code
	gofmt -w $$(git ls-files '*.go')

lint: ## golangci-lint (pinned in tools/lint, built into .bin/) over every module, then shellcheck
	@deploy/local/lint.sh

tidy-check: ## Fail when a go.mod or go.sum is not tidy
	@deploy/local/tidy-check.sh

check: ## Format check, vet, lint, tidy check and tests (what CI should run)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(MAKE) vet lint tidy-check test

clean: ## Remove build output and local stack data
	rm -rf .bin .run

.PHONY: help install run build images test-images test-chart test bench bench-meter fuzz vet fmt lint tidy-check check clean
