package main

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// TestKafkaBrokerKeepsRecordsAndOffsetsAcrossKill checks the premise of the
// kafka-kill scenario: the private broker killed with SIGKILL and started
// again on its data directory still has every acknowledged record and the
// committed group offset.
func TestKafkaBrokerKeepsRecordsAndOffsetsAcrossKill(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := startKafkaBroker(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := b.close(); err != nil {
			t.Error(err)
		}
	}()

	cfg := sarama.NewConfig()
	cfg.Version = sarama.V2_1_0_0
	cfg.Producer.RequiredAcks = sarama.WaitForAll
	cfg.Producer.Return.Successes = true
	const topic, group, records, committed = "persist", "persist-group", 100, 60

	client, err := sarama.NewClient([]string{b.addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false); err != nil {
		t.Fatal(err)
	}
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	msgs := make([]*sarama.ProducerMessage, records)
	for i := range msgs {
		msgs[i] = &sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(strconv.Itoa(i))}
	}
	if err := producer.SendMessages(msgs); err != nil {
		t.Fatal(err)
	}
	// A commit outside a group generation, as a simple consumer makes it.
	coord, err := client.Coordinator(group)
	if err != nil {
		t.Fatal(err)
	}
	req := &sarama.OffsetCommitRequest{Version: 2, ConsumerGroup: group, ConsumerGroupGeneration: -1, RetentionTime: -1}
	req.AddBlock(topic, 0, committed, 0, "")
	cresp, err := coord.CommitOffset(req)
	if err != nil {
		t.Fatal(err)
	}
	if kerr := cresp.Errors[topic][0]; kerr != sarama.ErrNoError {
		t.Fatalf("committing offset %d: %v", committed, kerr)
	}
	_ = producer.Close()
	_ = client.Close()

	if err := b.kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.launch(ctx); err != nil {
		t.Fatal(err)
	}

	client, err = sarama.NewClient([]string{b.addr}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	newest, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	if err != nil {
		t.Fatal(err)
	}
	if newest != records {
		t.Errorf("after kill -9 and restart the partition ends at offset %d, want %d", newest, records)
	}
	admin, err = sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {0}})
	if err != nil {
		t.Fatal(err)
	}
	if blk := resp.GetBlock(topic, 0); blk == nil || blk.Offset != committed {
		t.Errorf("after kill -9 and restart the committed offset is %+v, want %d", blk, committed)
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	pc, err := consumer.ConsumePartition(topic, 0, records-1)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	select {
	case m := <-pc.Messages():
		if string(m.Value) != strconv.Itoa(records-1) {
			t.Errorf("last record after restart = %q, want %q", m.Value, strconv.Itoa(records-1))
		}
	case <-ctx.Done():
		t.Fatal("the last record could not be read after the restart")
	}
}
