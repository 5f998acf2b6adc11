package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/cmd/protoc-gen-go/internal_gengo"
	"google.golang.org/protobuf/compiler/protogen"
)

var update = flag.Bool("update", false, "rewrite the golden files (the checked-in generated code of internal/gen) with the generator's output")

// goldenCases are the test .proto files under internal/gen. Their checked-in
// _mqttrpc.pb.go files are the golden files: `make generate` writes them with
// protoc, this test with the generator in process, and both must agree.
var goldenCases = []struct {
	proto string
	// noServices: the plugin must write nothing.
	noServices bool
	// protocCannotParse: protoc 3.21 cannot parse the file (editions), so
	// this test also writes and checks protoc-gen-go's .pb.go for it.
	protocCannotParse bool
}{
	{proto: "mqttrpctest/greeter/v1/greeter.proto"},                            // proto3, comments, deprecated method
	{proto: "mqttrpctest/legacy/legacy.proto"},                                 // proto2, deprecated service
	{proto: "mqttrpctest/editions/v1/editions.proto", protocCannotParse: true}, // edition 2023
	{proto: "mqttrpctest/clock/v1/clock.proto"},                                // well-known types, another package's messages
	{proto: "mqttrpctest/hvac/v1/hvac.proto"},                                  // mqttrpc options, idempotency levels
	{proto: "mqttrpctest/stream/v1/stream.proto"},                              // server, client and bidi streaming
	{proto: "mqttrpctest/names/v1/names.proto"},                                // a method named like another's broadcast form
	{proto: "mqttrpctest/common/v1/common.proto", noServices: true},
}

func TestGolden(t *testing.T) {
	t.Parallel()
	for _, tc := range goldenCases {
		t.Run(tc.proto, func(t *testing.T) {
			t.Parallel()
			req := compileRequest(t, tc.proto)
			resp := generate(t, req)
			if resp.Error != nil {
				t.Fatalf("generator failed: %s", resp.GetError())
			}
			checkFeatures(t, resp)
			if tc.noServices {
				if len(resp.File) != 0 {
					t.Fatalf("a file without services produced %v", fileNames(resp))
				}
				return
			}
			wantName := "internal/gen/" + strings.TrimSuffix(tc.proto, ".proto") + "_mqttrpc.pb.go"
			if len(resp.File) != 1 || resp.File[0].GetName() != wantName {
				t.Fatalf("generated %v, want [%s]", fileNames(resp), wantName)
			}
			checkGolden(t, wantName, resp.File[0].GetContent())

			if tc.protocCannotParse {
				name, content := generateGo(t, tc.proto)
				checkGolden(t, name, content)
			}
		})
	}
}

// generateGo runs protoc-gen-go's generator in process on a .proto file,
// for the files that protoc 3.21 cannot compile.
func generateGo(t *testing.T, protoFile string) (name, content string) {
	t.Helper()
	gen, err := protogen.Options{}.New(compileRequest(t, protoFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range gen.Files {
		if f.Generate {
			internal_gengo.GenerateFile(gen, f)
		}
	}
	resp := gen.Response()
	if resp.Error != nil || len(resp.File) != 1 {
		t.Fatalf("protoc-gen-go: error %q, files %v", resp.GetError(), fileNames(resp))
	}
	return resp.File[0].GetName(), resp.File[0].GetContent()
}

// checkGolden compares generated content with the checked-in file at name
// (relative to the repository root), or rewrites the file with -update.
func checkGolden(t *testing.T, name, content string) {
	t.Helper()
	path := filepath.Join(repoRoot, filepath.FromSlash(name))
	if *update {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run `go test ./protoc-gen-mqttrpc -update` or `make generate`)", err)
	}
	if diff := firstDifference(string(want), content); diff != "" {
		t.Errorf("%s is not what the generator writes (run `make generate`, or `go test ./protoc-gen-mqttrpc -update`):\n%s", name, diff)
	}
}

// firstDifference describes the first line where got differs from want, or
// returns "" when they are equal.
func firstDifference(want, got string) string {
	if want == got {
		return ""
	}
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; ; i++ {
		var w, g string
		if i < len(wantLines) {
			w = wantLines[i]
		}
		if i < len(gotLines) {
			g = gotLines[i]
		}
		if w != g || i >= len(wantLines) || i >= len(gotLines) {
			return fmt.Sprintf("line %d:\n  checked in: %q\n  generated:  %q", i+1, w, g)
		}
	}
}
