# Code generation for mqttrpc. Run `make generate` after changing a .proto
# file or the generator; .ci/check-generated.sh fails when its output differs
# from what is checked in.
#
# Needs protoc 3.21 or later with the well-known types
# (apt-get install protobuf-compiler libprotobuf-dev). The plugins are built
# from this module into bin/: protoc-gen-go at the version go.mod pins (a tool
# directive) and protoc-gen-mqttrpc from ./protoc-gen-mqttrpc.
#
# Every .proto file is compiled with these import roots, so imports are
# written relative to one of them:
#   proto/         mqttrpc/v1/options.proto, the options users import
#   internal/gen/  the generator's test protos (mqttrpctest/...)
#   examples/      the examples' protos, found automatically
# Output goes where the file's go_package says (module=$(MODULE)), so each
# go_package must lie inside this module.
#
# Edition files (a first statement `edition = "..."`) need protoc 27 or later.
# protoc 3.21 cannot parse them, so this Makefile leaves them to the golden
# test, which compiles them with protocompile (go test ./protoc-gen-mqttrpc
# -update); it handles the test protos only.

GO ?= go
PROTOC ?= protoc
MODULE := github.com/mqttrpc/mqttrpc
BIN := $(CURDIR)/bin

OPTIONS_PROTOS := $(shell find proto -name '*.proto' | LC_ALL=C sort)
TEST_PROTOS := $(shell find internal/gen -name '*.proto' | LC_ALL=C sort)
EXAMPLE_PROTOS := $(shell find examples -name '*.proto' 2>/dev/null | LC_ALL=C sort)
EDITION_PROTOS := $(shell grep -l '^edition *=' /dev/null $(TEST_PROTOS) $(EXAMPLE_PROTOS))
PROTOC_PROTOS := $(filter-out $(EDITION_PROTOS),$(TEST_PROTOS) $(EXAMPLE_PROTOS))

PROTOC_FLAGS := -I proto -I internal/gen $(if $(EXAMPLE_PROTOS),-I examples) \
	--plugin=protoc-gen-go=$(BIN)/protoc-gen-go \
	--go_out=. --go_opt=module=$(MODULE)

# The steps: build protoc-gen-go; generate the options' Go types, with which
# protoc-gen-mqttrpc is built next; run protoc with both plugins over the test
# and example protos; then let the golden test write the test protos that
# protoc cannot parse (and rewrite the golden files of all, which must come out
# the same as protoc's).
.PHONY: generate
generate:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go
	$(PROTOC) $(PROTOC_FLAGS) $(OPTIONS_PROTOS)
	$(GO) build -o $(BIN)/protoc-gen-mqttrpc ./protoc-gen-mqttrpc
	$(PROTOC) $(PROTOC_FLAGS) \
		--plugin=protoc-gen-mqttrpc=$(BIN)/protoc-gen-mqttrpc \
		--mqttrpc_out=. --mqttrpc_opt=module=$(MODULE) \
		$(PROTOC_PROTOS)
	$(GO) test ./protoc-gen-mqttrpc -run '^TestGolden$$' -count=1 -update
	@for f in $(filter examples/%,$(EDITION_PROTOS)); do \
		echo "make generate: $$f is an edition file, which protoc 3.21 cannot compile: generate it with buf (buf.gen.yaml)" >&2; \
		exit 1; \
	done
