# Devpilot — see README.md.
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X github.com/devpilot/devpilot/shared/version.Version=$(VERSION)
DEMO_DIR ?= .demo
DEMO_LISTEN ?= 127.0.0.1:8443

.PHONY: build test test-sqlite test-postgres lint demo clean fuzz

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
PG_SUITES ?= ./controlplane/store/... ./controlplane/provision/ ./controlplane/tasks/ ./controlplane/devenv/ ./controlplane/web/

## test: lint, then every test with the race detector (SQLite), then the
## control-plane suites again on PostgreSQL; scripts/with-postgres.sh starts
## a throwaway PostgreSQL server for both (or uses DEVPILOT_TEST_POSTGRES)
test: lint
	./scripts/with-postgres.sh $(MAKE) --no-print-directory test-sqlite test-postgres

test-sqlite:
	$(GO) test -race -count=1 -timeout 20m ./...

# -skip: the TestPostgres* tests use PostgreSQL whatever the suite's
# database, and ran in test-sqlite already.
test-postgres:
	DEVPILOT_TEST_DATABASE=postgres $(GO) test -race -count=1 -timeout 20m -skip '^TestPostgres' $(PG_SUITES)

## fuzz: a short run of every fuzz target (the seed corpora also run in make test)
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime $${FUZZTIME:-15s} ./shared/protocol

## demo: build, start `devpilot dev` in the foreground, print what to try
demo: build
	@./scripts/demo.sh "$(DEMO_DIR)" "$(DEMO_LISTEN)"

clean:
	rm -rf bin $(DEMO_DIR)

.PHONY: e2e e2e-rootfs
E2E_CACHE ?= /var/cache/devpilot-e2e

## e2e-rootfs: debootstrap the Debian bookworm root file system e2e containers boot (root; cached in E2E_CACHE)
e2e-rootfs:
	./e2e/rootfs.sh "$(E2E_CACHE)"

## e2e: every simulated server boots a real Debian system (systemd-nspawn, cloud-init, sshd); root only
e2e: e2e-rootfs
	DEVPILOT_E2E_ROOTFS="$(E2E_CACHE)/rootfs-bookworm" DEVPILOT_E2E_TIMINGS="$(CURDIR)/e2e/.cache/timings.txt" \
		$(GO) test -tags e2e -count=1 -v -parallel 4 -timeout 14m ./e2e/...
