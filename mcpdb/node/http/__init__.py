"""A node's HTTP surface: the FastAPI app and its routes, the request gate (Host/Origin, tokens,
access rules, rate limits, body limits), the fast read path, responses, request statistics, /ui.
"""
