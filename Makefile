# Devpilot — see README.md.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS  := -s -w -X github.com/devpilot/devpilot/shared/version.Version=$(VERSION) \
	-X github.com/devpilot/devpilot/shared/version.Commit=$(COMMIT) \
	$(if $(RELEASE_KEYS),-X github.com/devpilot/devpilot/shared/release.Builtin=$(RELEASE_KEYS))
DEMO_DIR ?= .demo
DEMO_LISTEN ?= 127.0.0.1:8443

.PHONY: build test test-sqlite test-postgres test-postgres-active test-fast test-stress lint demo clean fuzz bench-scale

## build: static binaries in bin/
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/devpilot ./cmd/devpilot
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/devpilot-agent ./cmd/devpilot-agent

## lint: gofmt, go vet and golangci-lint (.golangci.yml; pinned in tools/go.mod)
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/...
	$(GO) tool -modfile=tools/go.mod golangci-lint run ./...

# The control-plane suites that run a second time, on PostgreSQL.
PG_SUITES ?= ./controlplane/store/... ./controlplane/api/ ./controlplane/provision/ ./controlplane/tasks/ ./controlplane/devenv/ ./controlplane/web/

# The suites whose harness runs N active control planes on one PostgreSQL
# database behind a TCP balancer when DEVPILOT_TEST_REPLICAS=N (issue 17;
# the others still run one control plane).
ACTIVE_SUITES   ?= ./controlplane/tasks/ ./controlplane/api/
ACTIVE_REPLICAS ?= 3

# Go tests run under gotestsum (tools/go.mod): one line per package, the
# failing tests' output, and at the end every failing test listed by name.
# TEST_LOGS, when set, keeps each run's `go test -json` stream there.
TOOLS     := $(GO) tool -modfile=$(CURDIR)/tools/go.mod
TEST_LOGS ?=
GOTESTSUM  = $(TOOLS) gotestsum --format pkgname-and-test-fails --format-hide-empty-pkg $(if $(TEST_LOGS),--jsonfile $(TEST_LOGS)/$(1).json)

## test: lint, then every test with the race detector (SQLite), then the
## control-plane suites again on PostgreSQL; scripts/with-postgres.sh starts
## a throwaway PostgreSQL server for both (or uses DEVPILOT_TEST_POSTGRES)
test: lint
	./scripts/with-postgres.sh $(MAKE) --no-print-directory test-sqlite test-postgres test-postgres-active

test-sqlite:
	@$(if $(TEST_LOGS),mkdir -p $(TEST_LOGS),true)
	$(call GOTESTSUM,sqlite) -- -race -count=1 -timeout 20m ./...

# -skip: the TestPostgres* tests use PostgreSQL whatever the suite's
# database, and ran in test-sqlite already.
test-postgres:
	@$(if $(TEST_LOGS),mkdir -p $(TEST_LOGS),true)
	DEVPILOT_TEST_DATABASE=postgres $(call GOTESTSUM,postgres) -- -race -count=1 -timeout 20m -skip '^TestPostgres' $(PG_SUITES)

## test-postgres-active: ACTIVE_SUITES again, each test's control plane
## ACTIVE_REPLICAS `serve --mode active` on one PostgreSQL database
test-postgres-active:
	@$(if $(TEST_LOGS),mkdir -p $(TEST_LOGS),true)
	DEVPILOT_TEST_DATABASE=postgres DEVPILOT_TEST_REPLICAS=$(ACTIVE_REPLICAS) $(call GOTESTSUM,postgres-active) -- -race -count=1 -timeout 20m -skip '^TestPostgres' $(ACTIVE_SUITES)

## test-fast: every package under -short, without the race detector: the
## whole-system suites (devenv, browser, ACME, SIGKILL) skip, saying so.
## Under 2 minutes with a warm build cache; needs no PostgreSQL server
## except for controlplane/store, which scripts/with-postgres.sh provides.
test-fast:
	@$(if $(TEST_LOGS),mkdir -p $(TEST_LOGS),true)
	./scripts/with-postgres.sh $(call GOTESTSUM,fast) -- -short -count=1 -timeout 5m ./...

# The packages whose tests deal in time: sessions, heartbeats, deadlines,
# retries, SIGKILLed processes.
STRESS_PKGS ?= ./controlplane/hub/ ./controlplane/tasks/ ./controlplane/provision/ ./controlplane/devenv/ ./bootstrap/sshdiag/ ./agent/session/

