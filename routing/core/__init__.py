"""Pure-Python routing core (numpy and scikit-learn only; no Django, settings or network).

Modules arrive with the routing-core issue: embedding, clustering, profiles, router, voting.
"""
