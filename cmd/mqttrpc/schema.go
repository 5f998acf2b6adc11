package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/bufbuild/protocompile"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/mqttrpc/mqttrpc/internal/protoopts"
	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// schema is what the command knows of the services: their descriptors, and
// the message types for JSON.
type schema struct {
	files *protoregistry.Files
	types *dynamicpb.Types
}

// loadSchema reads the schema the global flags name.
func (a *app) loadSchema(ctx context.Context) (*schema, error) {
	g := &a.globals
	if len(g.protoFiles) == 0 && len(g.protosets) == 0 {
		return nil, usagef("no schema: give --proto FILE (with -I DIR for its imports) or --protoset FILE")
	}
	files := new(protoregistry.Files)
	add := func(fd protoreflect.FileDescriptor) error {
		if _, err := files.FindFileByPath(fd.Path()); err == nil {
			return nil // imported by two files
		}
		return files.RegisterFile(fd)
	}
	for _, path := range g.protosets {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--protoset: %v", err)
		}
		var set descriptorpb.FileDescriptorSet
		if err := proto.Unmarshal(data, &set); err != nil {
			return nil, fmt.Errorf("--protoset %s: not a FileDescriptorSet: %v", path, err)
		}
		fds, err := protodesc.NewFiles(&set)
		if err != nil {
			return nil, fmt.Errorf("--protoset %s: %v (was it written with --include_imports?)", path, err)
		}
		var regErr error
		fds.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
			regErr = add(fd)
			return regErr == nil
		})
		if regErr != nil {
			return nil, fmt.Errorf("--protoset %s: %v", path, regErr)
		}
	}
	if len(g.protoFiles) > 0 {
		compiled, err := compileProtos(ctx, g.protoFiles, g.importPaths)
		if err != nil {
			return nil, err
		}
		for _, fd := range compiled {
			if err := registerWithImports(files, fd); err != nil {
				return nil, fmt.Errorf("--proto: %v", err)
			}
		}
	}
	return &schema{files: files, types: dynamicpb.NewTypes(files)}, nil
}

// registerWithImports adds fd and, first, the files it imports.
func registerWithImports(files *protoregistry.Files, fd protoreflect.FileDescriptor) error {
	if _, err := files.FindFileByPath(fd.Path()); err == nil {
		return nil
	}
	imports := fd.Imports()
	for i := range imports.Len() {
		if err := registerWithImports(files, imports.Get(i).FileDescriptor); err != nil {
			return err
		}
	}
	return files.RegisterFile(fd)
}

// compileProtos compiles .proto files. Their imports are looked up in the
// import paths (the directory of each file if none is given), then among
// the well-known types and mqttrpc's own options, which need no -I.
func compileProtos(ctx context.Context, protoFiles, importPaths []string) ([]protoreflect.FileDescriptor, error) {
	paths := append([]string(nil), importPaths...)
	names := make([]string, len(protoFiles))
	for i, f := range protoFiles {
		names[i] = f
		if len(importPaths) == 0 {
			dir := filepath.Dir(f)
			paths = append(paths, dir)
			names[i] = filepath.Base(f)
		} else {
			// A file named by its path: make it relative to the import path
			// that holds it, as protoc does.
			for _, dir := range importPaths {
				if rel, err := filepath.Rel(dir, f); err == nil && !strings.HasPrefix(rel, "..") {
					names[i] = filepath.ToSlash(rel)
					break
				}
			}
		}
	}
	resolver := protocompile.CompositeResolver{
		&protocompile.SourceResolver{ImportPaths: paths},
		protocompile.ResolverFunc(func(path string) (protocompile.SearchResult, error) {
			if path == mqttrpcv1.File_mqttrpc_v1_options_proto.Path() {
				return protocompile.SearchResult{Desc: mqttrpcv1.File_mqttrpc_v1_options_proto}, nil
			}
			return protocompile.SearchResult{}, os.ErrNotExist
		}),
	}
	compiler := protocompile.Compiler{Resolver: protocompile.WithStandardImports(resolver), SourceInfoMode: protocompile.SourceInfoStandard}
	compiled, err := compiler.Compile(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("--proto: %v", err)
	}
	out := make([]protoreflect.FileDescriptor, len(compiled))
	for i, f := range compiled {
		out[i] = f
	}
	return out, nil
}

