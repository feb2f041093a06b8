"""What goes on the wire: messages, tensor layout and update codecs (pure, no I/O)."""
