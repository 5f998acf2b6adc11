package main

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
)

// TestGenerationErrors breaks valid test files in their descriptors and
// checks that generation fails with an error that says where and why, and
// writes no file.
func TestGenerationErrors(t *testing.T) {
	t.Parallel()
	const hvac = "mqttrpctest/hvac/v1/hvac.proto"
	tests := []struct {
		name  string
		proto string
		// breakIt changes the descriptor of the file to generate.
		breakIt func(f *descriptorpb.FileDescriptorProto)
		want    []string
	}{
		{
			name:  "service template without target",
			proto: hvac,
			breakIt: func(f *descriptorpb.FileDescriptorProto) {
				opts := proto.GetExtension(f.Service[0].Options, mqttrpcv1.E_Service).(*mqttrpcv1.ServiceOptions)
				opts.TopicTemplate = "plant/{site}/hvac/{method}"
			},
			want: []string{hvac, "service mqttrpctest.hvac.v1.Hvac", "(mqttrpc.v1.service).topic_template", "plant/{site}/hvac/{method}", "{target}"},
		},
		{
			name:  "method template with wildcard",
			proto: hvac,
			breakIt: func(f *descriptorpb.FileDescriptorProto) {
				opts := proto.GetExtension(f.Service[0].Method[2].Options, mqttrpcv1.E_Method).(*mqttrpcv1.MethodOptions)
				opts.TopicTemplate = "plant/+/{target}/{method}"
			},
			want: []string{hvac, "service mqttrpctest.hvac.v1.Hvac", "method Reboot", "(mqttrpc.v1.method).topic_template", "plant/+/{target}/{method}"},
		},
		{
			name:  "method template starting with $",
			proto: hvac,
			breakIt: func(f *descriptorpb.FileDescriptorProto) {
				f.Service[1].Method[0].Options = &descriptorpb.MethodOptions{}
				proto.SetExtension(f.Service[1].Method[0].Options, mqttrpcv1.E_Method,
					&mqttrpcv1.MethodOptions{TopicTemplate: "$SYS/{target}/{method}"})
			},
			want: []string{hvac, "service mqttrpctest.hvac.v1.Thermometer", "method Read", "starts with $"},
		},
		{
			name:  "QoS from a newer options.proto",
			proto: hvac,
			breakIt: func(f *descriptorpb.FileDescriptorProto) {
				opts := proto.GetExtension(f.Service[0].Method[0].Options, mqttrpcv1.E_Method).(*mqttrpcv1.MethodOptions)
				opts.Qos = mqttrpcv1.Qos(7)
			},
			want: []string{hvac, "method GetTemperature", "(mqttrpc.v1.method).qos", "unknown value 7"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := compileRequest(t, tc.proto)
			tc.breakIt(fileToGenerate(t, req))
			resp := generate(t, req)
			if resp.Error == nil {
				t.Fatalf("generation succeeded, want an error containing %q", tc.want)
			}
			for _, want := range tc.want {
				if !strings.Contains(resp.GetError(), want) {
					t.Errorf("error %q does not contain %q", resp.GetError(), want)
				}
			}
			if len(resp.File) != 0 {
				t.Errorf("a failed generation wrote %v", fileNames(resp))
			}
		})
	}
}

// fileToGenerate returns the descriptor of the request's (only) file to
// generate.
func fileToGenerate(t *testing.T, req *pluginpb.CodeGeneratorRequest) *descriptorpb.FileDescriptorProto {
	t.Helper()
	for _, f := range req.ProtoFile {
		if f.GetName() == req.FileToGenerate[0] {
			return f
		}
	}
	t.Fatalf("%s is not in the request", req.FileToGenerate[0])
	return nil
}
