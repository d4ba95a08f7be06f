"""The built-in demo: synthetic captioned clips (`render`), the 1-frame -> 4-frame run with its check (`run`,
`metrics`), and the tiny assets the tiny configs read (`tiny_assets`) (docs/DEMO.md)."""
