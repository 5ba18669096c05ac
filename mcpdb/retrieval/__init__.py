"""Retrieval: which contexts answer a query, ranked (lexical BM25 kept by the state machine)."""
