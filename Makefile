# Capstan: build, test and run. `make help` lists the targets.
#
# Every binary is services/<name>/main.go; the targets find them, so a new
# binary needs no edit here. Tools (buf, protoc-gen-go-grpc, grpcurl) are
# pinned in tools/go.mod and run with `go tool -modfile=tools/go.mod`; see
# docs/adr/0001-tools-and-generated-code.md.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build
MAKEFLAGS += --no-print-directory

GO ?= go
TOOL := $(GO) tool -modfile=tools/go.mod
MODULE := github.com/capstan-dev/capstan

BIN_DIR ?= bin
STATE_DIR ?= .local
SERVICES := $(sort $(patsubst services/%/main.go,%,$(wildcard services/*/main.go)))
# Demo workloads the node agents run (not images: they run inside a node).
WORKLOADS := $(sort $(patsubst deploy/workloads/%/main.go,%,$(wildcard deploy/workloads/*/main.go)))

# Stamped into every binary (internal/version.Version).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
GO_LDFLAGS := -s -w -X $(MODULE)/internal/version.Version=$(VERSION)

PKGS ?= ./...
TEST_TIMEOUT ?= 15m
TEST_FLAGS ?=
BENCH_TIME ?= 1s
BENCH_FLAGS ?=
# Tests that need a Docker engine: build tag `docker`, packages under test/docker.
DOCKER_TEST_PKGS ?= ./test/docker/...
DOCKER_TEST_TIMEOUT ?= 30m

# make chaos: how long faults keep coming, the seed to replay (0: a new one),
# and the shorter run `make test` does.
DURATION ?= 5m
SEED ?= 0
CHAOS_FLAGS ?=
TEST_CHAOS_DURATION ?= 3m

IMAGE_REPO ?= capstan
IMAGE_TAG ?= dev
export CAPSTAN_IMAGE_TAG := $(IMAGE_TAG)

LOCALCLUSTER := $(GO) run ./hack/localcluster --state-dir $(STATE_DIR) --bin-dir $(BIN_DIR)
DOCKER_OK = docker info >/dev/null 2>&1
DOCKER_TESTS_RUNNABLE = { $(DOCKER_OK) && [ -n "$$($(GO) list -tags docker $(DOCKER_TEST_PKGS) 2>/dev/null)" ]; }

.PHONY: help build generate lint fmt check-generated test test-unit test-docker test-chaos chaos bench \
	local-up local-down local-status up down images clean clean-state

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

build: ## static binaries for every services/*/main.go and deploy/workloads/*/main.go into bin/
	@mkdir -p $(BIN_DIR)
	@echo "building $(SERVICES) $(WORKLOADS) into $(BIN_DIR)/"
	@CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(GO_LDFLAGS)' -o $(BIN_DIR)/ \
	  $(addprefix ./services/,$(SERVICES)) $(addprefix ./deploy/workloads/,$(WORKLOADS))

generate: ## regenerate gen/ from proto/ (buf, offline)
	$(TOOL) buf generate

# Go files we write (gen/ is buf's): tracked and new, not ignored.
GO_SOURCES = $(wildcard $(shell git ls-files --cached --others --exclude-standard -- '*.go' ':!gen/'))
# Imports in three groups: standard library, third party, Capstan.
GCI := $(TOOL) gci
GCI_SECTIONS := -s standard -s default -s 'prefix($(MODULE))'

lint: ## buf lint, gofmt, import grouping (gci), go vet, staticcheck
	$(TOOL) buf lint
	@bad="$$(gofmt -l $(GO_SOURCES))"; \
	if [ -n "$$bad" ]; then echo "gofmt would change these files (make fmt):"; echo "$$bad"; exit 1; fi
	@bad="$$($(GCI) list $(GCI_SECTIONS) $(GO_SOURCES))"; \
	if [ -n "$$bad" ]; then echo "imports not grouped standard / third party / Capstan (make fmt):"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags docker $(DOCKER_TEST_PKGS)
	$(TOOL) staticcheck ./...
	$(TOOL) staticcheck -tags docker $(DOCKER_TEST_PKGS)

