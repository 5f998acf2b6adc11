package generator

import (
	"fmt"

	"google.golang.org/protobuf/compiler/protogen"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/descriptorpb"

	"github.com/mqttrpc/mqttrpc/internal/protoopts"
	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// methodSpec is a method with its options resolved: method option over
// service option over the defaults.
type methodSpec struct {
	method *protogen.Method
	// clientStreams, serverStreams: which sides of a streaming method send
	// many messages; both false for a unary method.
	clientStreams, serverStreams bool
	// topicTemplate is "" when neither the method nor the service sets one,
	// so that generated code names rpc.DefaultTopicTemplate.
	topicTemplate string
	qos           rpc.QoS
	idempotency   rpc.Idempotency
	// broadcastName is the Go name of a unary method's broadcast form on
	// the client (BroadcastM), "" for a streaming method.
	broadcastName string
}

// resolveService checks that every method of service can be generated and
// resolves its options. Errors name the .proto file, the service and the
// method, since protoc shows them without context.
func resolveService(file *protogen.File, service *protogen.Service) ([]methodSpec, error) {
	where := fmt.Sprintf("%s: service %s", file.Desc.Path(), service.Desc.FullName())
	serviceOpts, _ := proto.GetExtension(service.Desc.Options(), mqttrpcv1.E_Service).(*mqttrpcv1.ServiceOptions)
	if t := serviceOpts.GetTopicTemplate(); t != "" {
		if _, err := rpc.ParseTopicTemplate(t); err != nil {
			return nil, fmt.Errorf("%s: invalid (mqttrpc.v1.service).topic_template: %v", where, err)
		}
	}
	serviceQoS, err := protoopts.QoS(serviceOpts.GetQos())
	if err != nil {
		return nil, fmt.Errorf("%s: invalid (mqttrpc.v1.service).qos: %v", where, err)
	}

	specs := make([]methodSpec, 0, len(service.Methods))
	for _, method := range service.Methods {
		where := fmt.Sprintf("%s, method %s", where, method.Desc.Name())
		methodOpts, _ := proto.GetExtension(method.Desc.Options(), mqttrpcv1.E_Method).(*mqttrpcv1.MethodOptions)
		spec := methodSpec{
			method:        method,
			clientStreams: method.Desc.IsStreamingClient(),
			serverStreams: method.Desc.IsStreamingServer(),
			topicTemplate: serviceOpts.GetTopicTemplate(),
			qos:           serviceQoS,
			idempotency:   idempotencyOf(method),
		}
		if t := methodOpts.GetTopicTemplate(); t != "" {
			if _, err := rpc.ParseTopicTemplate(t); err != nil {
				return nil, fmt.Errorf("%s: invalid (mqttrpc.v1.method).topic_template: %v", where, err)
			}
			spec.topicTemplate = t
		}
		if q := methodOpts.GetQos(); q != mqttrpcv1.Qos_QOS_UNSPECIFIED {
			if spec.qos, err = protoopts.QoS(q); err != nil {
				return nil, fmt.Errorf("%s: invalid (mqttrpc.v1.method).qos: %v", where, err)
			}
		}
		specs = append(specs, spec)
	}
	nameBroadcasts(specs)
	return specs, nil
}

// nameBroadcasts names the broadcast form of each unary method
// Broadcast<Method>, with underscores appended while the name is taken by
// another method of the service or an earlier broadcast (a method Status
// next to one named BroadcastStatus), as protoc-gen-go resolves its
// conflicts.
func nameBroadcasts(specs []methodSpec) {
	taken := map[string]bool{}
	for _, spec := range specs {
		taken[spec.method.GoName] = true
	}
	for i := range specs {
		if specs[i].clientStreams || specs[i].serverStreams {
			continue
		}
		name := "Broadcast" + specs[i].method.GoName
		for taken[name] {
			name += "_"
		}
		taken[name] = true
		specs[i].broadcastName = name
	}
}

// idempotencyOf reads the standard idempotency_level option.
func idempotencyOf(method *protogen.Method) rpc.Idempotency {
	opts, _ := method.Desc.Options().(*descriptorpb.MethodOptions)
	switch opts.GetIdempotencyLevel() {
	case descriptorpb.MethodOptions_NO_SIDE_EFFECTS:
		return rpc.NoSideEffects
	case descriptorpb.MethodOptions_IDEMPOTENT:
		return rpc.Idempotent
	}
	return rpc.IdempotencyUnknown
}

func isDeprecatedService(service *protogen.Service) bool {
	opts, _ := service.Desc.Options().(*descriptorpb.ServiceOptions)
	return opts.GetDeprecated()
}

func isDeprecatedMethod(method *protogen.Method) bool {
	opts, _ := method.Desc.Options().(*descriptorpb.MethodOptions)
	return opts.GetDeprecated()
}
