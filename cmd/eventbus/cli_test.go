package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
)

// TestTail: tail shows the events a bus publishes that match its pattern,
// and no others, while a running subscription of the same pattern still
// handles every one of them.
func TestTail(t *testing.T) {
	svc := unique("tail")
	eachBrokerAndNATS(t, []string{svc}, func(t *testing.T, br broker) {
		b := newBus(t, br, svc)
		orders, others := newRecorder(), newRecorder()
		if err := b.Subscribe("order.#", orders.handle, eventbus.Concurrency(8)); err != nil {
			t.Fatal(err)
		}
		if err := b.Subscribe("other.#", others.handle); err != nil { // makes other.* routable
			t.Fatal(err)
		}
		if err := b.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		const n = 50
		tail := start(t, br, "tailing", "tail", "order.#", "--json", "--count", fmt.Sprint(n), "--timeout", "60s")
		var evs []eventbus.Event
		for i := range n {
			name := "order.placed"
			if i%2 == 1 {
				name = "order" // zero segments after "order"
			}
			ev, _ := eventbus.NewEvent(name, map[string]int{"n": i}, eventbus.WithPartitionKey("k"))
			other, _ := eventbus.NewEvent("other.thing", nil, eventbus.WithPartitionKey("k"))
			evs = append(evs, ev)
			if err := b.Publish(testCtx(t), ev, other); err != nil {
				t.Fatal(err)
			}
		}
		if code := tail.wait(t); code != 0 {
			t.Fatalf("tail exited %d: %s", code, tail.stderr)
		}
		got := map[string]bool{}
		for _, l := range lines(tail.stdout.String()) {
			var ce cloudEvent
			if err := json.Unmarshal([]byte(l), &ce); err != nil {
				t.Fatalf("tail --json printed %q: %v", l, err)
			}
			if ce.SpecVersion != "1.0" || !strings.HasPrefix(ce.Type, "order") || ce.Source != svc || ce.PartitionKey != "k" {
				t.Errorf("tail printed %+v, want an order event of %s with its attributes", ce, svc)
			}
			got[ce.ID] = true
		}
		for _, ev := range evs {
			if !got[ev.ID] {
				t.Errorf("tail did not show %s (%s)", ev.ID, ev.Name)
			}
		}
		waitFor(t, "the subscription handles every event", func() bool { return orders.len() == n },
			func() string { return fmt.Sprintf("%d of %d handled", orders.len(), n) })
		for _, ev := range evs {
			if _, c := orders.get(ev.ID); c == 0 {
				t.Errorf("the subscription did not handle %s", ev.ID)
			}
		}
	})
}

// TestPublish: a single event with every field given, and 1,000
// CloudEvents JSON lines from stdin, reach a bus handler as given.
func TestPublish(t *testing.T) {
	svc := unique("pub")
	eachBrokerAndNATS(t, []string{svc}, func(t *testing.T, br broker) {
		b := newBus(t, br, svc)
		rec := newRecorder()
		if err := b.Subscribe("cli.#", rec.handle, eventbus.Concurrency(16)); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		r := mustCLI(t, br, "", "publish", "cli.single", "--data", `{"k":"v"}`, "--type", "integration", "--source", "ops",
			"--correlation-id", "corr-1", "--key", "pk-1", "--meta", "tenant=acme", "--meta", "who=cli", "--data-version", "2")
		id := strings.TrimSpace(r.stdout)
		waitFor(t, "the single event is handled", func() bool { _, c := rec.get(id); return c > 0 }, func() string { return r.stderr })
		ev, _ := rec.get(id)
		if ev.Name != "cli.single" || string(ev.Data) != `{"k":"v"}` || ev.Type != eventbus.Integration || ev.Source != "ops" ||
			ev.CorrelationID != "corr-1" || ev.PartitionKey != "pk-1" || ev.DataVersion != "2" ||
			ev.Metadata["tenant"] != "acme" || ev.Metadata["who"] != "cli" {
			t.Errorf("handled %+v, want the fields given on the command line", ev)
		}

		const n = 1000
		var in strings.Builder
		for i := range n {
			fmt.Fprintf(&in, `{"specversion":"1.0","id":"bulk-%d","type":"cli.bulk.n%d","source":"importer","eventtype":"notification","correlationid":"c-%d","metadata":{"i":"%d"},"data":{"i":%d}}`+"\n", i, i%7, i%10, i, i)
		}
		r = mustCLI(t, br, in.String(), "publish", "--batch", "100")
		if !strings.Contains(r.stderr, fmt.Sprintf("published %d event(s)", n)) {
			t.Errorf("publish of %d lines said %q", n, r.stderr)
		}
		waitFor(t, "1,000 published lines are handled", func() bool { return rec.len() == n+1 },
			func() string { return fmt.Sprintf("%d of %d handled", rec.len()-1, n) })
		for i := range n {
			ev, _ := rec.get(fmt.Sprintf("bulk-%d", i))
			if ev.Name != fmt.Sprintf("cli.bulk.n%d", i%7) || ev.Source != "importer" || ev.Type != eventbus.Notification ||
				ev.CorrelationID != fmt.Sprintf("c-%d", i%10) || ev.Metadata["i"] != fmt.Sprint(i) || string(ev.Data) != fmt.Sprintf(`{"i":%d}`, i) {
				t.Fatalf("line %d handled as %+v", i, ev)
			}
		}

		// A bad line stops the run; the lines before it are published.
		r = cli(t, br, `{"type":"cli.ok","id":"before-bad"}`+"\n"+`{"type":"cli.x","colour":"red"}`+"\n", "publish")
		if r.code != exitPartial || !strings.Contains(r.stderr, `line 2: unknown attribute "colour"`) {
			t.Errorf("a bad second line: exit %d, %q; want %d and the line named", r.code, r.stderr, exitPartial)
		}
		waitFor(t, "the line before the bad one is handled", func() bool { _, c := rec.get("before-bad"); return c > 0 }, func() string { return "" })
	})
}

