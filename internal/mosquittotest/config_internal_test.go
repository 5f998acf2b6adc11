package mosquittotest

import (
	"strings"
	"testing"
)

func TestConfigFile(t *testing.T) {
	t.Parallel()
	conf := configFile(defaultConfig(), 4321, "/tmp/x")
	for _, want := range []string{
		"\nlistener 4321 127.0.0.1\n",
		"\nallow_anonymous true\n",
		"\npersistence false\n",
		"\nset_tcp_nodelay true\n",
		"\nmax_inflight_messages 0\n",
		"\nlog_dest stderr\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("generated config lacks %q:\n%s", strings.TrimSpace(want), conf)
		}
	}

	cfg := defaultConfig()
	for _, opt := range []Option{WithNoDelay(false), WithAnonymous(false), WithConfig("password_file /tmp/pw", "acl_file /tmp/acl")} {
		opt.apply(&cfg)
	}
	conf = configFile(cfg, 4321, "/tmp/x")
	for _, want := range []string{"\nset_tcp_nodelay false\n", "\nallow_anonymous false\n", "\npassword_file /tmp/pw\nacl_file /tmp/acl\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("generated config lacks %q:\n%s", strings.TrimSpace(want), conf)
		}
	}
	if strings.Index(conf, "listener ") > strings.Index(conf, "password_file") {
		t.Errorf("extra lines come before the listener:\n%s", conf)
	}

	if strings.Contains(conf, "connection ") {
		t.Errorf("a bridge without WithBridge:\n%s", conf)
	}

	cfg = defaultConfig()
	for _, opt := range []Option{WithPersistence(), WithBridge("127.0.0.1:1884", "mqttrpc/#", "other/+ in 0"), WithConfig("acl_file /tmp/acl")} {
		opt.apply(&cfg)
	}
	conf = configFile(cfg, 4321, "/tmp/x")
	for _, want := range []string{
		"\npersistence true\npersistence_location /tmp/x/\n",
		"\nconnection mosquittotest-4321-0\naddress 127.0.0.1:1884\n",
		"\nbridge_protocol_version mqttv50\n",
		"\nrestart_timeout 1 1\n",
		"\ntopic mqttrpc/# both 1\ntopic other/+ in 0\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("generated config lacks %q:\n%s", strings.TrimSpace(want), conf)
		}
	}
	if strings.Contains(conf, "persistence false") {
		t.Errorf("persistence false with WithPersistence:\n%s", conf)
	}
	if strings.Index(conf, "acl_file") > strings.Index(conf, "connection ") {
		t.Errorf("extra lines come after the bridge, inside its section:\n%s", conf)
	}
}
