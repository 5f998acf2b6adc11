package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// schemaWanted says what a command needs from the schema when it comes
// by reflection: the name it looks up (SERVICE/METHOD, SERVICE, a
// message; "" for every service) and the server it calls, whose own
// version of the schema is the one to use.
type schemaWanted struct {
	name   string
	target string
}

// loadSchema reads the schema the global flags name (--proto, --protoset)
// or, without them, the one the fleet's servers announce (reflection over
// MQTT, docs/protocol.md "Reflection").
func (a *app) loadSchema(ctx context.Context, want schemaWanted) (*schema, error) {
	g := &a.globals
	if len(g.protoFiles) == 0 && len(g.protosets) == 0 {
		return a.reflectSchema(ctx, want)
	}
	files := new(protoregistry.Files)
	for _, path := range g.protosets {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("--protoset: %v", err)
		}
		var set descriptorpb.FileDescriptorSet
		if err := proto.Unmarshal(data, &set); err != nil {
			return nil, fmt.Errorf("--protoset %s: not a FileDescriptorSet: %v", path, err)
		}
		if err := addSet(files, &set); err != nil {
			return nil, fmt.Errorf("--protoset %s: %v", path, err)
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

// addSet registers the files of a FileDescriptorSet that files does not
// have yet.
func addSet(files *protoregistry.Files, set *descriptorpb.FileDescriptorSet) error {
	fds, err := protodesc.NewFiles(set)
	if err != nil {
		return fmt.Errorf("%v (was it written with --include_imports?)", err)
	}
	var regErr error
	fds.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if _, err := files.FindFileByPath(fd.Path()); err == nil {
			return true // imported by two files
		}
		regErr = files.RegisterFile(fd)
		return regErr == nil
	})
	return regErr
}

// reflectSchema fetches the schemas of the services want needs from the
// broker: the version the target announces, or the one most online
// servers of the service announce; every announced service's when the
// name is not one of theirs (a message name) or empty.
func (a *app) reflectSchema(ctx context.Context, want schemaWanted) (*schema, error) {
	conn, fleet, err := a.sharedFleet(ctx)
	if err != nil {
		return nil, fmt.Errorf("no schema: %v; or give --proto FILE or --protoset FILE", err)
	}
	announced := map[string]bool{}
	for _, si := range fleet.Servers("") {
		for _, svc := range si.Services {
			if svc.Schema != "" {
				announced[svc.Name] = true
			}
		}
	}
	var services []string
	name := strings.TrimPrefix(want.name, ".")
	for svc := range announced {
		if name == svc || strings.HasPrefix(name, svc+"/") || strings.HasPrefix(name, svc+".") {
			services = []string{svc}
			break
		}
	}
	if services == nil {
		target, known := fleet.Server(want.target)
		for svc := range announced {
			// A target's own services only (-t): the others' schemas are
			// not what the command asks about.
			if want.target == "" || !known || serves(target, svc) {
				services = append(services, svc)
			}
		}
		slices.Sort(services)
	}
	if len(services) == 0 {
		return nil, usagef("no schema: no online server announces one by reflection (servers with rpc.WithReflection(false), or older than reflection); give --proto FILE (with -I DIR) or --protoset FILE")
	}
	ctx, cancel := context.WithTimeout(ctx, a.globals.connectTimeout)
	defer cancel()
	files := new(protoregistry.Files)
	for _, svc := range services {
		var set *descriptorpb.FileDescriptorSet
		var err error
		if version := announcedBy(fleet, want.target, svc); version != "" {
			set, err = rpc.FetchSchema(ctx, conn, svc, version)
		} else {
			if si, known := fleet.Server(want.target); known && want.target != "" && serves(si, svc) {
				fmt.Fprintf(a.stderr, "mqttrpc: note: %s announces no schema of %s; using the one most online servers announce (give --proto FILE for %s's own)\n", want.target, svc, want.target)
			}
			set, err = fleet.Schema(ctx, svc)
		}
		if err != nil {
			return nil, fmt.Errorf("no schema for %s by reflection: %v; give --proto FILE or --protoset FILE", svc, asFailure(err))
		}
		if err := addSet(files, set); err != nil {
			return nil, fmt.Errorf("the schema of %s that its servers announce: %v", svc, err)
		}
	}
	return &schema{files: files, types: dynamicpb.NewTypes(files)}, nil
}

// announcedBy is the version of service's schema that server id announces,
// "" if it announces none or is not known.
func announcedBy(fleet *rpc.Fleet, id, service string) string {
	if id == "" {
		return ""
	}
	si, ok := fleet.Server(id)
	if !ok {
		return ""
	}
	for _, svc := range si.Services {
		if svc.Name == service {
			return svc.Schema
		}
	}
	return ""
}

// serves reports whether si serves service.
func serves(si rpc.ServerInfo, service string) bool {
	for _, svc := range si.Services {
		if svc.Name == service {
			return true
		}
	}
	return false
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