// TestPoison: 1,000 poisoned events are listed, filtered, shown, replayed
// (each handled once, by the failing subscription only) and purged.
func TestPoison(t *testing.T) {
	svc := unique("poison")
	eachBrokerAndNATS(t, []string{svc}, func(t *testing.T, br broker) {
		b := newBus(t, br, svc)
		var failing atomic.Bool
		failing.Store(true)
		fixed, healthy := newRecorder(), newRecorder()
		err := b.Subscribe("item.#", func(ctx context.Context, ev eventbus.Event) error {
			if failing.Load() {
				return eventbus.Permanent(errors.New("the database rejected the item"))
			}
			return fixed.handle(ctx, ev)
		}, eventbus.SubscriptionName("failing"), eventbus.Concurrency(16))
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Subscribe("item.#", healthy.handle, eventbus.SubscriptionName("healthy"), eventbus.Concurrency(16)); err != nil {
			t.Fatal(err)
		}
		if err := b.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		const n = 1000
		var evs []eventbus.Event
		for i := range n {
			name := "item.a"
			if i%2 == 1 {
				name = "item.b"
			}
			ev, _ := eventbus.NewEvent(name, map[string]int{"i": i})
			evs = append(evs, ev)
		}
		if err := b.Publish(testCtx(t), evs...); err != nil {
			t.Fatal(err)
		}
		poisoned := func() int {
			c := 0
			if _, err := b.Poisoned(testCtx(t), eventbus.PoisonFilter{Each: func(eventbus.PoisonedEvent) error { c++; return nil }}); err != nil {
				t.Fatal(err)
			}
			return c
		}
		waitFor(t, "1,000 events poisoned", func() bool { return poisoned() == n && healthy.len() == n },
			func() string {
				return fmt.Sprintf("%d poisoned, %d handled by the healthy subscription", poisoned(), healthy.len())
			})

		r := mustCLI(t, br, "", "poison", "ls", "--service", svc)
		if got := len(lines(r.stdout)); got != n+1 || !strings.Contains(r.stderr, fmt.Sprintf("%d poisoned event(s)", n)) {
			t.Errorf("poison ls printed %d lines (want a header and %d) and %q", got, n, r.stderr)
		}
		r = mustCLI(t, br, "", "poison", "ls", "-s", svc, "--name", "item.a", "--subscription", "failing", "--reason", "permanent", "--after", "1h", "--json")
		as := lines(r.stdout)
		if len(as) != n/2 {
			t.Errorf("poison ls --name item.a listed %d, want %d", len(as), n/2)
		}
		for _, l := range as {
			var rec poisonRecord
			if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Event.Type != "item.a" || rec.Subscription != "failing" ||
				rec.Reason != "permanent" || !strings.Contains(rec.Error, "database rejected") {
				t.Fatalf("poison ls --json printed %s (%v)", l, err)
			}
		}
		if r := mustCLI(t, br, "", "poison", "ls", "-s", svc, "--limit", "10", "--json"); len(lines(r.stdout)) != 10 {
			t.Errorf("--limit 10 listed %d", len(lines(r.stdout)))
		}
		if r := mustCLI(t, br, "", "poison", "ls", "-s", svc, "--before", "1h"); len(lines(r.stdout)) != 1 {
			t.Errorf("--before 1h listed %d lines, want the header only", len(lines(r.stdout)))
		}
		r = mustCLI(t, br, "", "poison", "show", "-s", svc, evs[0].ID)
		for _, want := range []string{evs[0].ID, "the database rejected the item", "failing (pattern item.#)", `"i": 0`} {
			if !strings.Contains(r.stdout, want) {
				t.Errorf("poison show lacks %q:\n%s", want, r.stdout)
			}
		}

		failing.Store(false)
		// Without a terminal and without --yes, nothing happens.
		if r := cli(t, br, "", "poison", "replay", "-s", svc, "--name", "item.a"); r.code != exitUsage || !strings.Contains(r.stderr, "--yes") {
			t.Errorf("replay without --yes: exit %d, %q; want %d and a hint", r.code, r.stderr, exitUsage)
		}
		r = mustCLI(t, br, "", "poison", "replay", "-s", svc, "--name", "item.a", "--yes")
		if !strings.Contains(r.stderr, fmt.Sprintf("replayed %d event(s)", n/2)) {
			t.Errorf("replay said %q", r.stderr)
		}
		waitFor(t, "the failing subscription handles the replayed events", func() bool { return fixed.len() == n/2 },
			func() string { return fmt.Sprintf("%d of %d", fixed.len(), n/2) })
		for _, ev := range evs {
			_, c := fixed.get(ev.ID)
			if want := map[string]int{"item.a": 1, "item.b": 0}[ev.Name]; c != want {
				t.Fatalf("event %s (%s) handled %d times after the replay, want %d", ev.ID, ev.Name, c, want)
			}
		}
		if r := mustCLI(t, br, "", "poison", "purge", "-s", svc, "--name", "item.b", "--limit", "100", "--yes"); !strings.Contains(r.stderr, "purged 100 event(s)") {
			t.Errorf("purge --limit 100 said %q", r.stderr)
		}
		if got := poisoned(); got != n/2-100 {
			t.Errorf("after the replay and a purge of 100, %d poisoned events are left, want %d", got, n/2-100)
		}
		mustCLI(t, br, "", "poison", "purge", "-s", svc, "--yes")
		if r := mustCLI(t, br, "", "poison", "ls", "-s", svc); !strings.Contains(r.stderr, "0 poisoned event(s)") {
			t.Errorf("after purging everything, ls said %q", r.stderr)
		}
		if d := healthy.duplicates() + fixed.duplicates(); d != 0 || healthy.len() != n {
			t.Errorf("the healthy subscription handled %d events with %d duplicates in all; want %d, none: replay must reach the failing subscription only", healthy.len(), d, n)
		}
	})
}

