package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// describe runs the describe command: a service, a method or a message of
// the schema in .proto syntax, as grpcurl describe prints it; every service
// without an argument.
func (a *app) describe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("mqttrpc describe", flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	var want schemaWanted
	fs.StringVar(&want.target, "t", "", "by reflection: the schema that the server with this `ID` announces (default: the one most online servers announce)")
	if err := fs.Parse(args); err != nil {
		globalFlagHint(a.stderr, err)
		return flagError{help: errors.Is(err, flag.ErrHelp)}
	}
	args = fs.Args()
	if len(args) > 1 {
		return usagef("describe takes at most one SERVICE[/METHOD] or message name")
	}
	if len(args) == 1 {
		want.name = args[0]
	}
	s, err := a.loadSchema(ctx, want)
	if a.conn != nil {
		defer closeConn(a.conn)
	}
	if err != nil {
		return err
	}
	if len(args) == 0 {
		for _, name := range s.serviceNames() {
			svc, err := s.service(name)
			if err != nil {
				return nil // "no services"
			}
			a.describeService(svc)
		}
		return nil
	}
	name := strings.TrimPrefix(args[0], ".")
	if d, err := s.files.FindDescriptorByName(protoreflect.FullName(name)); err == nil {
		return a.describeDescriptor(d)
	}
	m, err := s.method(name)
	if err != nil {
		return usagef("%s is neither a service, a method nor a message of the schema; its services: %s", name, strings.Join(s.serviceNames(), ", "))
	}
	return a.describeDescriptor(m)
}

func (a *app) describeDescriptor(d protoreflect.Descriptor) error {
	switch d := d.(type) {
	case protoreflect.ServiceDescriptor:
		a.describeService(d)
	case protoreflect.MethodDescriptor:
		fmt.Fprintf(a.stdout, "%s is a method:\n", d.FullName())
		a.comments(d, "")
		fmt.Fprintln(a.stdout, methodLine(d))
	case protoreflect.MessageDescriptor:
		fmt.Fprintf(a.stdout, "%s is a message:\n", d.FullName())
		a.message(d, "")
	case protoreflect.EnumDescriptor:
		fmt.Fprintf(a.stdout, "%s is an enum:\n", d.FullName())
		a.enum(d, "")
	default:
		return usagef("%s is not a service, method, message or enum", d.FullName())
	}
	return nil
}

func (a *app) describeService(svc protoreflect.ServiceDescriptor) {
	fmt.Fprintf(a.stdout, "%s is a service:\n", svc.FullName())
	a.comments(svc, "")
	fmt.Fprintf(a.stdout, "service %s {\n", svc.Name())
	for i := range svc.Methods().Len() {
		m := svc.Methods().Get(i)
		a.comments(m, "  ")
		fmt.Fprintf(a.stdout, "  %s\n", methodLine(m))
	}
	fmt.Fprintln(a.stdout, "}")
}

func methodLine(m protoreflect.MethodDescriptor) string {
	stream := func(on bool) string {
		if on {
			return "stream "
		}
		return ""
	}
	return fmt.Sprintf("rpc %s ( %s.%s ) returns ( %s.%s );", m.Name(), stream(m.IsStreamingClient()), m.Input().FullName(), stream(m.IsStreamingServer()), m.Output().FullName())
}

func (a *app) message(md protoreflect.MessageDescriptor, indent string) {
	a.comments(md, indent)
	fmt.Fprintf(a.stdout, "%smessage %s {\n", indent, md.Name())
	inner := indent + "  "
	fields := md.Fields()
	seen := map[protoreflect.FullName]bool{}
	for i := range fields.Len() {
		f := fields.Get(i)
		if o := f.ContainingOneof(); o != nil && !o.IsSynthetic() {
			if seen[o.FullName()] {
				continue
			}
			seen[o.FullName()] = true
			fmt.Fprintf(a.stdout, "%soneof %s {\n", inner, o.Name())
			for j := range o.Fields().Len() {
				a.field(o.Fields().Get(j), inner+"  ")
			}
			fmt.Fprintf(a.stdout, "%s}\n", inner)
			continue
		}
		a.field(f, inner)
	}
	for i := range md.Messages().Len() {
		if nested := md.Messages().Get(i); !nested.IsMapEntry() {
			a.message(nested, inner)
		}
	}
	for i := range md.Enums().Len() {
		a.enum(md.Enums().Get(i), inner)
	}
	fmt.Fprintf(a.stdout, "%s}\n", indent)
}

func (a *app) field(f protoreflect.FieldDescriptor, indent string) {
	a.comments(f, indent)
	label := ""
	switch {
	case f.IsMap():
	case f.IsList():
		label = "repeated "
	case f.HasOptionalKeyword():
		label = "optional "
	}
	fmt.Fprintf(a.stdout, "%s%s%s %s = %d;\n", indent, label, fieldType(f), f.Name(), f.Number())
}

func fieldType(f protoreflect.FieldDescriptor) string {
	if f.IsMap() {
		return fmt.Sprintf("map<%s, %s>", fieldType(f.MapKey()), fieldType(f.MapValue()))
	}
	switch f.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return "." + string(f.Message().FullName())
	case protoreflect.EnumKind:
		return "." + string(f.Enum().FullName())
	}
	return f.Kind().String()
}

func (a *app) enum(e protoreflect.EnumDescriptor, indent string) {
	a.comments(e, indent)
	fmt.Fprintf(a.stdout, "%senum %s {\n", indent, e.Name())
	for i := range e.Values().Len() {
		v := e.Values().Get(i)
		a.comments(v, indent+"  ")
		fmt.Fprintf(a.stdout, "%s  %s = %d;\n", indent, v.Name(), v.Number())
	}
	fmt.Fprintf(a.stdout, "%s}\n", indent)
}

// comments prints d's leading comments from the source, when the schema
// has them (--proto keeps them; a protoset has them with
// --include_source_info).
func (a *app) comments(d protoreflect.Descriptor, indent string) {
	loc := d.ParentFile().SourceLocations().ByDescriptor(d)
	text := strings.TrimRight(loc.LeadingComments, "\n")
	if text == "" {
		return
	}
	for _, line := range strings.Split(text, "\n") {
		fmt.Fprintf(a.stdout, "%s//%s\n", indent, line)
	}
}
