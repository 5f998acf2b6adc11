package main

import (
	"bytes"
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/bufbuild/protocompile"
	"github.com/bufbuild/protocompile/linker"
	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/mqttrpc/mqttrpc/rpc"
)

// The directories of the test .proto files (import root internal/gen) and of
// the options users import (import root proto), relative to this package.
const (
	testProtoRoot   = "../internal/gen"
	optionsRoot     = "../proto"
	repoRoot        = ".."
	modulePath      = "github.com/mqttrpc/mqttrpc"
	moduleParameter = "module=" + modulePath
)

func TestVersion(t *testing.T) {
	t.Parallel()
	out, err := exec.Command(pluginBinary(t), "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("protoc-gen-mqttrpc --version: %v\n%s", err, out)
	}
	if got, want := string(out), "protoc-gen-mqttrpc "+rpc.Version+"\n"; got != want {
		t.Errorf("--version printed %q, want %q", got, want)
	}
}

// TestPluginBinary feeds a CodeGeneratorRequest to the built plugin on
// standard input, as protoc does, and checks the response it writes.
func TestPluginBinary(t *testing.T) {
	t.Parallel()
	req := compileRequest(t, "mqttrpctest/greeter/v1/greeter.proto")
	in, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(pluginBinary(t))
	cmd.Stdin = bytes.NewReader(in)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("plugin failed: %v\n%s", err, stderr.String())
	}
	resp := new(pluginpb.CodeGeneratorResponse)
	if err := proto.Unmarshal(stdout.Bytes(), resp); err != nil {
		t.Fatal(err)
	}
	if resp.Error != nil {
		t.Fatalf("plugin reported: %s", resp.GetError())
	}
	checkFeatures(t, resp)
	if len(resp.File) != 1 || resp.File[0].GetName() != "internal/gen/mqttrpctest/greeter/v1/greeter_mqttrpc.pb.go" {
		t.Fatalf("plugin wrote %v, want the greeter file", fileNames(resp))
	}
	want := generate(t, req).File[0].GetContent()
	if resp.File[0].GetContent() != want {
		t.Error("the binary's output differs from the in-process generator's")
	}
}

func TestUnknownParameter(t *testing.T) {
	t.Parallel()
	req := compileRequest(t, "mqttrpctest/greeter/v1/greeter.proto")
	req.Parameter = proto.String(moduleParameter + ",no_such_flag=1")
	resp := generate(t, req)
	if !strings.Contains(resp.GetError(), "no_such_flag") {
		t.Errorf("error = %q, want one naming the unknown parameter", resp.GetError())
	}
}

func checkFeatures(t *testing.T, resp *pluginpb.CodeGeneratorResponse) {
	t.Helper()
	wantFeatures := uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL |
		pluginpb.CodeGeneratorResponse_FEATURE_SUPPORTS_EDITIONS)
	if resp.GetSupportedFeatures() != wantFeatures {
		t.Errorf("supported features = %b, want %b", resp.GetSupportedFeatures(), wantFeatures)
	}
	if got := descriptorpb.Edition(resp.GetMinimumEdition()); got != descriptorpb.Edition_EDITION_PROTO2 {
		t.Errorf("minimum edition = %v, want EDITION_PROTO2", got)
	}
	if got := descriptorpb.Edition(resp.GetMaximumEdition()); got < descriptorpb.Edition_EDITION_2023 {
		t.Errorf("maximum edition = %v, want EDITION_2023 or later", got)
	}
}

