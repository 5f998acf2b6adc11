package rpc_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
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

// testPKI is a CA and a server certificate for 127.0.0.1, made for the test.
type testPKI struct {
	caFile, certFile, keyFile string
	pool                      *x509.CertPool
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mqttrpc test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{caFile: filepath.Join(dir, "ca.pem"), certFile: filepath.Join(dir, "server.pem"), keyFile: filepath.Join(dir, "server.key"), pool: x509.NewCertPool()}
	writePEM(t, p.caFile, "CERTIFICATE", caDER)
	writePEM(t, p.certFile, "CERTIFICATE", der)
	writePEM(t, p.keyFile, "EC PRIVATE KEY", keyDER)
	p.pool.AddCert(caCert)
	return p
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// passwordFile writes a Mosquitto password file with mosquitto_passwd.
func passwordFile(t *testing.T, users map[string]string) string {
	t.Helper()
	bin, err := exec.LookPath("mosquitto_passwd")
	if err != nil {
		if os.Getenv(mosquittotest.RequireEnv) == "1" {
			t.Fatal("mosquitto_passwd not found (apt-get install mosquitto)")
		}
		t.Skip("mosquitto_passwd not found (apt-get install mosquitto)")
	}
	path := filepath.Join(t.TempDir(), "passwords")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for user, pass := range users {
		if out, err := exec.Command(bin, "-b", path, user, pass).CombinedOutput(); err != nil {
			t.Fatalf("mosquitto_passwd: %v: %s", err, out)
		}
	}
	return path
}

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
	pki := newTestPKI(t)
	passwords := passwordFile(t, map[string]string{"dev-1": "device-secret", "backend": "backend-secret", "mallory": "mallory-secret"})
	aclPath := filepath.Join(t.TempDir(), "acl")
	if err := os.WriteFile(aclPath, []byte(testACL), 0o600); err != nil {
		t.Fatal(err)
	}
	mq := mosquittotest.Start(t, mosquittotest.WithAnonymous(false), mosquittotest.WithConfig(
		"cafile "+pki.caFile,
		"certfile "+pki.certFile,
		"keyfile "+pki.keyFile,
		"password_file "+passwords,
		"acl_file "+aclPath,
	))
	url := "mqtts://" + mq.Addr()
	tlsConfig := &tls.Config{RootCAs: pki.pool, MinVersion: tls.VersionTLS12}

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
