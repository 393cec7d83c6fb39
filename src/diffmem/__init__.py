"""diffmem: audit diffusion models for memorization of their training data.

The package is layered (README, "Where the code is"; ``import-linter`` holds it): ``stages``
(one module per ``rules/*.smk``) over ``attacks`` over ``diffusion`` over ``data`` over
``metrics`` over the base modules ``plotting``, ``io``, ``device`` and ``errors``.

Names follow the two papers the workflow implements (see ``METHOD.md`` in the design notes):

* ``saf``   synthetic anatomic fingerprint: a constant grey disc stamped on one training image
            (the *target*, ``x_saf``); its clean original is removed from the training set.
* ``p_hat`` p̂_t, the fraction of M reverse runs started from ``x_saf`` noised to step t that
            both adversary classifiers accept (they land in the private region B).
* ``rho``   t′ / T, the largest noise level with p̂_t > 0 (the anonymity indicator).
* ``ams``   average memorization score: share of generated images whose nearest training
            image is at least τ similar.
* ``ums``   unique memorization score: distinct training images so matched, per generated image.
"""

__version__ = "0.1.0"