fmt: ## gofmt and group imports: standard library, third party, Capstan
	gofmt -w $(GO_SOURCES)
	@$(GCI) write $(GCI_SECTIONS) $(GO_SOURCES) 2>&1 | { grep -v 'Writing formatted File' || true; }

check-generated: generate ## fail if gen/ differs from what proto/ generates
	@git diff --exit-code --stat -- gen/ || { echo "gen/ is out of date: run 'make generate' and commit it"; exit 1; }
	@untracked="$$(git status --porcelain --untracked-files=all -- gen/)"; \
	if [ -n "$$untracked" ]; then echo "$$untracked"; echo "gen/ has files git does not track: run 'make generate' and commit them"; exit 1; fi

# The docker tests run after the unit tests when they can; when they cannot,
# the notice comes first. Last, a chaos run of $(TEST_CHAOS_DURATION): on
# compose with a Docker engine, on local processes without (it says which).
test: check-generated lint ## everything CI runs: generated code, lint, vet, go test -race, docker tests, a 3-minute chaos run
	@if ! $(DOCKER_TESTS_RUNNABLE); then $(MAKE) test-docker; fi
	@$(MAKE) test-unit
	@if $(DOCKER_TESTS_RUNNABLE); then $(MAKE) test-docker; fi
	@$(MAKE) test-chaos

# The tests that run real binaries take them from bin/ (CAPSTAN_BIN_DIR).
test-unit: build ## go test -race $(PKGS) (no Docker needed; PKGS=./... by default)
	CAPSTAN_BIN_DIR=$(CURDIR)/$(BIN_DIR) $(GO) test -race -timeout $(TEST_TIMEOUT) $(TEST_FLAGS) $(PKGS)

test-docker: ## tests that need a Docker engine (skipped without one)
	@if ! $(DOCKER_OK); then echo "SKIPPED: docker tests (no Docker engine)"; \
	elif [ -z "$$($(GO) list -tags docker $(DOCKER_TEST_PKGS) 2>/dev/null)" ]; then \
	  echo "SKIPPED: docker tests (no packages match $(DOCKER_TEST_PKGS) yet)"; \
	else $(MAKE) images && $(GO) test -tags docker -p 1 -timeout $(DOCKER_TEST_TIMEOUT) $(TEST_FLAGS) $(DOCKER_TEST_PKGS); fi

test-chaos: ## make chaos for $(TEST_CHAOS_DURATION): on compose with a Docker engine, on local processes without
	@$(MAKE) chaos DURATION=$(TEST_CHAOS_DURATION)

chaos: build ## faults at random while clients check every guarantee (DURATION=5m, SEED=n replays); compose if Docker works, else local processes
	@if $(DOCKER_OK); then $(MAKE) images; else echo "no Docker engine: the chaos run uses local processes"; fi
	$(GO) run ./hack/chaos -duration $(DURATION) -seed $(SEED) -bin-dir $(BIN_DIR) $(CHAOS_FLAGS)

bench: ## benchmarks only (PKGS, BENCH_TIME=1s, BENCH_FLAGS=...)
	$(GO) test -run '^$$' -bench . -benchtime $(BENCH_TIME) -benchmem $(BENCH_FLAGS) $(PKGS)

# Real processes on free loopback ports (hack/benchfailover); not a test.
BENCH_FAILOVER_TRIALS ?= 10
BENCH_FAILOVER_FLAGS ?=
.PHONY: bench-failover
bench-failover: build ## failover: SIGKILL/SIGTERM/SIGSTOP of the active controller-manager and scheduler, 30 API-replica faults (lease transitions counted), a worker kill (BENCH_FAILOVER_TRIALS=10)
	$(GO) run ./hack/benchfailover -bin-dir $(BIN_DIR) -trials $(BENCH_FAILOVER_TRIALS) $(BENCH_FAILOVER_FLAGS)

.PHONY: bench-api
bench-api: build ## API writes vs raw etcd puts on the same 3 real members (BENCH_API_FLAGS=-n 2000 -c 20)
	CAPSTAN_BIN_DIR=$(CURDIR)/$(BIN_DIR) $(GO) run ./hack/benchapi $(BENCH_API_FLAGS)

