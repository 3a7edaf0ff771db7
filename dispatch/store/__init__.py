"""JetStream adapters: the embedded server, provisioning, the event store, delivery jobs, timers."""
