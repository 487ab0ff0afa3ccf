package eventbus

import (
	"strings"
	"testing"
)

func TestConfigWithDefaults(t *testing.T) {
	c := Config{ServiceName: "s"}.withDefaults()
	if c.URL != "amqp://guest:guest@localhost:5672/" {
		t.Errorf("empty URL defaults to %q", c.URL)
	}
	if c.Logger == nil {
		t.Error("no default logger")
	}
	if c.Policy != DefaultPolicy {
		t.Errorf("zero Policy defaults to %+v, want %+v", c.Policy, DefaultPolicy)
	}
	c = Config{ServiceName: "s", URL: "mem://", Policy: Policy{MaxAttempts: 1, HandlerTimeout: -1, Jitter: 1e-9}}.withDefaults()
	if c.URL != "mem://" || c.Policy.MaxAttempts != 1 || c.Policy.HandlerTimeout != -1 || c.Policy.Jitter != 1e-9 ||
		c.Policy.InitialBackoff != DefaultPolicy.InitialBackoff || c.Policy.Multiplier != DefaultPolicy.Multiplier {
		t.Errorf("withDefaults overrode set fields or missed zero ones: %+v", c)
	}
	if err := DefaultPolicy.validate(); err != nil {
		t.Errorf("DefaultPolicy is invalid: %v", err)
	}
}

func TestRedactURLQuerySecrets(t *testing.T) {
	got := RedactURL("kafka://broker:9092?sasl_user=app&sasl_password=hunter2&api_key=k1&partitions=8")
	for _, secret := range []string{"hunter2", "k1"} {
		if strings.Contains(got, secret) {
			t.Errorf("RedactURL kept %q: %s", secret, got)
		}
	}
	if !strings.Contains(got, "partitions=8") || !strings.Contains(got, "sasl_user=app") {
		t.Errorf("RedactURL dropped harmless parameters: %s", got)
	}
}
