"""The Model Context Protocol server of a node (official ``mcp`` SDK): tools, resources, prompts,
subscriptions, sessions owned and bounded per token, resumable streams.
"""
