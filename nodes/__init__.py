"""The mcpdb node process: configuration, runtime wiring, HTTP app."""
