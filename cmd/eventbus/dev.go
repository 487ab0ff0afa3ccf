package main

import (
	"fmt"
	"net"
	"strings"

	"github.com/spf13/cobra"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/paissive/go-eventbus/internal/devkafka"
)

func newDevCmd(g *globals) *cobra.Command {
	c := &cobra.Command{
		Use:   "dev",
		Short: "Development brokers",
	}
	var addr, dir string
	kafka := &cobra.Command{
		Use:   "kafka",
		Short: "Run a development Kafka-protocol broker until interrupted",
		Long: `dev kafka runs a single-broker Kafka-protocol cluster in this process (franz-go's
kfake, the broker the project's tests use) until Ctrl-C, so that the Kafka
transport can be tried without Docker or a JVM. It keeps everything in
memory unless --data names a directory, where it keeps topics, records and
committed offsets across restarts. It listens on loopback only. It is not
Kafka: use it for development and tests, never for data you need.

It prints the broker's kafka:// URL on stdout once it listens.`,
		Example: `  eventbus dev kafka &
  EVENTBUS_URL=kafka://127.0.0.1:9092 go run ./examples/quickstart
  eventbus dev kafka --addr 127.0.0.1:19092 --data /tmp/devkafka`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return usageErrorf("--addr %q: write host:port, such as 127.0.0.1:9092", addr)
			}
			if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
				return usageErrorf("--addr %q: the development broker listens on loopback only (127.0.0.1:PORT)", addr)
			}
			var opts []kfake.Opt
			if dir != "" {
				opts = append(opts, kfake.DataDir(dir))
			}
			c, err := devkafka.Start(addr, opts...)
			if err != nil {
				if strings.Contains(err.Error(), "address already in use") {
					return fmt.Errorf("%w: another broker listens there; stop it or pass --addr 127.0.0.1:OTHER-PORT", err)
				}
				return err
			}
			defer c.Close()
			url := "kafka://" + c.ListenAddrs()[0]
			fmt.Fprintln(g.stdout, url)
			fmt.Fprintf(g.stderr, "development Kafka-protocol broker (kfake) listening; try:\n  EVENTBUS_URL=%s go run ./examples/quickstart\nCtrl-C to stop\n", url)
			ctx, stop := signals(cmd.Context())
			defer stop()
			<-ctx.Done()
			fmt.Fprintln(g.stderr, "stopping the development broker")
			return nil
		},
	}
	kafka.Flags().StringVar(&addr, "addr", "127.0.0.1:9092", "listen address (loopback)")
	kafka.Flags().StringVar(&dir, "data", "", "keep the broker's state in this directory (default: memory only)")
	c.AddCommand(kafka)
	return c
}
