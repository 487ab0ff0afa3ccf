package contracttests_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/paissive/go-eventbus/contracttests"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The suite's own test: it runs the suite against ctmem (the memory
// transport behind a fault injector, see brokenmem_test.go) with one
// deliberate fault at a time and checks that the contract test for the
// broken guarantee fails, for the right reason, without crashing; and
// that ctmem without faults, ctmem redelivering every tenth acknowledged
// message, and ctmem keeping unroutable messages (as Kafka does) pass the
// whole suite.
//
// The testing package cannot report a subtest's failure to its parent, so
// each run is a child process: this test binary, re-run with -test.run
// selecting TestVariant and the contract tests concerned, and the ctmem
// faults in the environment. The verdicts are read from the -test.v
// output; a crash of the child (a panic in the suite) fails the run.

// envVariant and envTimeout configure TestVariant in a child process.
const (
	envVariant = "CONTRACTTESTS_VARIANT"
	envTimeout = "CONTRACTTESTS_TIMEOUT"
)

// TestVariant runs the suite against ctmem with the faults named in
// CONTRACTTESTS_VARIANT ("none" for none); it does nothing unless
// TestBrokenTransports started it.
func TestVariant(t *testing.T) {
	faults, ok := os.LookupEnv(envVariant)
	if !ok {
		return
	}
	if faults == "none" {
		faults = ""
	}
	timeout, err := time.ParseDuration(os.Getenv(envTimeout))
	if err != nil {
		t.Fatalf("%s: %v", envTimeout, err)
	}
	contracttests.Run(t, ctmemHarness(faults, timeout, true))
}

// brokenVariants: each fault of ctmem, the contract test that must fail
// because of it, and a piece of that test's failure message that shows it
// failed for the fault rather than for another reason.
var brokenVariants = []struct {
	faults string
	test   string
	why    string
}{
	{faultRoutesWide, "Patterns", "which the pattern does not match"},
	{faultHashOneOrMore, "Patterns", `"user.#" did not receive [user]`},
	{faultCaseFold, "Patterns", "which the pattern does not match"},
	{faultTruncateNames, "Patterns", "(255 bytes)] within"},
	{faultSerial, "Concurrency", "message 2 of 3 delivered before any acknowledgement"},
	{faultPrefetch, "Concurrency", "a further message: subscription"},
	{faultGroupPerInst, "CompetingConsumers", "hold message"},
	{faultGroupPerInst, "KeepsEventsWhileNoInstance", "messages published while the subscription had no subscriber"},
	{faultSubscribeAsync, "SubscribeReturnsWhenInPlace", "no subscription matches"},
	{faultBoundToCtx, "SubscriptionOutlivesSubscribeContext", "was closed"},
	{faultChannelOpen, "CloseClosesChannel", "is still open"},
	{faultCloseNoWait, "SubscriberCloseWaitsForAcks", "while a message it delivered was unacknowledged"},
	{faultCloseCancels, "SubscriberCloseWaitsForAcks", "cancelled the context of a message in flight"},
	{faultLazyAcks, "NoRedeliveryAfterGracefulClose", "were delivered again"},
	{faultNackDrops, "RedeliveryAfterNack", "delivery after the nack"},
	{faultCrashLoses, "RedeliveryAfterCrash", "redelivery to the next subscriber"},
	{faultAsyncPublish, "PublishedMeansAccepted", "whose Publish returned nil before the publisher closed"},
	{faultPublishAfterCls, "PublishAfterClose", "want an error wrapping ErrClosed"},
	{faultRedeliverFansOut, "RedeliverReachesOneGroup", "reached group"},
	{faultIgnoreCtx, "PublishBoundedWhileFrozen", "has not returned"},
	{faultSwallowErrors + "," + modeRetainUnroutable, "PublishErrorWhileDown", "returned nil"},
}

// passingVariants must pass the whole suite.
var passingVariants = []string{"none", modeRedeliverTenth, modeRetainUnroutable}

