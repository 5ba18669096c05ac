"""Inference: the chat request, gathering and assembling stored context into a prompt, the llama.cpp
worker, and the pure policies of placement (which worker) and autoscaling (how many).

May import: ``mcpdb.model``, ``mcpdb.service`` and ``mcpdb.store`` (gather reads the local replica);
nothing of node or client.
"""
