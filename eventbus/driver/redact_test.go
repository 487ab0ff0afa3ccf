package driver

import (
	"slices"
	"strings"
	"testing"
)

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

func TestRedactURLUserinfo(t *testing.T) {
	for _, tc := range []struct{ in, want, secret string }{
		{"amqp://app:hunter2@127.0.0.1:5672/", "amqp://app:xxxxx@127.0.0.1:5672/", "hunter2"},
		// A NATS token stands where a user name would.
		{"nats://s3cr3tt0ken@127.0.0.1:4222", "nats://xxxxx@127.0.0.1:4222", "s3cr3tt0ken"},
		{"amqp:app:hunter2@127.0.0.1", "amqp:(opaque URL hidden)", "hunter2"},
		{"kafka://127.0.0.1:9092?topic=t", "kafka://127.0.0.1:9092?topic=t", ""},
	} {
		got := RedactURL(tc.in)
		if got != tc.want || (tc.secret != "" && strings.Contains(got, tc.secret)) {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestURLSecrets(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string
	}{
		{"amqp://app:hunter2@127.0.0.1:5672/", []string{"hunter2"}},
		{"nats://s3cr3tt0ken@127.0.0.1:4222", []string{"s3cr3tt0ken"}},
		{"kafka://broker:9092?sasl_user=app&sasl_password=pw1&api_key=k1&partitions=8", []string{"k1", "pw1"}},
		{"amqp://app:@127.0.0.1/", nil}, // an empty password hides nothing
		{"mem://", nil},
		{"%zz", nil},
	} {
		got := URLSecrets(tc.in)
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("URLSecrets(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
