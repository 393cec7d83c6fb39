"""The audits: the fingerprint audit, the boundary search for any query, SIDE, membership
inference."""
