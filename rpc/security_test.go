package rpc_test

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
	"github.com/mqttrpc/mqttrpc/internal/rpctest"
	"github.com/mqttrpc/mqttrpc/rpc"
)

// The ACL of docs/deployment.md: devices read their own command topics and
// broadcasts and answer on response topics; callers write device commands
// they are allowed and read only their own response topic.
const testACL = `
user dev-1
topic read mqttrpc/+/dev-1/+
topic read mqttrpc/+/_all/+
topic write mqttrpc/responses/+

user backend
topic write mqttrpc/+/dev-1/+
pattern read mqttrpc/responses/%c

user mallory
topic write mqttrpc/+/dev-1/+
topic read #
`

// TestMosquittoTLSPasswordsACL runs calls over TLS with passwords and an ACL:
// allowed calls work, a call the ACL denies fails at once with
// PermissionDenied, and a request asking for an answer on a topic outside the
// response-topic policy gets none.
func TestMosquittoTLSPasswordsACL(t *testing.T) {
	pki := rpctest.NewPKI(t)
	passwords := rpctest.PasswordFile(t, map[string]string{"dev-1": "device-secret", "backend": "backend-secret", "mallory": "mallory-secret"})
	aclPath := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(aclPath, []byte(testACL), 0o600); err != nil {
		t.Fatal(err)
	}
	mq := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig(
		"cafile "+pki.CAFile,
		"certfile "+pki.CertFile,
		"keyfile "+pki.KeyFile,
		"password_file "+passwords,
		"acl_file "+aclPath,
	))
	url := "mqtts://" + mq.Addr()
	tlsConfig := &tls.Config{RootCAs: pki.Pool, MinVersion: tls.VersionTLS12}

	svc := &echoService{}
	serverConn := dial(t, url, rpc.WithClientID("dev-1"), rpc.WithCredentials("dev-1", "device-secret"), rpc.WithTLSConfig(tlsConfig))
	srv := rpc.NewServer(serverConn, rpc.WithServerID("dev-1"))
	srv.RegisterService(&echoDesc, svc)
	if err := srv.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Shutdown(testCtx(t)) })

	client := rpc.NewClient(dial(t, url, rpc.WithClientID("backend"), rpc.WithCredentials("backend", "backend-secret"), rpc.WithTLSConfig(tlsConfig)))
	t.Cleanup(func() { _ = client.Close(testCtx(t)) })
	if got, err := echo(testCtx(t), client, "over TLS", rpc.To("dev-1")); err != nil || got != "over TLS" {
		t.Fatalf("allowed call: %q, %v", got, err)
	}

	start := time.Now()
	_, err := echo(testCtx(t), client, "x", rpc.To("dev-2"))
	wantCode(t, err, rpc.PermissionDenied)
	if d := time.Since(start); d > time.Second {
		t.Errorf("PermissionDenied after %v, want at once", d)
	}

	// A wrong password never connects.
	if _, err := rpc.Dial(shortCtx(t, 2*time.Second), url, rpc.WithClientID("backend2"), rpc.WithCredentials("backend", "wrong"), rpc.WithTLSConfig(tlsConfig)); rpc.CodeOf(err) != rpc.PermissionDenied || !strings.Contains(err.Error(), "not authorized (CONNACK 0x87)") {
		t.Errorf("Dial with a wrong password: %v, want PermissionDenied at once (Mosquitto's CONNACK 0x87)", err)
	}

	// mallory may command dev-1 but asks for the answer on someone else's
	// topic: the server's policy refuses to publish there.
	conn, err := tls.Dial("tcp", mq.Addr(), tlsConfig)
	if err != nil {
		t.Fatal(err)
	}
	// paho serialises its writes only on a connection that is a sync.Locker;
	// over TLS, a PUBACK written while a PUBLISH is would corrupt the stream.
	mallory := rpctest.NewRawClientConn(t, packets.NewThreadSafeConn(conn), &paho.Connect{ClientID: "mallory", CleanStart: true, UsernameFlag: true, Username: "mallory", PasswordFlag: true, Password: []byte("mallory-secret")})
	mallory.SubscribeTo(t, "#")
	if _, err := mallory.Publish(testCtx(t), &paho.Publish{Topic: "mqttrpc/" + echoServiceName + "/dev-1/Echo", QoS: 1, Payload: []byte(`"x"`),
		Properties: &paho.PublishProperties{ResponseTopic: "plant/valves/open", CorrelationData: []byte("c"), ContentType: "application/json"}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return srv.Stats().Dropped[rpc.DropResponseTopicPolicy] == 1 })
	for {
		p := mallory.Next(300 * time.Millisecond)
		if p == nil {
			break
		}
		if !strings.HasPrefix(p.Topic, "mqttrpc/"+echoServiceName) {
			t.Fatalf("server published on %q", p.Topic)
		}
	}
	if n := svc.calls.Load(); n != 1 {
		t.Errorf("handler ran %d times, want 1 (only the allowed call)", n)
	}
}
