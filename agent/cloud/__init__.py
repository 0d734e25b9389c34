"""Cloud fallback on the device: durable outbox, escalation and reply handling."""
