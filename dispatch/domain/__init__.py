"""Pure domain: deciders and state folds. No I/O, no clocks: time comes in with the command."""
