package brokertest

import (
	"fmt"
	"strings"
	"testing"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

func TestAMQPURLFromEnv(t *testing.T) {
	t.Setenv(AMQPURLEnv, "amqp://u:p@broker.example:5672/")
	if got := AMQPURL(t); got != "amqp://u:p@broker.example:5672/" {
		t.Errorf("AMQPURL = %q, want the environment's URL", got)
	}
}

// TestAMQPURLAnswers: whatever broker AMQPURL finds accepts connections.
func TestAMQPURLAnswers(t *testing.T) {
	url := AMQPURL(t)
	conn, err := amqp091.Dial(url)
	if err != nil {
		t.Fatalf("broker %s does not answer: %v", url, err)
	}
	_ = conn.Close()
}

// amqpRecordingTB records Skip and Fatal instead of stopping the test.
type amqpRecordingTB struct {
	testing.TB
	skipped, fatal string
}

func (r *amqpRecordingTB) Helper()           {}
func (r *amqpRecordingTB) Skip(args ...any)  { r.skipped = fmt.Sprint(args...) }
func (r *amqpRecordingTB) Fatal(args ...any) { r.fatal = fmt.Sprint(args...) }

func TestMissingBrokerSkipsOrFailsUnderCI(t *testing.T) {
	t.Setenv("CI", "")
	r := &amqpRecordingTB{TB: t}
	if got := decide(r, "", "nothing answers"); got != "" || r.fatal != "" || !strings.Contains(r.skipped, AMQPURLEnv) || !strings.Contains(r.skipped, "nothing answers") {
		t.Errorf("without CI: url %q, skipped %q, fatal %q; want a skip naming %s", got, r.skipped, r.fatal, AMQPURLEnv)
	}
	t.Setenv("CI", "true")
	r = &amqpRecordingTB{TB: t}
	if decide(r, "", "nothing answers"); r.skipped != "" || !strings.Contains(r.fatal, "CI=true") {
		t.Errorf("with CI=true: skipped %q, fatal %q; want a failure", r.skipped, r.fatal)
	}
	if got := decide(r, "amqp://x/", ""); got != "amqp://x/" {
		t.Errorf("found broker: %q", got)
	}
}
