"""jepsen_like: fault-injection harness that checks mcpdb keeps its promises."""
