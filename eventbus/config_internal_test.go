package eventbus

import (
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
	c = Config{ServiceName: "s", URL: "mem://", Policy: Policy{MaxAttempts: 1, HandlerTimeout: -1, Jitter: NoJitter}}.withDefaults()
	if c.URL != "mem://" || c.Policy.MaxAttempts != 1 || c.Policy.HandlerTimeout != -1 || c.Policy.Jitter != NoJitter ||
		c.Policy.InitialBackoff != DefaultPolicy.InitialBackoff || c.Policy.Multiplier != DefaultPolicy.Multiplier {
		t.Errorf("withDefaults overrode set fields or missed zero ones: %+v", c)
	}
	if err := DefaultPolicy.validate(); err != nil {
		t.Errorf("DefaultPolicy is invalid: %v", err)
	}
}
