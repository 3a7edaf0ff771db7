"""JetStream adapters: the embedded server, provisioning, the event store, delivery jobs, timers."""

from dispatch.store.headers import install as _install_header_parser

_install_header_parser()
