package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/paissive/go-eventbus/brokertest"
	"github.com/paissive/go-eventbus/eventbus/driver"
)

// Replay100kEnv enables TestReplay100k, which takes a minute or two:
// EVENTBUS_CLI_100K=1 go test -run TestReplay100k -v ./cmd/eventbus
const replay100kEnv = "EVENTBUS_CLI_100K"

// TestReplay100k replays 100,000 poisoned events on RabbitMQ with the
// command and checks that its peak resident memory (the child's
// ru_maxrss) stays under 200 MiB: the queue is read, replayed and removed
// a page at a time. The records are written straight to the poison queue,
// as the bus stores them, with 256-byte payloads. It logs the time and
// the peak RSS.
func TestReplay100k(t *testing.T) {
	n := 100_000
	if v := os.Getenv(replay100kEnv); v == "" {
		t.Skipf("set %s=1 to replay 100,000 poisoned events (a minute or two)", replay100kEnv)
	} else if k, err := strconv.Atoi(v); err == nil && k > 1 {
		n = k
	}
	svc := unique("bulk")
	br := amqpBroker(t, svc)
	base := brokertest.AMQPURL(t)
	conn, err := amqp091.Dial(base)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	target := svc + ".work"
	for _, q := range []string{target, "poison:" + svc} {
		if _, err := ch.QueueDeclare(q, true, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	confirms := ch.NotifyPublish(make(chan amqp091.Confirmation, 1000))
	payload := []byte(`{"pad":"` + strings.Repeat("x", 246) + `"}`)
	start := time.Now()
	const window = 1000
	for i := 0; i < n; i++ {
		now := time.Now().UTC().Format(time.RFC3339Nano)
		h := amqp091.Table{
			driver.HeaderSpecVersion: "1.0", driver.HeaderID: fmt.Sprintf("ev-%d", i), driver.HeaderSource: "bulk",
			driver.HeaderType: "work.item", driver.HeaderTime: now, driver.HeaderEventType: "domain",
			driver.HeaderCorrelationID: fmt.Sprintf("ev-%d", i), driver.HeaderContentType: "application/json",
			driver.HeaderPoisonID: uuid.NewString(), driver.HeaderPoisonReason: "retries-exhausted",
			driver.HeaderPoisonError: "timeout calling the ledger", driver.HeaderPoisonAttempts: "5",
			driver.HeaderPoisonService: svc, driver.HeaderPoisonSubscription: "work", driver.HeaderPoisonPattern: "work.#",
			driver.HeaderPoisonFirstFailure: now, driver.HeaderPoisonLastFailure: now,
		}
		err := ch.PublishWithContext(context.Background(), "", "poison:"+svc, false, false, amqp091.Publishing{
			MessageId: fmt.Sprintf("ev-%d", i), Headers: h, Body: payload, DeliveryMode: amqp091.Persistent, ContentType: "application/json",
		})
		if err != nil {
			t.Fatal(err)
		}
		if i >= window {
			if c := <-confirms; !c.Ack {
				t.Fatal("the broker refused a poison record")
			}
		}
	}
	for range min(n, window) {
		<-confirms
	}
	t.Logf("stored %d poison records in %v", n, time.Since(start))

	cmd := exec.Command(cliBinary, "poison", "replay", "--service", svc, "--yes")
	cmd.Env = append(os.Environ(), "EVENTBUS_URL="+br.url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start = time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("replay: %v\n%s", err, stderr.String())
	}
	elapsed := time.Since(start)
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	peak := ru.Maxrss * 1024 // Linux reports KiB
	t.Logf("eventbus poison replay of %d events: %v, peak RSS %.1f MiB; %s", n, elapsed.Round(time.Millisecond), float64(peak)/(1<<20), strings.TrimSpace(stderr.String()))
	if !strings.Contains(stderr.String(), fmt.Sprintf("replayed %d event(s)", n)) {
		t.Errorf("replay said %q", stderr.String())
	}
	if peak >= 200<<20 {
		t.Errorf("peak RSS %d MiB, want under 200 MiB", peak>>20)
	}
	q, err := ch.QueueDeclarePassive(target, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := ch.QueueDeclarePassive("poison:"+svc, true, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	if q.Messages != n || p.Messages != 0 {
		t.Errorf("after the replay the subscription's queue holds %d (want %d) and the poison queue %d (want 0)", q.Messages, n, p.Messages)
	}
}
