package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProtoc runs protoc with the built plugin and protoc-gen-go, as a user
// would, on a service that uses a well-known type, a message of another proto
// package and the mqttrpc options, then builds and vets the output in a
// module of its own that requires this repository. It skips when protoc is
// not installed, unless MQTTRPC_REQUIRE_PROTOC=1 (CI sets it).
func TestProtoc(t *testing.T) {
	t.Parallel()
	protoc := lookPathProtoc(t)
	plugin := pluginBinary(t)
	repo, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"proto/other/v1/other.proto": `syntax = "proto3";
package other.v1;
option go_package = "example.com/protoctest/gen/other/v1;otherv1";
message Point { double x = 1; double y = 2; }
`,
		"proto/app/v1/app.proto": `syntax = "proto3";
package app.v1;
import "google/protobuf/timestamp.proto";
import "mqttrpc/v1/options.proto";
import "other/v1/other.proto";
option go_package = "example.com/protoctest/gen/app/v1;appv1";

// Tracker follows things.
service Tracker {
  option (mqttrpc.v1.service).topic_template = "fleet/{region}/{target}/{method}";
  // Where returns where a thing was at a time.
  rpc Where(WhereRequest) returns (other.v1.Point) {
    option idempotency_level = NO_SIDE_EFFECTS;
    option (mqttrpc.v1.method).qos = QOS_AT_MOST_ONCE;
  }
  // LastSeen returns when the thing was last seen.
  rpc LastSeen(other.v1.Point) returns (google.protobuf.Timestamp);
}
message WhereRequest { google.protobuf.Timestamp at = 1; }
`,
		"go.mod": "module example.com/protoctest\n\ngo 1.26\n\n" +
			"require github.com/mqttrpc/mqttrpc v0.0.0\n\n" +
			"replace github.com/mqttrpc/mqttrpc => " + repo + "\n",
		// The generated code must be usable as documented.
		"use/use.go": `package use

import (
	"context"

	"github.com/mqttrpc/mqttrpc/rpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	appv1 "example.com/protoctest/gen/app/v1"
	otherv1 "example.com/protoctest/gen/other/v1"
)

type tracker struct{ appv1.UnimplementedTrackerServer }

func (tracker) Where(context.Context, *appv1.WhereRequest) (*otherv1.Point, error) {
	return &otherv1.Point{}, nil
}

var _ appv1.TrackerServer = tracker{}

// Use shows the calls an application makes.
func Use(ctx context.Context, c *rpc.Client, s *rpc.Server) (*timestamppb.Timestamp, error) {
	appv1.RegisterTrackerServer(s, tracker{})
	client := appv1.NewTrackerClient(c)
	if _, err := client.Where(ctx, &appv1.WhereRequest{At: timestamppb.Now()}); err != nil {
		return nil, err
	}
	_ = appv1.TrackerServiceDesc.Methods[0].TopicTemplate
	return client.LastSeen(ctx, &otherv1.Point{})
}
`,
	})
	// The repository's go.sum covers everything the module needs, so that
	// the build works offline from the module cache.
	sum, err := os.ReadFile(filepath.Join(repo, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	writeFiles(t, dir, map[string]string{"go.sum": string(sum)})

	runIn(t, dir, nil, protoc,
		"-I", filepath.Join(dir, "proto"), "-I", filepath.Join(repo, "proto"),
		"--plugin=protoc-gen-go="+filepath.Join(filepath.Dir(plugin), "protoc-gen-go"+exe()),
		"--plugin=protoc-gen-mqttrpc="+plugin,
		"--go_out="+dir, "--go_opt=module=example.com/protoctest",
		"--mqttrpc_out="+dir, "--mqttrpc_opt=module=example.com/protoctest",
		"app/v1/app.proto", "other/v1/other.proto")

	for _, name := range []string{"gen/app/v1/app.pb.go", "gen/app/v1/app_mqttrpc.pb.go", "gen/other/v1/other.pb.go"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("protoc did not write %s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "gen/other/v1/other_mqttrpc.pb.go")); err == nil {
		t.Error("the plugin wrote a file for other.proto, which has no services")
	}
	generated, err := os.ReadFile(filepath.Join(dir, "gen/app/v1/app_mqttrpc.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"fleet/{region}/{target}/{method}"`, "rpc.QoS0", "rpc.NoSideEffects",
		"*timestamppb.Timestamp", "*v1.Point", "// Where returns where a thing was at a time.",
	} {
		if !strings.Contains(string(generated), want) {
			t.Errorf("app_mqttrpc.pb.go lacks %s", want)
		}
	}

	// Offline: only the module cache, no proxy, no checksum database.
	env := []string{"GOFLAGS=-mod=mod", "GOPROXY=off", "GOWORK=off", "GONOSUMDB=*", "GOSUMDB=off"}
	runIn(t, dir, env, "go", "build", "./...")
	runIn(t, dir, env, "go", "vet", "./...")
}

// TestProtocMatchesGolden runs protoc with the built plugin over the test
// protos and checks that it writes the checked-in golden files, which the
// golden test writes from descriptors compiled by protocompile: both
// compilers must give the generator the same input.
func TestProtocMatchesGolden(t *testing.T) {
	t.Parallel()
	protoc := lookPathProtoc(t)
	plugin := pluginBinary(t)
	dir := t.TempDir()
	args := []string{
		"-I", testProtoRoot, "-I", optionsRoot,
		"--plugin=protoc-gen-mqttrpc=" + plugin,
		"--mqttrpc_out=" + dir, "--mqttrpc_opt=" + moduleParameter,
	}
	for _, tc := range goldenCases {
		if !tc.protocCannotParse {
			args = append(args, tc.proto)
		}
	}
	runIn(t, ".", nil, protoc, args...)
	for _, tc := range goldenCases {
		if tc.protocCannotParse || tc.noServices {
			continue
		}
		name := "internal/gen/" + strings.TrimSuffix(tc.proto, ".proto") + "_mqttrpc.pb.go"
		got, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(name)))
		if err != nil {
			t.Errorf("protoc did not write %s: %v", name, err)
			continue
		}
		checkGolden(t, name, string(got))
	}
}

// lookPathProtoc returns the path of protoc, or skips the test when it is
// not installed, unless MQTTRPC_REQUIRE_PROTOC=1.
func lookPathProtoc(t *testing.T) string {
	t.Helper()
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		if os.Getenv("MQTTRPC_REQUIRE_PROTOC") == "1" {
			t.Fatal("protoc is not installed and MQTTRPC_REQUIRE_PROTOC=1 (apt-get install -y protobuf-compiler libprotobuf-dev)")
		}
		t.Skip("protoc is not installed; set MQTTRPC_REQUIRE_PROTOC=1 to fail instead")
	}
	return protoc
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		path := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func runIn(t *testing.T, dir string, env []string, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}
