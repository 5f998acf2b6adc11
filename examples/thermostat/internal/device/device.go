// Package device is a simulated thermostat that serves the Thermostat
// service, shared by the thermostat examples.
package device

import (
	"context"
	"fmt"
	"hash/fnv"
	"math"
	"sync"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/examples/thermostat/thermostatv1"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// Target temperatures a thermostat accepts, in °C.
const (
	MinCelsius = 5
	MaxCelsius = 35
)

// Thermostat implements thermostatv1.ThermostatServer for one device.
type Thermostat struct {
	thermostatv1.UnimplementedThermostatServer

	id string

	mu       sync.Mutex
	celsius  float64
	humidity float64
	target   float64
}

// New returns a thermostat whose starting reading is derived from its ID,
// so that every run prints the same values.
func New(id string) *Thermostat {
	h := fnv.New32a()
	h.Write([]byte(id))
	n := h.Sum32()
	return &Thermostat{
		id:       id,
		celsius:  18 + float64(n%50)/10,
		humidity: 35 + float64(n/50%200)/10,
		target:   20,
	}
}

// GetReading implements thermostatv1.ThermostatServer.
func (t *Thermostat) GetReading(ctx context.Context, _ *thermostatv1.GetReadingRequest) (*thermostatv1.Reading, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return &thermostatv1.Reading{
		DeviceId:      t.id,
		Celsius:       t.celsius,
		Humidity:      t.humidity,
		TargetCelsius: t.target,
	}, nil
}

// SetTarget implements thermostatv1.ThermostatServer.
func (t *Thermostat) SetTarget(ctx context.Context, req *thermostatv1.SetTargetRequest) (*thermostatv1.SetTargetResponse, error) {
	c := req.GetCelsius()
	if !(c >= MinCelsius && c <= MaxCelsius) { // also refuses NaN
		return nil, rpc.Errorf(rpc.InvalidArgument, "target %.1f °C is outside [%d, %d] °C", c, MinCelsius, MaxCelsius)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	previous := t.target
	t.target = c
	return &thermostatv1.SetTargetResponse{PreviousCelsius: previous}, nil
}

// WatchReadings implements thermostatv1.ThermostatServer: the current
// reading at once, then one per interval, each a step of 0.1 °C closer to
// the target. Send waits while the caller has not read what it was sent
// (flow control), so a slow caller slows the stream down.
func (t *Thermostat) WatchReadings(ctx context.Context, req *thermostatv1.WatchReadingsRequest, stream rpc.ServerStreamingServer[thermostatv1.Reading]) error {
	interval := time.Duration(req.GetIntervalMs()) * time.Millisecond
	if interval <= 0 {
		interval = time.Second
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for n := uint32(0); req.GetCount() == 0 || n < req.GetCount(); n++ {
		if n > 0 {
			select {
			case <-ticker.C:
			case <-ctx.Done():
				return ctx.Err() // the caller cancelled, or the deadline passed
			}
			t.step()
		}
		reading, err := t.GetReading(ctx, nil)
		if err != nil {
			return err
		}
		if err := stream.Send(reading); err != nil {
			return err
		}
	}
	return nil
}

// step moves the temperature 0.1 °C towards the target.
func (t *Thermostat) step() {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch d := t.target - t.celsius; {
	case math.Abs(d) <= 0.1:
		t.celsius = t.target
	case d > 0:
		t.celsius += 0.1
	default:
		t.celsius -= 0.1
	}
	// Tenths of a degree, exactly: repeated += 0.1 drifts in binary
	// (18.200000000000003), which every JSON reading would show.
	t.celsius = math.Round(t.celsius*10) / 10
}

// Serve connects to the broker as device id (with a client ID of its own,
// id and a random suffix, and credentials from the environment: see
// exampleconn) and serves the Thermostat
// service until Shutdown is called on the returned server. The caller closes
// the returned connection after shutting the server down.
func Serve(ctx context.Context, brokerURL, id string, opts ...rpc.ServerOption) (*rpc.Server, *rpc.Conn, error) {
	conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID(id))...)
	if err != nil {
		return nil, nil, fmt.Errorf("device %s: %w", id, err)
	}
	srv := rpc.NewServer(conn, append([]rpc.ServerOption{rpc.WithServerID(id)}, opts...)...)
	thermostatv1.RegisterThermostatServer(srv, New(id))
	if err := srv.Start(ctx); err != nil {
		_ = conn.Close(context.Background())
		return nil, nil, fmt.Errorf("device %s: %w", id, err)
	}
	return srv, conn, nil
}