// compileRequest compiles the named test .proto files from source, with
// comments, and returns the request protoc would send for them: the files
// to generate and everything they import, in dependency order. It needs
// neither protoc nor buf.
func compileRequest(t testing.TB, files ...string) *pluginpb.CodeGeneratorRequest {
	t.Helper()
	compiler := protocompile.Compiler{
		Resolver: protocompile.WithStandardImports(&protocompile.SourceResolver{
			ImportPaths: []string{testProtoRoot, optionsRoot},
		}),
		SourceInfoMode: protocompile.SourceInfoStandard,
	}
	compiled, err := compiler.Compile(context.Background(), files...)
	if err != nil {
		t.Fatalf("compile %v: %v", files, err)
	}
	req := &pluginpb.CodeGeneratorRequest{
		FileToGenerate: files,
		Parameter:      proto.String(moduleParameter),
	}
	seen := map[string]bool{}
	var add func(f protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if seen[f.Path()] {
			return
		}
		seen[f.Path()] = true
		imports := f.Imports()
		for i := range imports.Len() {
			add(imports.Get(i).FileDescriptor)
		}
		var fdp *descriptorpb.FileDescriptorProto
		if res, ok := f.(linker.Result); ok {
			fdp = res.FileDescriptorProto()
		} else {
			fdp = protodesc.ToFileDescriptorProto(f)
		}
		req.ProtoFile = append(req.ProtoFile, fdp)
	}
	for _, f := range compiled {
		add(f)
	}
	// Marshal and unmarshal as protoc and the plugin do, so that custom
	// options arrive as the Go extension types the generator reads.
	return roundTrip(t, req)
}

func roundTrip(t testing.TB, req *pluginpb.CodeGeneratorRequest) *pluginpb.CodeGeneratorRequest {
	t.Helper()
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	out := new(pluginpb.CodeGeneratorRequest)
	if err := proto.Unmarshal(b, out); err != nil {
		t.Fatal(err)
	}
	return out
}

// generate runs the plugin in process, as main does, on a request.
func generate(t testing.TB, req *pluginpb.CodeGeneratorRequest) *pluginpb.CodeGeneratorResponse {
	t.Helper()
	var params flag.FlagSet
	gen, err := protogen.Options{ParamFunc: params.Set}.New(roundTrip(t, req))
	if err != nil {
		// protogen rejects the parameters before the plugin runs.
		return &pluginpb.CodeGeneratorResponse{Error: proto.String(err.Error())}
	}
	if err := run(gen); err != nil {
		gen.Error(err)
	}
	return gen.Response()
}

func fileNames(resp *pluginpb.CodeGeneratorResponse) []string {
	var names []string
	for _, f := range resp.File {
		names = append(names, f.GetName())
	}
	return names
}

var (
	buildOnce  sync.Once
	binDir     string
	buildError error
)

// pluginBinary builds protoc-gen-mqttrpc and protoc-gen-go once per test
// binary and returns the path of protoc-gen-mqttrpc; protoc-gen-go is beside it.
func pluginBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildError = os.MkdirTemp("", "protoc-gen-mqttrpc-test-")
		if buildError != nil {
			return
		}
		for _, pkg := range []string{".", "google.golang.org/protobuf/cmd/protoc-gen-go"} {
			name := "protoc-gen-mqttrpc"
			if pkg != "." {
				name = "protoc-gen-go"
			}
			cmd := exec.Command("go", "build", "-o", filepath.Join(binDir, name+exe()), pkg)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildError = &buildFailure{pkg: pkg, err: err, out: out}
				return
			}
		}
	})
	if buildError != nil {
		t.Fatal(buildError)
	}
	return filepath.Join(binDir, "protoc-gen-mqttrpc"+exe())
}

type buildFailure struct {
	pkg string
	err error
	out []byte
}

func (b *buildFailure) Error() string {
	return "go build " + b.pkg + ": " + b.err.Error() + "\n" + string(b.out)
}

func exe() string {
	if runtime.GOOS == "windows" {
		return ".exe"
	}
	return ""
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

func TestSourceRelativePaths(t *testing.T) {
	t.Parallel()
	req := compileRequest(t, "mqttrpctest/greeter/v1/greeter.proto")
	req.Parameter = proto.String("paths=source_relative")
	resp := generate(t, req)
	if resp.Error != nil {
		t.Fatal(resp.GetError())
	}
	if names := fileNames(resp); len(names) != 1 || names[0] != "mqttrpctest/greeter/v1/greeter_mqttrpc.pb.go" {
		t.Errorf("paths=source_relative wrote %v, want [mqttrpctest/greeter/v1/greeter_mqttrpc.pb.go]", names)
	}
}
