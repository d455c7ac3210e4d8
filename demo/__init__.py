"""The demo and the synthetic corpora: the top of the stack, never imported by the runtime."""
