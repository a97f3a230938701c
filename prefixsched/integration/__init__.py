"""Meeting the real engine (SGLang). Optional; nothing here is imported by the core package."""
