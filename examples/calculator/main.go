// Command calculator shows load balancing: three instances of a stateless
// service join one shared-subscription group, and calls addressed to "_any"
// are spread across them by the broker.
//
//	go run ./examples/calculator [-broker mqtt://127.0.0.1:1883] [-calls 12]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/mqttrpc/mqttrpc/examples/calculator/calculatorv1"
	"github.com/mqttrpc/mqttrpc/examples/internal/exampleconn"
	"github.com/mqttrpc/mqttrpc/rpc"
	"github.com/mqttrpc/mqttrpc/testbroker"
)

// instance is one replica of the calculator service.
type instance struct {
	calculatorv1.UnimplementedCalculatorServer
	id string
}

func (s instance) Add(ctx context.Context, req *calculatorv1.BinaryRequest) (*calculatorv1.Result, error) {
	return &calculatorv1.Result{Value: req.GetA() + req.GetB(), Instance: s.id}, nil
}

func (s instance) Divide(ctx context.Context, req *calculatorv1.BinaryRequest) (*calculatorv1.Result, error) {
	if req.GetB() == 0 {
		return nil, rpc.Errorf(rpc.InvalidArgument, "division by zero")
	}
	return &calculatorv1.Result{Value: req.GetA() / req.GetB(), Instance: s.id}, nil
}

func main() {
	brokerURL := flag.String("broker", "", "broker URL (default: start an embedded broker)")
	calls := flag.Int("calls", 12, "number of Add calls to spread")
	flag.Parse()
	if err := run(*brokerURL, *calls, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "calculator:", err)
		os.Exit(1)
	}
}

func run(brokerURL string, calls int, out io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if brokerURL == "" {
		broker, err := testbroker.New()
		if err != nil {
			return err
		}
		defer broker.Close()
		brokerURL = broker.URL()
	}

	for i := 1; i <= 3; i++ {
		id := fmt.Sprintf("calc-%d", i)
		conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID(id))...)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		srv := rpc.NewServer(conn, rpc.WithServerID(id), rpc.WithShareGroup("calculator"))
		calculatorv1.RegisterCalculatorServer(srv, instance{id: id})
		if err := srv.Start(ctx); err != nil {
			return err
		}
		defer srv.Shutdown(context.Background())
	}
	fmt.Fprintf(out, "3 instances in share group %q on %s\n", "calculator", exampleconn.Redacted(brokerURL))

	conn, err := rpc.Dial(ctx, brokerURL, exampleconn.Options(brokerURL, exampleconn.ClientID("calculator-caller"))...)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	client := rpc.NewClient(conn)
	defer client.Close(context.Background())
	calc := calculatorv1.NewCalculatorClient(client, rpc.ToAny())

	served := map[string]int{}
	for i := range calls {
		r, err := calc.Add(ctx, &calculatorv1.BinaryRequest{A: float64(i), B: 0.5})
		if err != nil {
			return err
		}
		served[r.GetInstance()]++
		fmt.Fprintf(out, "Add(%d, 0.5) = %-5g answered by %s\n", i, r.GetValue(), r.GetInstance())
	}
	_, err = calc.Divide(ctx, &calculatorv1.BinaryRequest{A: 1, B: 0})
	fmt.Fprintf(out, "Divide(1, 0) -> %v\n", err)

	ids := make([]string, 0, len(served))
	for id := range served {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	fmt.Fprint(out, "calls per instance:")
	for _, id := range ids {
		fmt.Fprintf(out, " %s=%d", id, served[id])
	}
	fmt.Fprintln(out)
	return nil
}
