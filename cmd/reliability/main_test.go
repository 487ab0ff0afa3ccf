package main

import (
	"io"
	"os"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// The Kafka scenarios re-execute the running binary as the broker;
	// under go test that binary is the test binary.
	if len(os.Args) > 1 && os.Args[1] == kafkaBrokerCommand {
		os.Exit(kafkaBrokerMain(os.Args[2:]))
	}
	goleak.VerifyTestMain(m,
		// Sarama's metrics (rcrowley/go-metrics) start one process-wide
		// ticker goroutine for meters on first use and never stop it.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	)
}

func TestParseFlagsRejectsWhatCannotRun(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "give -scenario"},
		{[]string{"-scenario", "nats-kill"}, `unknown -scenario "nats-kill"`},
		{[]string{"-url", "amqp://h/"}, "-url needs -stop-cmd and -start-cmd"},
		{[]string{"-url", "nats://h", "-stop-cmd", "x", "-start-cmd", "y"}, "want an amqp://, amqps:// or kafka:// URL"},
		{[]string{"-url", "amqp://u:secret@h/", "-stop-cmd", "x", "-start-cmd", "y", "-scenario", "kafka-kill"}, "leave -scenario out"},
		{[]string{"-scenario", "kafka-kill", "-stop-cmd", "x"}, "apply to -url only"},
		{[]string{"-scenario", "kafka-kill", "-batch", "0"}, "must be at least 1"},
		{[]string{"-scenario", "kafka-kill", "-outage", "0s"}, "must be positive"},
		{[]string{"-scenario", "kafka-kill", "-log", "loud"}, "-log"},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("parseFlags(%q) = %v, want an error containing %q", tc.args, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "secret") {
			t.Errorf("parseFlags(%q) error shows the password: %v", tc.args, err)
		}
	}
	s, err := parseFlags([]string{"-url", "kafka://h:9092", "-stop-cmd", "x", "-start-cmd", "y"}, io.Discard)
	if err != nil || s.scenario != "custom" || s.events != 10000 || s.publishers != 4 || s.batch != 1 || s.concurrency != 16 {
		t.Errorf("parseFlags(-url ...) = %+v, %v; want scenario custom with the defaults", s, err)
	}
}
