package protoopts

import (
	"testing"

	mqttrpcv1 "github.com/mqttrpc/mqttrpc/proto/mqttrpc/v1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

func TestQoS(t *testing.T) {
	for q, want := range map[mqttrpcv1.Qos]rpc.QoS{
		mqttrpcv1.Qos_QOS_UNSPECIFIED:   rpc.QoS1,
		mqttrpcv1.Qos_QOS_AT_MOST_ONCE:  rpc.QoS0,
		mqttrpcv1.Qos_QOS_AT_LEAST_ONCE: rpc.QoS1,
		mqttrpcv1.Qos_QOS_EXACTLY_ONCE:  rpc.QoS2,
	} {
		if got, err := QoS(q); err != nil || got != want {
			t.Errorf("QoS(%v) = %v, %v; want %v", q, got, err, want)
		}
	}
	if _, err := QoS(mqttrpcv1.Qos(99)); err == nil {
		t.Error("QoS(99): no error for a value this program does not know")
	}
}
