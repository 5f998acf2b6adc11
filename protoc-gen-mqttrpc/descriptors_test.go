package main

import (
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"

	clockv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/clock/v1"
	commonv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/common/v1"
	editionsv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/editions/v1"
	greeterv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/greeter/v1"
	hvacv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/hvac/v1"
	"github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/legacy"
	namesv1 "github.com/mqttrpc/mqttrpc/internal/gen/mqttrpctest/names/v1"
	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
)

// TestCheckedInDescriptors checks that the checked-in .pb.go files were
// generated from the .proto files as they are now: the descriptor each one
// embeds must equal the descriptor compiled from source.
func TestCheckedInDescriptors(t *testing.T) {
	t.Parallel()
	for _, fd := range []protoreflect.FileDescriptor{
		mqttrpcv1.File_mqttrpc_v1_options_proto,
		commonv1.File_mqttrpctest_common_v1_common_proto,
		greeterv1.File_mqttrpctest_greeter_v1_greeter_proto,
		legacy.File_mqttrpctest_legacy_legacy_proto,
		editionsv1.File_mqttrpctest_editions_v1_editions_proto,
		clockv1.File_mqttrpctest_clock_v1_clock_proto,
		hvacv1.File_mqttrpctest_hvac_v1_hvac_proto,
		namesv1.File_mqttrpctest_names_v1_names_proto,
	} {
		t.Run(fd.Path(), func(t *testing.T) {
			t.Parallel()
			embedded := protodesc.ToFileDescriptorProto(fd)
			compiled := fileToGenerate(t, compileRequest(t, fd.Path()))
			compiled = proto.Clone(compiled).(*descriptorpb.FileDescriptorProto)
			compiled.SourceCodeInfo = nil
			if !proto.Equal(compiled, embedded) {
				t.Errorf("%s changed since its .pb.go was generated (run `make generate`):\ncompiled from source:\n%s\nembedded in .pb.go:\n%s",
					fd.Path(), prototext.Format(compiled), prototext.Format(embedded))
			}
		})
	}
}
