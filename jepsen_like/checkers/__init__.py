"""Checkers: decide whether a recorded history kept mcpdb's promises."""
