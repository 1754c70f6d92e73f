# secretplane: make run starts a dev server; make test runs every test.
GO        ?= go
BIN       := bin/secretplane
PKG       := ./cmd/secretplane
DATA_DIR  ?=

.PHONY: all build run test bench proto lint fuzz clean

all: build

build:
	$(GO) build -o $(BIN) $(PKG)

# Dev server on embedded defaults (SQLite store, built-in CA) in the user's
# data directory; pass DATA_DIR=... to use another.
run: build
	./$(BIN) server --dev $(if $(DATA_DIR),--data-dir $(DATA_DIR))

# Every test, starting the real components they need (PostgreSQL 15).
test:
	./scripts/test.sh

bench:
	./scripts/bench.sh

# Regenerate proto/ Go code (protoc from Debian, plugins pinned in tools/proto).
proto:
	./scripts/gen-proto.sh

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

FUZZTIME ?= 60s
# Every fuzz target in turn (go test -fuzz takes one target at a time).
FUZZ_TARGETS := \
	./controlplane/secretref:FuzzParse ./controlplane/secretref:FuzzParsePattern \
	./controlplane/secretref:FuzzDetectLiteral ./controlplane/paging:FuzzPageToken \
	./controlplane/audit:FuzzAppendEvent ./controlplane/audit:FuzzDecodeSegment \
	./cmd/secretplane:FuzzParseConfigDocument ./controlplane/material:FuzzParse
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		pkg=$${t%%:*}; name=$${t##*:}; \
		echo "== $$name ($$pkg)"; \
		$(GO) test -run='^$$' -fuzz="^$$name\$$" -fuzztime=$(FUZZTIME) $$pkg || exit 1; \
	done

clean:
	rm -rf bin
