package benchv1

// Regenerate from the bench directory with protoc, protoc-gen-go (built by
// `make generate` at the repository root into bin/) and this checkout's
// protoc-gen-mqttrpc.
//go:generate sh -c "cd .. && go build -o /tmp/protoc-gen-mqttrpc ../protoc-gen-mqttrpc && protoc -I . --plugin=protoc-gen-go=../bin/protoc-gen-go --go_out=. --go_opt=module=github.com/mqttrpc/mqttrpc/bench --plugin=protoc-gen-mqttrpc=/tmp/protoc-gen-mqttrpc --mqttrpc_out=. --mqttrpc_opt=module=github.com/mqttrpc/mqttrpc/bench benchv1/bench.proto"
