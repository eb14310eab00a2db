"""`make chaos`: groups back to back on the bleater sample, each with one random fault."""
