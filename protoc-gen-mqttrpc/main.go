// protoc-gen-mqttrpc is a plugin for the protocol buffer compiler that
// generates Go code for calling and serving protobuf services over MQTT 5
// with the github.com/mqttrpc/mqttrpc/rpc runtime.
//
// Install it on your PATH and run it next to protoc-gen-go, which generates
// the message types:
//
//	go install github.com/mqttrpc/mqttrpc/protoc-gen-mqttrpc@latest
//	protoc --go_out=. --go_opt=paths=source_relative \
//	  --mqttrpc_out=. --mqttrpc_opt=paths=source_relative \
//	  thermostat/v1/thermostat.proto
//
// For each .proto file that declares services it writes <name>_mqttrpc.pb.go
// into the Go package of the messages: per service a <Svc>Name constant,
// method name constants, a <Svc>ServiceDesc, a <Svc>Client with
// New<Svc>Client, a <Svc>Server interface, an Unimplemented<Svc>Server to
// embed and Register<Svc>Server. The paths and module options work as for
// protoc-gen-go.
//
// Topic templates and QoS come from the options in mqttrpc/v1/options.proto
// (directory proto/ of the repository); the generator validates templates.
// Streaming methods get grpc-go's generic stream types (rpc.ServerStreamingClient
// and the like).
package main

import (
	"flag"
	"fmt"
	"os"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/pluginpb"

	"github.com/mqttrpc/mqttrpc/protoc-gen-mqttrpc/internal/generator"
	"github.com/mqttrpc/mqttrpc/rpc"
)

func main() {
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "Usage: protoc --mqttrpc_out=DIR [--mqttrpc_opt=paths=source_relative] FILE.proto\n\n"+
			"protoc-gen-mqttrpc is run by protoc (or buf); it reads a CodeGeneratorRequest on\n"+
			"standard input. Flags when run directly:\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *showVersion {
		fmt.Printf("protoc-gen-mqttrpc %s\n", rpc.Version)
		return
	}
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	// The plugin has no parameters of its own yet; protogen handles paths=,
	// module= and M mappings, and the flag set rejects anything else.
	var params flag.FlagSet
	protogen.Options{ParamFunc: params.Set}.Run(run)
}

// run generates the files of one protoc invocation.
func run(gen *protogen.Plugin) error {
	gen.SupportedFeatures = uint64(pluginpb.CodeGeneratorResponse_FEATURE_PROTO3_OPTIONAL |
		pluginpb.CodeGeneratorResponse_FEATURE_SUPPORTS_EDITIONS)
	// The generator reads services and message names only, which every
	// edition that protobuf-go parses describes the same way.
	gen.SupportedEditionsMinimum = descriptorpb.Edition_EDITION_PROTO2
	gen.SupportedEditionsMaximum = descriptorpb.Edition_EDITION_2024
	for _, file := range gen.Files {
		if !file.Generate || len(file.Services) == 0 {
			continue
		}
		if err := generator.GenerateFile(gen, file); err != nil {
			return err
		}
	}
	return nil
}