.PHONY: bench-podstart
bench-podstart: build ## pod start with 3 real node agents: a ReplicaSet of 100 to Running, then a dead node's pods replaced (BENCH_PODSTART_FLAGS=-replicas 100)
	$(GO) run ./hack/benchpodstart -bin-dir $(BIN_DIR) $(BENCH_PODSTART_FLAGS)

local-up: build ## start 3 masters as local processes (state in .local/)
	$(LOCALCLUSTER) up

local-down: ## stop the local processes
	$(LOCALCLUSTER) down

local-status: ## list the local processes
	$(LOCALCLUSTER) status

up: ## start the cluster: docker compose when Docker works, else local processes
	@if $(DOCKER_OK); then \
	  echo "starting with docker compose"; \
	  $(MAKE) images; \
	  deploy/compose.sh up; \
	else \
	  echo "no Docker engine: starting local processes (make local-up)"; \
	  $(MAKE) local-up; \
	fi

down: ## stop what `make up` started (compose keeps its volumes; see deploy/compose.sh)
	@if $(DOCKER_OK); then \
	  echo "stopping docker compose"; \
	  deploy/compose.sh down; \
	else \
	  echo "no Docker engine: stopping local processes (make local-down)"; \
	  $(MAKE) local-down; \
	fi

# A scratch image holds one binary and nothing else; the build context is a
# directory with just that binary and an `entrypoint` symlink to it, because
# ENTRYPOINT cannot name the binary through ARG. The node agent's image also
# holds the demo workloads (/echo), the only programs its pods can run there.
# docker build's own notices (the legacy builder's deprecation) show only
# when a build fails.
images: build ## one FROM-scratch image per binary: $(IMAGE_REPO)/<binary>:$(IMAGE_TAG)
	@for b in $(SERVICES); do \
	  ctx="$(BIN_DIR)/.image/$$b"; rm -rf "$$ctx"; mkdir -p "$$ctx"; \
	  ln -f "$(BIN_DIR)/$$b" "$$ctx/$$b" 2>/dev/null || cp "$(BIN_DIR)/$$b" "$$ctx/$$b"; \
	  ln -s "$$b" "$$ctx/entrypoint"; \
	  if [ "$$b" = node-agent ]; then \
	    for w in $(WORKLOADS); do cp "$(BIN_DIR)/$$w" "$$ctx/$$w"; done; \
	  fi; \
	  echo "image $(IMAGE_REPO)/$$b:$(IMAGE_TAG)"; \
	  out="$$(docker build --quiet -f deploy/Dockerfile --build-arg BINARY="$$b" -t "$(IMAGE_REPO)/$$b:$(IMAGE_TAG)" "$$ctx" 2>&1 >/dev/null)" || \
	    { echo "$$out"; exit 1; }; \
	done
	@printf '%s\n' '# Written by make images: the tag of the Capstan images docker-compose.yml runs.' \
	  'CAPSTAN_IMAGE_TAG=$(IMAGE_TAG)' > .env

# The `docker compose` plugin, for machines that have only Debian's
# docker-compose (v1): built from the module proxy at the version pinned in
# tools/compose/go.mod, into the Docker CLI's plugin directory. .ci/run runs
# it, so the docker tests cover both composes.
COMPOSE_PLUGIN ?= $(HOME)/.docker/cli-plugins/docker-compose
.PHONY: compose-plugin
compose-plugin: ## build the `docker compose` plugin into ~/.docker/cli-plugins unless `docker compose` already works
	@if docker compose version >/dev/null 2>&1; then \
	  echo "docker compose is here: $$(docker compose version)"; \
	else \
	  echo "building the docker compose plugin into $(COMPOSE_PLUGIN)"; \
	  mkdir -p "$(dir $(COMPOSE_PLUGIN))"; \
	  cd tools/compose && version="$$($(GO) list -m -f '{{.Version}}' github.com/docker/compose/v5)" && \
	  CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X github.com/docker/compose/v5/internal.Version=$$version" \
	    -o "$(COMPOSE_PLUGIN)" github.com/docker/compose/v5/cmd && \
	  docker compose version; \
	fi

clean: ## remove bin/ (the local cluster's state stays: make clean-state)
	rm -rf $(BIN_DIR)

clean-state: local-down ## stop the local cluster and its pods, and delete its state
	$(LOCALCLUSTER) kill-pods
	rm -rf $(STATE_DIR)