func TestBrokenTransports(t *testing.T) {
	if _, child := os.LookupEnv(envVariant); child {
		return
	}
	t.Parallel()
	// The children run at once, a few at a time, rather than as parallel
	// subtests, which -test.parallel (GOMAXPROCS by default) would limit
	// to two: most of them spend their time waiting for the suite's
	// timeout to show that something does not happen.
	type job struct {
		faults, test string
		timeout      time.Duration
		res          chan variantResult
	}
	var passing, broken []job
	for _, v := range passingVariants {
		passing = append(passing, job{v, "", 30 * time.Second, make(chan variantResult, 1)})
	}
	for _, v := range brokenVariants {
		// A short timeout: a broken transport often fails by never
		// delivering, which the suite notices at its timeout.
		broken = append(broken, job{v.faults, v.test, 3 * time.Second, make(chan variantResult, 1)})
	}
	slots := make(chan struct{}, 6)
	for _, j := range append(slices.Clone(passing), broken...) {
		go func() {
			slots <- struct{}{}
			defer func() { <-slots }()
			j.res <- runVariant(j.faults, j.test, j.timeout)
		}()
	}
	for _, j := range passing {
		t.Run("passes/"+j.faults, func(t *testing.T) {
			res := <-j.res
			if res.crashed != "" {
				t.Fatalf("the suite crashed: %s\n%s", res.crashed, res.output)
			}
			if len(res.failed) > 0 || res.passed == 0 {
				t.Fatalf("ctmem with %q must pass the suite; failed: %v (passed %d)\n%s", j.faults, slices.Sorted(maps.Keys(res.failed)), res.passed, res.output)
			}
			t.Logf("ctmem with %q: %d passed, skipped %v", j.faults, res.passed, res.skipped)
		})
	}
	for i, j := range broken {
		v := brokenVariants[i]
		t.Run(v.faults+"/"+v.test, func(t *testing.T) {
			res := <-j.res
			if res.crashed != "" {
				t.Fatalf("the suite crashed: %s\n%s", res.crashed, res.output)
			}
			msg, failed := res.failed[v.test]
			if !failed {
				t.Fatalf("ctmem with %q: contract test %s did not fail\n%s", v.faults, v.test, res.output)
			}
			if !strings.Contains(msg, v.why) {
				t.Fatalf("ctmem with %q: contract test %s failed, but not with %q:\n%s", v.faults, v.test, v.why, msg)
			}
			t.Logf("%s fails: %s", v.test, firstLine(msg))
		})
	}
}

// TestBrokenTransportsFull runs the whole suite against each broken
// variant and logs every contract test that fails, for the table in the
// package documentation. It is slow, so it runs only with
// CONTRACTTESTS_FULL=1.
func TestBrokenTransportsFull(t *testing.T) {
	if os.Getenv("CONTRACTTESTS_FULL") != "1" {
		t.Skip("set CONTRACTTESTS_FULL=1 to run the whole suite against every broken variant")
	}
	seen := map[string]bool{}
	for _, v := range brokenVariants {
		if seen[v.faults] {
			continue
		}
		seen[v.faults] = true
		res := runVariant(v.faults, "", 3*time.Second)
		var names []string
		for n := range res.failed {
			names = append(names, n)
		}
		sort.Strings(names)
		t.Logf("%-40s fails %s%s", v.faults, strings.Join(names, ", "), res.crashed)
	}
}

type variantResult struct {
	passed  int
	skipped []string
	failed  map[string]string // test → its output
	crashed string
	output  string
}

var (
	resultLine = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): TestVariant/(\S+)`)
	runLine    = regexp.MustCompile(`^=== (RUN|CONT|PAUSE|NAME)\s+TestVariant/(\S+)`)
)

// runVariant runs the contract test named test (all when empty) against
// ctmem with faults, in a child process.
func runVariant(faults, test string, timeout time.Duration) variantResult {
	run := "^TestVariant$"
	if test != "" {
		run += "/^" + regexp.QuoteMeta(test) + "$"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run="+run, "-test.v", "-test.count=1", "-test.timeout=3m", "-test.parallel=8")
	cmd.Env = append(os.Environ(), envVariant+"="+faults, envTimeout+"="+timeout.String())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	res := variantResult{failed: map[string]string{}, output: out.String()}
	// Output between a test's "=== RUN/CONT/NAME" line and the next such
	// line belongs to it (the suite's tests run in parallel, and the
	// testing package marks each switch of the test it prints for).
	current := ""
	block := map[string]*strings.Builder{}
	sc := bufio.NewScanner(strings.NewReader(res.output))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := runLine.FindStringSubmatch(line); m != nil {
			current = m[2]
			continue
		}
		if m := resultLine.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "PASS":
				res.passed++
			case "SKIP":
				res.skipped = append(res.skipped, m[2])
			case "FAIL":
				res.failed[m[2]] = ""
			}
			current = m[2]
			continue
		}
		if current != "" {
			if block[current] == nil {
				block[current] = &strings.Builder{}
			}
			block[current].WriteString(line + "\n")
		}
		if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
			res.crashed = line
		}
	}
	for name := range res.failed {
		if b := block[name]; b != nil {
			res.failed[name] = b.String()
		}
	}
	if err != nil && len(res.failed) == 0 && res.crashed == "" {
		res.crashed = fmt.Sprintf("the child process failed (%v) without a failing contract test", err)
	}
	return res
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
