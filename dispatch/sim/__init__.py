"""Simulators: the `dispatch demo` story, a telephony gateway with virtual phones, a synthetic log."""
