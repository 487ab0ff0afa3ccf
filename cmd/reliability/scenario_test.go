package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestKafkaKillScenario runs the kafka-kill scenario small (500 events, a
// 2 s outage) end to end: private broker process, outage half way,
// restart on the same data, recovery probe, drain and counts. Nothing
// Publish accepted may be lost, and every event must be accounted for.
func TestKafkaKillScenario(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s := settings{
		events: 500, publishers: 4, batch: 1, concurrency: 16, rate: 250,
		outage: 2 * time.Second, publishTimeout: 10 * time.Second, grace: time.Second,
		drainTimeout: 20 * time.Second, settle: 500 * time.Millisecond, recoveryTimeout: 20 * time.Second,
		logger: slog.New(slog.DiscardHandler),
	}
	res, err := runScenario(ctx, s, "kafka-kill")
	if err != nil {
		t.Fatal(err)
	}
	c := tally(res)
	var report bytes.Buffer
	printReport(&report, res, c)
	t.Log(report.String())

	if !res.kafka {
		t.Error("the private Kafka broker's run is not judged as Kafka")
	}
	var killed, restarting time.Time
	for _, m := range res.marks {
		switch {
		case strings.HasPrefix(m.what, "outage starts: kill -9 of the broker process"):
			killed = m.at
		case m.what == "outage ends: starting the broker again on the same port and data":
			restarting = m.at
		}
	}
	if killed.IsZero() || restarting.IsZero() {
		t.Fatalf("the timeline lacks the kill or the restart")
	}
	// The probe starts with the restart, so it cannot succeed earlier.
	if res.recovered.Before(restarting) || restarting.Sub(killed) < s.outage {
		t.Errorf("kill at %v, restart at %v, recovery at %v: want the restart an outage after the kill and the recovery after the restart",
			killed.Sub(res.start), restarting.Sub(res.start), res.recovered.Sub(res.start))
	}
	if len(res.outcomes) != s.events || c.publishedOK+c.failed != s.events {
		t.Errorf("%d events reported on (%d ok, %d failed), want all %d", len(res.outcomes), c.publishedOK, c.failed, s.events)
	}
	if c.publishedOK == 0 {
		t.Error("no Publish succeeded")
	}
	if c.lost != 0 {
		t.Errorf("%d events lost across kill -9 of the broker", c.lost)
	}
	if res.overruns != 0 {
		t.Errorf("%d Publish calls returned later than their ctx deadline + %v", res.overruns, overrunMargin)
	}
}
