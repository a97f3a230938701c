"""Reference implementation: radix prefix cache, policies and the discrete-event simulator."""