// method finds SERVICE/METHOD (also SERVICE.METHOD, as grpcurl accepts).
func (s *schema) method(name string) (protoreflect.MethodDescriptor, error) {
	i := strings.LastIndexAny(name, "/.")
	if i <= 0 || i == len(name)-1 {
		return nil, usagef("%q is not SERVICE/METHOD (e.g. example.thermostat.v1.Thermostat/SetTarget)", name)
	}
	svc, err := s.service(name[:i])
	if err != nil {
		return nil, err
	}
	m := svc.Methods().ByName(protoreflect.Name(name[i+1:]))
	if m == nil {
		return nil, usagef("service %s has no method %s; its methods: %s", svc.FullName(), name[i+1:], methodNames(svc))
	}
	return m, nil
}

// service finds a service by its full name.
func (s *schema) service(name string) (protoreflect.ServiceDescriptor, error) {
	d, err := s.files.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, usagef("no service %s in the schema; it has: %s", name, strings.Join(s.serviceNames(), ", "))
	}
	svc, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, usagef("%s is not a service", name)
	}
	return svc, nil
}

func (s *schema) serviceNames() []string {
	var names []string
	s.files.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		for i := range fd.Services().Len() {
			names = append(names, string(fd.Services().Get(i).FullName()))
		}
		return true
	})
	if len(names) == 0 {
		return []string{"no services"}
	}
	return names
}

func methodNames(svc protoreflect.ServiceDescriptor) string {
	var names []string
	for i := range svc.Methods().Len() {
		names = append(names, string(svc.Methods().Get(i).Name()))
	}
	return strings.Join(names, ", ")
}

// serviceDesc describes svc for the runtime, with the topic templates and
// QoS of mqttrpc's proto options (method over service over the defaults),
// as generated code does.
func serviceDesc(svc protoreflect.ServiceDescriptor) (*rpc.ServiceDesc, error) {
	desc := &rpc.ServiceDesc{ServiceName: string(svc.FullName()), Metadata: svc.ParentFile().Path()}
	var serviceOpts mqttrpcv1.ServiceOptions
	if err := extension(svc.Options(), mqttrpcv1.E_Service, &serviceOpts); err != nil {
		return nil, fmt.Errorf("service %s: %v", svc.FullName(), err)
	}
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		var methodOpts mqttrpcv1.MethodOptions
		if err := extension(m.Options(), mqttrpcv1.E_Method, &methodOpts); err != nil {
			return nil, fmt.Errorf("method %s: %v", m.FullName(), err)
		}
		template := serviceOpts.GetTopicTemplate()
		if t := methodOpts.GetTopicTemplate(); t != "" {
			template = t
		}
		q := serviceOpts.GetQos()
		if mq := methodOpts.GetQos(); mq != mqttrpcv1.Qos_QOS_UNSPECIFIED {
			q = mq
		}
		qos, err := protoopts.QoS(q)
		if err != nil {
			return nil, fmt.Errorf("method %s: (mqttrpc.v1.method).qos: %v", m.FullName(), err)
		}
		input := m.Input()
		if m.IsStreamingClient() || m.IsStreamingServer() {
			desc.Streams = append(desc.Streams, rpc.StreamDesc{
				StreamName:    string(m.Name()),
				TopicTemplate: template,
				QoS:           qos,
				ServerStreams: m.IsStreamingServer(),
				ClientStreams: m.IsStreamingClient(),
			})
			continue
		}
		desc.Methods = append(desc.Methods, rpc.MethodDesc{
			MethodName:    string(m.Name()),
			TopicTemplate: template,
			QoS:           qos,
			NewRequest:    func() any { return dynamicpb.NewMessage(input) },
		})
	}
	return desc, nil
}

// extension reads an mqttrpc option from opts into out. The options of a
// compiled or loaded file are re-read through the registry of this
// program, which knows mqttrpc's extensions.
func extension(opts proto.Message, ext protoreflect.ExtensionType, out proto.Message) error {
	if opts == nil {
		return nil
	}
	data, err := proto.Marshal(opts)
	if err != nil {
		return err
	}
	var parsed proto.Message
	switch opts.(type) {
	case *descriptorpb.ServiceOptions:
		parsed = new(descriptorpb.ServiceOptions)
	case *descriptorpb.MethodOptions:
		parsed = new(descriptorpb.MethodOptions)
	default:
		parsed = opts.ProtoReflect().Type().New().Interface()
	}
	if err := (proto.UnmarshalOptions{Resolver: protoregistry.GlobalTypes}).Unmarshal(data, parsed); err != nil {
		return err
	}
	if !proto.HasExtension(parsed, ext) {
		return nil
	}
	proto.Merge(out, proto.GetExtension(parsed, ext).(proto.Message))
	return nil
}