// TestTopology: topology shows the subscriptions' queues (consumer
// groups) with their depth (lag), the poison queue, a subscription that
// is missing and, where the broker can list, an orphan.
func TestTopology(t *testing.T) {
	svc := unique("topo")
	eachBrokerAndNATS(t, []string{svc}, func(t *testing.T, br broker) {
		b := newBus(t, br, svc)
		orders := newRecorder()
		for _, s := range []struct{ name, pattern string }{{"order.#", "order.#"}, {"invoices", "invoice.*"}, {"old", "legacy.#"}} {
			h := newRecorder().handle
			if s.name == "order.#" {
				h = orders.handle
			}
			if err := b.Subscribe(s.pattern, h, eventbus.SubscriptionName(s.name)); err != nil {
				t.Fatal(err)
			}
		}
		prefix := ""
		if br.kind == "kafka" {
			prefix = br.url[strings.Index(br.url, "prefix=")+len("prefix="):]
			prefix = prefix[:strings.IndexByte(prefix, '&')]
		}
		if err := b.Start(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		first, _ := eventbus.NewEvent("order.placed", nil)
		if err := b.Publish(testCtx(t), first); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		waitFor(t, "the first event is handled", func() bool { return orders.len() == 1 }, func() string { return "" })
		if br.kind == "kafka" {
			// Let the group commit its offset (once a second), so that
			// its lag counts from there.
			waitFor(t, "the group commits", func() bool {
				r := cli(t, br, "", "topology", "-s", svc, "--json")
				return strings.Contains(r.stdout, `"Name":"`+prefix+"."+svc+`.order.#","Subscription":"order.#","Bindings":["`)
			}, func() string { return "" })
		}
		if err := b.Close(ctx); err != nil {
			t.Fatal(err)
		}
		pub := newBus(t, br, unique("publisher"))
		for range 7 {
			ev, _ := eventbus.NewEvent("order.shipped", nil)
			if err := pub.Publish(testCtx(t), ev); err != nil {
				t.Fatal(err)
			}
		}
		args := []string{"topology", "-s", svc, "--subscription", "order.#", "--subscription", "invoices=invoice.*", "--subscription", "missing-one"}
		if br.kind == "amqp" {
			if _, err := exec.LookPath("rabbitmqctl"); err == nil && exec.Command("rabbitmqctl", "-q", "list_vhosts").Run() == nil {
				args = append(args, "--admin", "rabbitmqctl")
			} else {
				t.Log("rabbitmqctl cannot reach the broker: orphans are not checked")
			}
		}
		r := mustCLI(t, br, "", args...)
		t.Logf("eventbus %s\n%s", strings.Join(args, " "), r.stdout)
		row := func(name string) []string {
			for _, l := range lines(r.stdout) {
				if f := strings.Fields(l); len(f) > 2 && f[1] == name {
					return f
				}
			}
			t.Fatalf("topology shows no %s:\n%s", name, r.stdout)
			return nil
		}
		// NATS names a consumer after its subscription in a form that
		// cannot always be read back: its rows are found by subscription.
		bySubscription := func(sub string) []string {
			for _, l := range lines(r.stdout) {
				if f := strings.Fields(l); len(f) > 3 && f[0] == "consumer" && f[2] == sub {
					return f
				}
			}
			t.Fatalf("topology shows no consumer of %s:\n%s", sub, r.stdout)
			return nil
		}
		var order, invoices, missing, old []string
		if br.kind == "nats" {
			order, invoices, missing, old = bySubscription("order.#"), bySubscription("invoices"), bySubscription("missing-one"), bySubscription("old")
			// order.# is "<stream>.order" and "<stream>.order.>" on NATS
			// 2.10 and later, "<stream>.>" filtered in Go before.
			stream := br.url[strings.Index(br.url, "stream=")+len("stream="):]
			if !strings.HasPrefix(order[5], stream+".") || invoices[5] != stream+".invoice.*" {
				t.Errorf("filter subjects: %v, %v; want the stream's subjects of the patterns", order, invoices)
			}
		} else if br.kind == "amqp" {
			order, invoices, missing = row(svc+".order.#"), row(svc+".invoices"), row(svc+".missing-one")
			if strings.Contains(strings.Join(args, " "), "--admin") {
				old = row(svc + ".old")
				if order[5] != "order.#" || invoices[5] != "invoice.*" {
					t.Errorf("bindings: %v, %v", order, invoices)
				}
			}
		} else {
			order, missing, old = row(prefix+"."+svc+".order.#"), row(prefix+"."+svc+".missing-one"), row(prefix+"."+svc+".old")
			invoices = row(prefix + "." + svc + ".invoices")
		}
		wantConsumers := "0"
		if br.kind == "nats" {
			wantConsumers = "?" // a pull consumer does not know its instances
		}
		if order[3] != "7" || order[4] != wantConsumers {
			t.Errorf("the order.# subscription shows %v, want 7 messages waiting and %s consumers", order, wantConsumers)
		}
		if br.kind != "kafka" && invoices[3] != "0" { // Kafka's lag counts every record of the topic
			t.Errorf("the invoices subscription shows %v, want 0 messages", invoices)
		}
		if !strings.Contains(strings.Join(missing, " "), "MISSING") {
			t.Errorf("a subscription without its queue shows %v, want MISSING", missing)
		}
		if old != nil && !strings.Contains(strings.Join(old, " "), "ORPHAN?") {
			t.Errorf("the queue of a subscription not named shows %v, want ORPHAN?", old)
		}
		if !strings.Contains(r.stdout, "poison") {
			t.Errorf("topology shows no poison queue:\n%s", r.stdout)
		}
	})
}

// TestDevKafka: `dev kafka` serves a bus round trip until interrupted.
func TestDevKafka(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	dev := start(t, broker{}, "kafka://", "dev", "kafka", "--addr", addr)
	// "kafka://" may show first in a log line on stderr.
	waitFor(t, "dev kafka printing its URL", func() bool { return len(lines(dev.stdout.String())) > 0 }, dev.stderr.String)
	url := strings.TrimSpace(lines(dev.stdout.String())[0])
	if url != "kafka://"+addr {
		t.Fatalf("dev kafka printed %q, want kafka://%s", url, addr)
	}
	br := broker{kind: "kafka", url: url + "/?join_timeout=30s"}
	b := newBus(t, br, unique("dev"))
	rec := newRecorder()
	if err := b.Subscribe("dev.#", rec.handle); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	ev, _ := eventbus.NewEvent("dev.ping", map[string]string{"hello": "kafka"})
	if err := b.Publish(testCtx(t), ev); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the event comes back", func() bool { _, c := rec.get(ev.ID); return c > 0 }, func() string { return dev.stderr.String() })
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	_ = b.Close(ctx)
	_ = dev.cmd.Process.Signal(syscall.SIGINT)
	if code := dev.wait(t); code != 0 {
		t.Errorf("dev kafka exited %d on SIGINT: %s", code, dev.stderr)
	}
}

// TestExitCodesAndRedaction: usage errors exit 2, an unreachable broker 3,
// and no output ever shows the URL's password.
func TestExitCodesAndRedaction(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	_ = ln.Close()
	const secret = "s3cr3t-pw"
	br := broker{url: "amqp://ops:" + secret + "@" + dead + "/"}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"publish", "x.y", "--connect-timeout", "1s"}, exitUnreachable, "cannot connect"},
		{[]string{"tail", "bad pattern", "--connect-timeout", "1s"}, exitUsage, "pattern"},
		{[]string{"poison", "ls"}, exitUsage, "service"},
		{[]string{"publish", "x.y", "--data", "{not json"}, exitUsage, "not JSON"},
		{[]string{"frobnicate"}, exitUsage, "unknown command"},
		{[]string{"--url", "amqp://ops:" + secret + "@" + dead + "/?bogus=1", "topology", "-s", "x"}, exitUsage, "bogus"},
	} {
		r := cli(t, br, "", c.args...)
		if r.code != c.code || !strings.Contains(r.stderr, c.want) {
			t.Errorf("eventbus %v: exit %d, stderr %q; want exit %d mentioning %q", c.args, r.code, r.stderr, c.code, c.want)
		}
		if strings.Contains(r.stdout+r.stderr, secret) {
			t.Errorf("eventbus %v printed the password: %s%s", c.args, r.stdout, r.stderr)
		}
	}
	for _, cmd := range [][]string{{"tail"}, {"publish"}, {"poison", "ls"}, {"poison", "show"}, {"poison", "replay"}, {"poison", "purge"}, {"topology"}, {"dev", "kafka"}} {
		r := cli(t, br, "", append(cmd, "--help")...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") {
			t.Errorf("eventbus %v --help: exit %d, no example:\n%s", cmd, r.code, r.stdout)
		}
	}
}

// TestUnsupported: a command that needs what the broker cannot do (a tap
// from the beginning on RabbitMQ, which keeps no history) exits with
// exitUnsupported and says so, with the password redacted.
func TestUnsupported(t *testing.T) {
	br := amqpBroker(t)
	r := cli(t, br, "", "tail", "user.#", "--from-beginning", "--count", "1")
	if r.code != exitUnsupported || !strings.Contains(r.stderr, "run tail without --from-beginning") {
		t.Errorf("tail --from-beginning on RabbitMQ: exit %d, %q; want %d and the advice", r.code, r.stderr, exitUnsupported)
	}
	if strings.Contains(r.stderr+r.stdout, "guest:guest") {
		t.Errorf("eventbus printed the password: %s", r.stderr)
	}
}
