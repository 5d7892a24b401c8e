"""Routing tables: clusters, capability profiles and routing decisions arrive with the routing issues.

Query embeddings live in ``evaluation.QueryEmbedding`` so that every app can read them.
"""
from __future__ import annotations
