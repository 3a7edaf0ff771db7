"""Event vocabulary, codec and subject names."""
