package eventbustest_test

import (
	"context"
	"testing"

	"github.com/paissive/go-eventbus/eventbus"
	"github.com/paissive/go-eventbus/eventbustest"
)

// TestREADMEWelcomeCampaign is the README's "Testing your handlers" snippet.
func TestREADMEWelcomeCampaign(t *testing.T) {
	h := eventbustest.New(t)
	h.Subscribe("user.registered", func(ctx context.Context, ev eventbus.Event) error {
		campaign, err := eventbus.NewEvent("marketing.campaign.started", nil, eventbus.WithSource("marketing"), eventbus.WithType(eventbus.Integration))
		if err != nil {
			return err
		}
		return h.Bus.Publish(ctx, campaign) // your handler, under test
	})
	registered := h.NewEvent("user.registered", map[string]string{"user_id": "1"})
	h.Publish(registered)
	started := h.WaitPublished("marketing.campaign.started")
	if started.CausationID != registered.ID {
		t.Errorf("campaign caused by %s, want %s", started.CausationID, registered.ID)
	}
}
