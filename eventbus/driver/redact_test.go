package driver

import (
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
