"""The fingerprint audit: the fingerprinted target and the adversary classifiers."""
