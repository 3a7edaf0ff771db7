"""Application handlers: load state, decide with the pure domain, append; and the reactions to events."""