## test-stress: the timing-sensitive suites twice with the race detector
## while busy loops (twice the cores) keep every core busy: a test that
## needs an idle machine fails here.
test-stress:
	@$(if $(TEST_LOGS),mkdir -p $(TEST_LOGS),true)
	./scripts/with-postgres.sh ./scripts/busy.sh $(call GOTESTSUM,stress) -- -race -count=2 -timeout 40m $(STRESS_PKGS)

## fuzz: every fuzz target for FUZZTIME each (default 15s; the seed corpora also run in make test)
fuzz:
	GO=$(GO) ./scripts/fuzz.sh

## demo: build, start `devpilot dev` in the foreground, print what to try
demo: build
	@./scripts/demo.sh "$(DEMO_DIR)" "$(DEMO_LISTEN)"

clean:
	rm -rf bin dist $(DEMO_DIR)

.PHONY: packages
## packages: .deb and .rpm of devpilot and devpilot-agent in dist/ (nfpm, no Docker; ARCHES="amd64 arm64" for more)
packages:
	GO=$(GO) VERSION=$(VERSION) COMMIT=$(COMMIT) ./scripts/packages.sh dist

.PHONY: image
IMAGE_ARCH ?= amd64
## image: the control plane's OCI image, no Docker: dist/image (OCI layout) and dist/devpilot-image.tar (docker/podman load)
image:
	rm -rf dist/stage-image && mkdir -p dist/stage-image/agent
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o dist/stage-image/devpilot ./cmd/devpilot
	for a in amd64 arm64; do CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
		-o dist/stage-image/agent/devpilot-agent-linux-$$a ./cmd/devpilot-agent || exit 1; done
	$(GO) run ./packaging/cmd/devpilot-image --binary dist/stage-image/devpilot --agent-dir dist/stage-image/agent \
		--version '$(VERSION)' --revision '$(COMMIT)' --arch $(IMAGE_ARCH) --out dist

.PHONY: e2e e2e-rootfs
E2E_CACHE ?= /var/cache/devpilot-e2e

## e2e-rootfs: debootstrap the Debian bookworm root file system e2e containers boot (root; cached in E2E_CACHE)
e2e-rootfs:
	./e2e/rootfs.sh "$(E2E_CACHE)"

PKG_VERSION = $(shell ./scripts/packages.sh --version-of '$(VERSION)')

## e2e: every simulated server boots a real Debian system (systemd-nspawn, cloud-init, sshd); root only.
## TestDebPackage installs the devpilot .deb (built here: deb only, amd64) in one of them.
e2e: e2e-rootfs
	GO=$(GO) VERSION=$(VERSION) COMMIT=$(COMMIT) ARCHES=amd64 PACKAGES=devpilot PACKAGERS=deb ./scripts/packages.sh dist
	DEVPILOT_E2E_DEB="$(CURDIR)/dist/devpilot_$(PKG_VERSION)-1_amd64.deb" \
	DEVPILOT_E2E_ROOTFS="$(E2E_CACHE)/rootfs-bookworm" DEVPILOT_E2E_TIMINGS="$(CURDIR)/e2e/.cache/timings.txt" \
		$(GO) test -tags e2e -count=1 -v -parallel 4 -timeout 14m ./e2e/...

## bench-scale: the scale benchmark (controlplane/benchscale): seeds
## BENCH_SERVERS enrolled servers, runs bin/devpilot serve over TLS and
## BENCH_AGENTS agents in load-generator processes, prints the report
## (README "Scale"). BENCH_DATABASE=postgres://… runs it on PostgreSQL;
## with it, BENCH_REPLICAS=N runs N control planes (serve --mode active)
## behind loopback balancers and SIGKILLs one of them.
BENCH_SERVERS  ?= 100000
BENCH_AGENTS   ?= 19500
BENCH_REPLICAS ?= 1
BENCH_FLAGS    ?=
bench-scale: build
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/devpilot-bench ./cmd/devpilot-bench
	DEVPILOT_BENCH_DATABASE=$(BENCH_DATABASE) ./bin/devpilot-bench run --bin bin/devpilot \
		--servers $(BENCH_SERVERS) --agents $(BENCH_AGENTS) --replicas $(BENCH_REPLICAS) $(BENCH_FLAGS)
