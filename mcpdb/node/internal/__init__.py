"""Node-to-node inference: the entry node asks the leader for a worker (assignment), the leader's
scheduler picks one, the worker runs the work order and streams it back.
"""
