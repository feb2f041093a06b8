"""flower-quickstart: a Flower / PyTorch app (Flower's documented Message-API style)."""
